"""Known-hostile requests aimed at the fuzz pools' real sessions, sent by the fast tier on
every run: forged page tokens, oversized filters, JSON around the nesting limit (from the
caller and, via echo's /call, from the model), Values with no kind, empty text parts,
oversized imported messages, imported token counts past int64 sums and NUL in ids kept as
text. Random requests rarely get past other checks to reach these."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import struct_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from tests.reliability.fuzz_values import Pools, with_raw_position
from tests.reliability.fuzzing import Method, methods

# (levels, objects?): around the limit of 24, and arrays as deep as a request can carry
# while the response that returns them could not be decoded (objects cost the decoder three
# levels each, arrays two).
SHAPES = [(d, True) for d in (23, 24, 25, 30)] + [(d, False) for d in (23, 24, 25, 40, 46, 48)]


def _nested(depth: int, objects: bool) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"k": value} if objects else [value]
    return value


def _value(obj: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": obj})
    return holder.fields["v"]


def _args(depth: int, objects: bool) -> struct_pb2.Struct:
    args = struct_pb2.Struct()
    args.update({"a": _nested(depth - 1, objects)})
    return args


def _kindless() -> struct_pb2.Struct:
    args = struct_pb2.Struct()
    args.update({"a": [1]})
    args.fields["a"].list_value.values.add()
    return args


def _exchange(args: struct_pb2.Struct, answer: content_pb2.Part) -> list[content_pb2.Message]:
    user, model = content_pb2.ROLE_USER, content_pb2.ROLE_MODEL
    call = content_pb2.FunctionCall(id="h1", name="lookup_order", args=args)
    response = content_pb2.FunctionResponse(id="h1", name="lookup_order", response=args)
    return [
        content_pb2.Message(role=user, parts=[content_pb2.Part(text="q")]),
        content_pb2.Message(role=model, parts=[content_pb2.Part(function_call=call)]),
        content_pb2.Message(role=user, parts=[content_pb2.Part(function_response=response)]),
        content_pb2.Message(role=model, parts=[answer]),
    ]


def _token(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def hostile_cases(pools: Pools) -> list[tuple[Method, Any]]:
    by_name = {m.path.rsplit("/", 1)[1]: m for m in methods()}
    cases: list[tuple[Method, Any]] = []

    def add(rpc: str, request: Any) -> None:
        cases.append((by_name[rpc], request))

    plain = pools.session_ids[0]
    ok = content_pb2.Part(text="done")
    for depth, objects in SHAPES:
        args = _args(depth, objects)
        value = _value(_nested(depth - 1, objects))
        for call_id in pools.pending_call_ids:
            result = pb.ToolResult(call_id=call_id, result=value)
            add(
                "SendMessage",
                pb.SendMessageRequest(session_id=pools.session_ids[2], tool_results=[result]),
            )
        add(
            "AppendMessages",
            pb.AppendMessagesRequest(session_id=plain, messages=_exchange(args, ok)),
        )
        line = "/call lookup_order " + args_json(depth, objects)
        add("SendMessage", pb.SendMessageRequest(session_id=plain, text=line))
        add("StreamReply", pb.StreamReplyRequest(session_id=plain, text=line))
        declaration = session_pb2.FunctionDeclaration(name="f", parameters=args)
        add(
            "CreateSession",
            pb.CreateSessionRequest(
                session=session_pb2.Session(function_declarations=[declaration])
            ),
        )
        contents = [content_pb2.Content(role=m.role, parts=m.parts) for m in _exchange(args, ok)]
        add("GenerateContent", pb.GenerateContentRequest(contents=contents[:3]))
        for i, raw in enumerate(pools.documents):
            document = session_pb2.SessionDocument.FromString(raw)
            document.messages.extend(_exchange(args, ok))
            _renumber(document)
            new_id = f"h-{depth}-{'o' if objects else 'l'}-{i}"
            add("ImportSession", pb.ImportSessionRequest(document=document, session_id=new_id))
    for bad in (_kindless(), None):
        answer = content_pb2.Part(text="") if bad is None else ok
        messages = _exchange(bad or _args(1, True), answer)
        add("AppendMessages", pb.AppendMessagesRequest(session_id=plain, messages=messages))
        for call_id in pools.pending_call_ids:
            result = pb.ToolResult(call_id=call_id, result=struct_pb2.Value())
            add(
                "StreamReply",
                pb.StreamReplyRequest(session_id=pools.session_ids[2], tool_results=[result]),
            )
    for raw in pools.documents[:1]:
        document = session_pb2.SessionDocument.FromString(raw)
        for message in document.messages:
            message.turn_id = "t\x00"
        add("ImportSession", pb.ImportSessionRequest(document=document, session_id="h-nul"))
        add("SendMessage", pb.SendMessageRequest(session_id=plain, text="x", request_id="r\x00"))
        for count in (2**63 - 1, -(2**63), 2**31):
            document = session_pb2.SessionDocument.FromString(raw)
            for message in document.messages:
                message.usage.total_token_count = count
            add("ImportSession", pb.ImportSessionRequest(document=document, session_id="h-usage"))
        for text, parts in (("x" * 2_000_000, 1), ("p", 5000), ("", 1)):
            document = session_pb2.SessionDocument.FromString(raw)
            if document.messages:
                del document.messages[0].parts[:]
                document.messages[0].parts.extend(content_pb2.Part(text=text) for _ in range(parts))
            add("ImportSession", pb.ImportSessionRequest(document=document))
    deep = "[" * 5000 + "]" * 5000
    positions = ('[1e300,"a"]', '[NaN,"a"]', f'[{10**30},"a"]', "[-1]", f"[{10**30}]", deep)
    for position in positions:
        # The real tokens' query fingerprints, so the position itself is what gets checked.
        tokens = [with_raw_position(t, position) for t in pools.page_tokens]
        for token in [_token('{"q":"x","p":' + position + "}"), *tokens]:
            add("ListSessions", pb.ListSessionsRequest(page_token=token))
            add("ListMessages", pb.ListMessagesRequest(session_id=plain, page_token=token))
            add("ListTools", pb.ListToolsRequest(page_token=token))
    add("ListSessions", pb.ListSessionsRequest(page_token=_token(deep)))
    for terms in (64, 65, 1001):
        text = " AND ".join(f'labels.k{i} = "v{i}"' for i in range(terms))
        add("ListSessions", pb.ListSessionsRequest(filter=text))
    return cases


def args_json(depth: int, objects: bool) -> str:
    """/call arguments (a JSON object) nesting `depth` levels in all."""
    inner = (
        ('{"k":' * (depth - 1) + '"x"' + "}" * (depth - 1))
        if objects
        else ("[" * (depth - 1) + '"x"' + "]" * (depth - 1))
    )
    return '{"a":' + inner + "}"


def _renumber(document: session_pb2.SessionDocument) -> None:
    """Message ids in increasing order, as an import requires."""
    for seq, message in enumerate(document.messages):
        message.message_id = str(seq)
