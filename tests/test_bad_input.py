"""Bad input is INVALID_ARGUMENT naming the field, leaves stored data as it was, and can
never poison a session: forged page tokens, oversized filters, JSON nested past the limit,
Values with no kind, empty text parts and oversized imported messages."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from server.sessions.errors import MAX_MESSAGE_CHARS
from server.sessions.values import MAX_JSON_DEPTH
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import FakeGemini, Reply, call_part, get_field
from tests.helpers import all_messages, outcome, rich_details, violated_fields

LOOKUP = session_pb2.FunctionDeclaration(name="lookup")


def nested(depth: int, kind: str = "object") -> Any:
    """A JSON value with `depth` levels of containers (objects are the costliest to decode)."""
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": value} if kind == "object" else [value]
    return value


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def args_of_depth(depth: int, kind: str = "object") -> struct_pb2.Struct:
    """Function-call arguments (an object) nesting `depth` levels in all."""
    return struct({"a": nested(depth - 1, kind)})


def value_of(obj: Any) -> struct_pb2.Value:
    holder = struct({"v": obj})
    return holder.fields["v"]


async def refused(call: Awaitable[Any] | Any) -> tuple[list[str], str]:
    """Awaits a call that must fail INVALID_ARGUMENT; its violated fields and message."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await outcome(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "BadRequest" in rich_details(err.value)
    return violated_fields(err.value), err.value.details() or ""


async def snapshot(stub: Any, session_id: str) -> session_pb2.SessionDocument:
    """What is stored of a session (its export, without the export time)."""
    exported = await stub.ExportSession(pb.ExportSessionRequest(session_id=session_id))
    document: session_pb2.SessionDocument = exported.document
    document.ClearField("export_time")
    return document


async def paused_session(stub: Any, session_id: str) -> None:
    """A session whose turn waits for the caller's result of `lookup` (via echo's /call)."""
    await stub.CreateSession(
        pb.CreateSessionRequest(
            session_id=session_id, session=session_pb2.Session(function_declarations=[LOOKUP])
        )
    )
    reply = await stub.SendMessage(
        pb.SendMessageRequest(session_id=session_id, text='/call lookup {"q": 1}')
    )
    assert len(reply.reply.pending_tool_calls) == 1


async def pending_call_id(stub: Any, session_id: str) -> str:
    session = (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session
    call_id: str = session.pending_tool_calls[0].id
    return call_id


def history_with_call(args: struct_pb2.Struct) -> list[content_pb2.Message]:
    """A whole exchange: question, the model's call, its result, the answer."""
    return [
        content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="q")]),
        content_pb2.Message(
            role=content_pb2.ROLE_MODEL,
            parts=[
                content_pb2.Part(
                    function_call=content_pb2.FunctionCall(id="c1", name="lookup", args=args)
                )
            ],
        ),
        content_pb2.Message(
            role=content_pb2.ROLE_USER,
            parts=[
                content_pb2.Part(
                    function_response=content_pb2.FunctionResponse(
                        id="c1", name="lookup", response=struct({"ok": True})
                    )
                )
            ],
        ),
        content_pb2.Message(role=content_pb2.ROLE_MODEL, parts=[content_pb2.Part(text="done")]),
    ]


async def exported_with_call(stub: Any, session_id: str) -> session_pb2.SessionDocument:
    """The export of a session holding history_with_call, ready to be tampered with."""
    await stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    await stub.AppendMessages(
        pb.AppendMessagesRequest(
            session_id=session_id, messages=history_with_call(struct({"q": 1}))
        )
    )
    return await snapshot(stub, session_id)


# ----------------------------------------------------------------------------- page tokens


def forged(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def fingerprint_of(token: str) -> str:
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    fingerprint: str = data["q"]
    return fingerprint


async def test_forged_page_tokens_are_invalid_argument_naming_page_token(chatd: Chatd) -> None:
    """Tokens of any shape (huge numbers, NaN, Infinity, deep JSON, wrong types, negative
    offsets, another query's token, very long) are INVALID_ARGUMENT on page_token, on every
    paginated RPC; the server still pages normally afterwards."""
    stub = chatd.stub
    for sid in ("a", "b", "c"):
        await stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
        await stub.SendMessage(pb.SendMessageRequest(session_id=sid, text="hi"))
    sessions_q = fingerprint_of(
        (await stub.ListSessions(pb.ListSessionsRequest(page_size=1))).next_page_token
    )
    messages_q = fingerprint_of(
        (
            await stub.ListMessages(pb.ListMessagesRequest(session_id="a", page_size=1))
        ).next_page_token
    )
    tools_q = fingerprint_of(
        (await stub.ListTools(pb.ListToolsRequest(page_size=1))).next_page_token
    )
    deep = "[" * 5000 + "]" * 5000

    def tokens(q: str, cursor_shapes: list[str]) -> list[str]:
        shapes = [f'{{"q":"{q}","p":{p}}}' for p in cursor_shapes]
        shapes += [deep, f'{{"q":"{q}","p":{deep}}}', '{"q": 1, "p": []}', "[]", "7", '"x"']
        return [forged(s) for s in shapes] + ["!!!", "x" * 5000, forged('{"q":"' + "a" * 4000)]

    session_cursors = [
        '[1e300,"a"]',
        '[NaN,"a"]',
        '[Infinity,"a"]',
        '[-Infinity,"a"]',
        f'[{10**30},"a"]',
        '[-1,"a"]',
        '[true,"a"]',
        '[1,"no\\u0000pe"]',
        '[1,"' + "x" * 300 + '"]',
        '["1","a"]',
        "[1]",
        "{}",
        "null",
    ]
    seq_cursors = [f"[{10**30}]", "[-5]", "[1.5]", "[NaN]", "[1e300]", "[true]", '["1"]', "[]"]
    for token in tokens(sessions_q, session_cursors):
        fields, _ = await refused(stub.ListSessions(pb.ListSessionsRequest(page_token=token)))
        assert fields == ["page_token"], token[:80]
    for token in tokens(messages_q, seq_cursors):
        request = pb.ListMessagesRequest(session_id="a", page_token=token)
        fields, _ = await refused(stub.ListMessages(request))
        assert fields == ["page_token"], token[:80]
    for token in tokens(tools_q, [*seq_cursors, "[-1]"]):
        fields, _ = await refused(stub.ListTools(pb.ListToolsRequest(page_token=token)))
        assert fields == ["page_token"], token[:80]
    other_query = (
        await stub.ListSessions(pb.ListSessionsRequest(page_size=1, order_by="update_time"))
    ).next_page_token
    fields, _ = await refused(stub.ListSessions(pb.ListSessionsRequest(page_token=other_query)))
    assert fields == ["page_token"]
    listed = await stub.ListSessions(pb.ListSessionsRequest())
    assert sorted(s.session_id for s in listed.sessions) == ["a", "b", "c"]


# ----------------------------------------------------------------------------- filters


async def test_filters_over_64_terms_or_unmatchable_labels_are_invalid_argument(
    chatd: Chatd,
) -> None:
    """More than 64 terms (1,001 used to exhaust SQLite's variables and expression depth),
    keys longer than a label key, values longer than a label value or holding NUL: refused
    naming `filter`. 64 terms, the most a session's labels can satisfy, work."""
    labels = {f"k{i}": f"v{i}" for i in range(64)}
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id="many", session=session_pb2.Session(labels=labels))
    )
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="none"))

    def terms(n: int) -> str:
        return " AND ".join(f'labels.k{i} = "v{i}"' for i in range(n))

    for text in (
        terms(65),
        terms(1001),
        terms(5000),
        'labels.a = "x" AND ' * 70 + 'labels.a = "x"',
        "labels." + "k" * 64 + ' = "x"',
        'labels.k = "' + "v" * 257 + '"',
        'labels.k = "a\x00b"',
    ):
        fields, message = await refused(
            chatd.stub.ListSessions(pb.ListSessionsRequest(filter=text))
        )
        assert fields == ["filter"], text[:60]
    _, message = await refused(chatd.stub.ListSessions(pb.ListSessionsRequest(filter=terms(65))))
    assert "64" in message
    listed = await chatd.stub.ListSessions(pb.ListSessionsRequest(filter=terms(64)))
    assert [s.session_id for s in listed.sessions] == ["many"]


# ----------------------------------------------------------------------------- deep JSON


def _deep_requests(depth: int, call_id: str) -> list[tuple[str, Any, str]]:
    """(RPC name, request, expected field) for every request that takes a JSON value,
    each carrying one nested `depth` levels deep."""
    too_deep = args_of_depth(depth)
    declaration = session_pb2.FunctionDeclaration(name="f", parameters=too_deep)
    schema = session_pb2.GenerationConfig(
        response_mime_type="application/json", response_json_schema=too_deep
    )
    deep_history = history_with_call(too_deep)
    contents = [content_pb2.Content(role=m.role, parts=m.parts) for m in deep_history[:2]]
    contents.append(content_pb2.Content(role=content_pb2.ROLE_USER, parts=deep_history[2].parts))
    return [
        (
            "SendMessage",
            pb.SendMessageRequest(
                session_id="s",
                tool_results=[pb.ToolResult(call_id=call_id, result=value_of(nested(depth - 1)))],
            ),
            "tool_results[0].result",
        ),
        (
            "StreamReply",
            pb.StreamReplyRequest(
                session_id="s",
                tool_results=[
                    pb.ToolResult(call_id=call_id, result=value_of(nested(depth - 1, "list")))
                ],
            ),
            "tool_results[0].result",
        ),
        (
            "AppendMessages",
            pb.AppendMessagesRequest(session_id="plain", messages=deep_history),
            "messages[1].parts[0].function_call.args",
        ),
        (
            "CreateSession",
            pb.CreateSessionRequest(
                session_id="new", session=session_pb2.Session(function_declarations=[declaration])
            ),
            "session.function_declarations[0].parameters",
        ),
        (
            "CreateSession",
            pb.CreateSessionRequest(
                session_id="new", session=session_pb2.Session(generation_config=schema)
            ),
            "session.generation_config.response_json_schema",
        ),
        (
            "UpdateSession",
            pb.UpdateSessionRequest(
                session=session_pb2.Session(
                    session_id="plain", function_declarations=[declaration]
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["function_declarations"]),
            ),
            "session.function_declarations[0].parameters",
        ),
        (
            "SendMessage",
            pb.SendMessageRequest(session_id="plain", text="hi", generation_config=schema),
            "generation_config.response_json_schema",
        ),
        (
            "GenerateContent",
            pb.GenerateContentRequest(contents=contents),
            "contents[1].parts[0].function_call.args",
        ),
        (
            "StreamGenerateContent",
            pb.StreamGenerateContentRequest(
                contents=contents[:1], function_declarations=[declaration]
            ),
            "function_declarations[0].parameters",
        ),
        (
            "CountTokens",
            pb.CountTokensRequest(contents=contents),
            "contents[1].parts[0].function_call.args",
        ),
    ]


async def test_json_nested_past_the_limit_is_refused_on_every_path_and_changes_nothing(
    chatd: Chatd,
) -> None:
    """Tool results, appended and generated history, function declarations and response
    schemas nested one level past MAX_JSON_DEPTH: INVALID_ARGUMENT naming the field, with
    the limit in the message; stored sessions are unchanged and no session is created."""
    stub = chatd.stub
    await paused_session(stub, "s")
    await stub.CreateSession(pb.CreateSessionRequest(session_id="plain"))
    call_id = await pending_call_id(stub, "s")
    before = {sid: await snapshot(stub, sid) for sid in ("s", "plain")}
    for rpc, request, field in _deep_requests(MAX_JSON_DEPTH + 1, call_id):
        fields, message = await refused(getattr(stub, rpc)(request))
        assert fields == [field], rpc
        assert str(MAX_JSON_DEPTH) in message, message
    for sid, document in before.items():
        assert await snapshot(stub, sid) == document
    listed = await stub.ListSessions(pb.ListSessionsRequest())
    assert sorted(s.session_id for s in listed.sessions) == ["plain", "s"]


async def test_imported_documents_nested_past_the_limit_are_refused(chatd: Chatd) -> None:
    """A document whose messages or paused turn hold JSON past the limit is refused naming
    the field inside `document`; nothing is imported."""
    stub = chatd.stub
    document = await exported_with_call(stub, "src")
    deep = args_of_depth(MAX_JSON_DEPTH + 1)
    tampered = session_pb2.SessionDocument()
    tampered.CopyFrom(document)
    tampered.messages[1].parts[0].function_call.args.CopyFrom(deep)
    tampered.messages[1].parts[0].function_call.args_json = ""
    fields, _ = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=tampered, session_id="x1"))
    )
    assert fields == ["document.messages[1].parts[0].function_call.args"]
    tampered.CopyFrom(document)
    tampered.messages[2].parts[0].function_response.response.CopyFrom(deep)
    tampered.messages[2].parts[0].function_response.response_json = ""
    fields, _ = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=tampered, session_id="x2"))
    )
    assert fields == ["document.messages[2].parts[0].function_response.response"]

    await paused_session(stub, "paused")
    paused = await snapshot(stub, "paused")
    paused.pending_turn.calls[0].args.CopyFrom(deep)
    paused.pending_turn.calls[0].args_json = ""
    fields, _ = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=paused, session_id="x3"))
    )
    assert fields == ["document.pending_turn.calls[0].args"]
    listed = await stub.ListSessions(pb.ListSessionsRequest())
    assert sorted(s.session_id for s in listed.sessions) == ["paused", "src"]


async def test_values_at_the_limit_are_kept_and_every_response_decodes(chatd: Chatd) -> None:
    """JSON exactly MAX_JSON_DEPTH deep (objects, the costliest to decode) from a caller's
    tool result, appended history, an import and the model's call: stored, and every
    response carrying it (SendMessage, StreamReply, ListMessages, ExportSession, GetSession)
    decodes in the standard Python protobuf client (the stub's own decoding)."""
    stub = chatd.stub
    await paused_session(stub, "s")
    call_id = await pending_call_id(stub, "s")
    limit_value = nested(MAX_JSON_DEPTH - 1)  # stored as {"result": value}
    reply = await stub.SendMessage(
        pb.SendMessageRequest(
            session_id="s",
            tool_results=[pb.ToolResult(call_id=call_id, result=value_of(limit_value))],
        )
    )
    stored = reply.reply.messages[0].parts[0].function_response.response
    assert json_format.MessageToDict(stored) == {"result": limit_value}
    await stub.CreateSession(pb.CreateSessionRequest(session_id="appended"))
    await stub.AppendMessages(
        pb.AppendMessagesRequest(
            session_id="appended", messages=history_with_call(args_of_depth(MAX_JSON_DEPTH))
        )
    )
    document = await snapshot(stub, "appended")
    await stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="imported"))
    # The echo model calls `lookup` with arguments exactly at the limit, through /call.
    text = "/call lookup " + json.dumps({"a": nested(MAX_JSON_DEPTH - 1)})
    await stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="model", session=session_pb2.Session(function_declarations=[LOOKUP])
        )
    )
    events = await outcome(stub.StreamReply(pb.StreamReplyRequest(session_id="model", text=text)))
    assert events[-1].reply.finish_reason == content_pb2.FINISH_REASON_TOOL_CALLS_PENDING
    session = (await stub.GetSession(pb.GetSessionRequest(session_id="model"))).session
    assert session.pending_tool_calls[0].args == args_of_depth(MAX_JSON_DEPTH)
    for sid in ("s", "appended", "imported", "model"):
        assert await all_messages(stub, sid)
        await snapshot(stub, sid)


# ----------------------------------------------------------------------------- the model


async def test_echo_model_calls_past_the_limit_end_malformed_and_store_no_call(
    chatd: Chatd,
) -> None:
    """The echo model asked (via /call) for a call nested past the limit: the call is
    dropped at the provider edge and the turn ends MALFORMED_FUNCTION_CALL; JSON too deep
    for Python's parser is a plain parse-error reply. The session keeps working."""
    stub = chatd.stub
    await stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="m", session=session_pb2.Session(function_declarations=[LOOKUP])
        )
    )
    text = "/call lookup " + json.dumps({"a": nested(MAX_JSON_DEPTH)})
    reply = (await stub.SendMessage(pb.SendMessageRequest(session_id="m", text=text))).reply
    assert reply.finish_reason == content_pb2.FINISH_REASON_MALFORMED_FUNCTION_CALL
    assert not reply.pending_tool_calls
    events = await outcome(stub.StreamReply(pb.StreamReplyRequest(session_id="m", text=text)))
    assert events[-1].reply.finish_reason == content_pb2.FINISH_REASON_MALFORMED_FUNCTION_CALL
    assert not any(e.HasField("tool_call") for e in events)
    assert not await all_messages(stub, "m"), "a turn that produced nothing is not stored"
    very_deep = "/call lookup " + "[" * 5000 + "]" * 5000
    reply = (await stub.SendMessage(pb.SendMessageRequest(session_id="m", text=very_deep))).reply
    assert "cannot parse the arguments" in reply.text
    history = await all_messages(stub, "m")
    assert not any(p.HasField("function_call") for m in history for p in m.parts)
    session = (await stub.GetSession(pb.GetSessionRequest(session_id="m"))).session
    assert session.state == session_pb2.Session.STATE_ACTIVE
    reply = (await stub.SendMessage(pb.SendMessageRequest(session_id="m", text="still here"))).reply
    assert "still here" in reply.text


async def test_gemini_calls_past_the_limit_never_reach_history_or_responses(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """Gemini returning function-call args nested past the limit (sessions and stateless
    generation): the call ends MALFORMED_FUNCTION_CALL, nothing deep is stored or returned,
    and the next turn sends Gemini a history without it."""
    chatd = await start_chatd(provider=fast_gemini(fake_gemini))
    stub = chatd.stub
    await stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="g", session=session_pb2.Session(function_declarations=[LOOKUP])
        )
    )
    deep_call = call_part("lookup", {"a": nested(40)}, id="c1")
    fake_gemini.push(Reply(parts=[{"text": "let me look"}, deep_call]))
    reply = (await stub.SendMessage(pb.SendMessageRequest(session_id="g", text="q"))).reply
    assert reply.finish_reason == content_pb2.FINISH_REASON_MALFORMED_FUNCTION_CALL
    assert reply.text == "let me look"
    # A fine call beside the deep one goes too: the model made them together.
    fine_call = call_part("lookup", {"a": 1}, id="c0", signature=b"sig")
    fake_gemini.push(Reply(parts=[fine_call, deep_call]))
    events = await outcome(stub.StreamReply(pb.StreamReplyRequest(session_id="g", text="q2")))
    assert events[-1].reply.finish_reason == content_pb2.FINISH_REASON_MALFORMED_FUNCTION_CALL
    assert not events[-1].reply.pending_tool_calls
    assert not any(e.HasField("tool_call") for e in events)
    fake_gemini.push(Reply(text="fine"))
    await stub.SendMessage(pb.SendMessageRequest(session_id="g", text="q3"))
    sent = fake_gemini.requests[-1]
    assert not any(
        get_field(p, "function_call") is not None for c in sent.contents for p in c["parts"]
    )
    history = await all_messages(stub, "g")
    assert not any(p.HasField("function_call") for m in history for p in m.parts)
    await snapshot(stub, "g")

    fake_gemini.push(Reply(parts=[deep_call]))
    generated = await stub.GenerateContent(
        pb.GenerateContentRequest(
            contents=[
                content_pb2.Content(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="q")])
            ]
        )
    )
    assert generated.generation.finish_reason == content_pb2.FINISH_REASON_MALFORMED_FUNCTION_CALL
    assert not generated.generation.content.parts


# ----------------------------------------------------------------------------- no kind


async def test_values_with_no_kind_are_invalid_argument_and_null_stays_legal(
    chatd: Chatd,
) -> None:
    """A google.protobuf.Value with no kind set (what a client sends for a value it never
    filled in) as a tool result, or anywhere inside a Struct or list, is INVALID_ARGUMENT
    naming the field; an explicit null_value is accepted."""
    stub = chatd.stub
    await paused_session(stub, "s")
    await stub.CreateSession(pb.CreateSessionRequest(session_id="plain"))
    call_id = await pending_call_id(stub, "s")
    before = await snapshot(stub, "s")
    fields, _ = await refused(
        stub.SendMessage(
            pb.SendMessageRequest(
                session_id="s",
                tool_results=[pb.ToolResult(call_id=call_id, result=struct_pb2.Value())],
            )
        )
    )
    assert fields == ["tool_results[0].result"]
    kindless_inside = value_of({"a": [1, 2]})
    kindless_inside.struct_value.fields["a"].list_value.values.add()
    fields, message = await refused(
        stub.SendMessage(
            pb.SendMessageRequest(
                session_id="s",
                tool_results=[pb.ToolResult(call_id=call_id, result=kindless_inside)],
            )
        )
    )
    assert fields == ["tool_results[0].result"]
    assert "tool_results[0].result.a[2]" in message
    assert await snapshot(stub, "s") == before

    args = struct({"q": 1})
    args.fields["missing"].CopyFrom(struct_pb2.Value())
    fields, _ = await refused(
        stub.AppendMessages(
            pb.AppendMessagesRequest(session_id="plain", messages=history_with_call(args))
        )
    )
    assert fields == ["messages[1].parts[0].function_call.args"]
    fields, _ = await refused(
        stub.CreateSession(
            pb.CreateSessionRequest(
                session=session_pb2.Session(
                    function_declarations=[
                        session_pb2.FunctionDeclaration(name="f", parameters=args)
                    ]
                )
            )
        )
    )
    assert fields == ["session.function_declarations[0].parameters"]
    document = await exported_with_call(stub, "src")
    document.messages[2].parts[0].function_response.response.fields["x"].CopyFrom(
        struct_pb2.Value()
    )
    document.messages[2].parts[0].function_response.response_json = ""
    fields, _ = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="copy"))
    )
    assert fields == ["document.messages[2].parts[0].function_response.response"]
    assert not (await snapshot(stub, "plain")).messages

    null = struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    reply = await stub.SendMessage(
        pb.SendMessageRequest(
            session_id="s", tool_results=[pb.ToolResult(call_id=call_id, result=null)]
        )
    )
    response = reply.reply.messages[0].parts[0].function_response.response
    assert response.fields["result"].WhichOneof("kind") == "null_value"


# ----------------------------------------------------------------------------- text parts


async def test_empty_text_parts_are_refused_on_every_path(chatd: Chatd) -> None:
    """An empty text part without a thought signature, which Gemini refuses in every later
    turn, is INVALID_ARGUMENT naming the part: sent, appended, imported or generated."""
    stub = chatd.stub
    document = await exported_with_call(stub, "src")
    await stub.CreateSession(pb.CreateSessionRequest(session_id="plain"))
    before = await snapshot(stub, "plain")
    hi, empty = content_pb2.Part(text="hi"), content_pb2.Part(text="")
    fields, _ = await refused(
        stub.SendMessage(pb.SendMessageRequest(session_id="plain", parts=[hi, empty]))
    )
    assert fields == ["parts[1].text"]
    messages = [
        content_pb2.Message(role=content_pb2.ROLE_USER, parts=[hi]),
        content_pb2.Message(role=content_pb2.ROLE_MODEL, parts=[empty]),
    ]
    fields, _ = await refused(
        stub.AppendMessages(pb.AppendMessagesRequest(session_id="plain", messages=messages))
    )
    assert fields == ["messages[1].parts[0].text"]
    document.messages[3].parts.add(text="")
    fields, _ = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="copy"))
    )
    assert fields == ["document.messages[3].parts[1].text"]
    contents = [content_pb2.Content(role=content_pb2.ROLE_USER, parts=[hi, empty])]
    fields, _ = await refused(stub.GenerateContent(pb.GenerateContentRequest(contents=contents)))
    assert fields == ["contents[0].parts[1].text"]
    assert await snapshot(stub, "plain") == before


async def test_empty_signed_text_parts_stay_accepted_and_are_replayed(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """A part {"text": "", "thoughtSignature": ...} is valid Gemini history: appended and
    imported it is kept, and the next turn sends it back with its signature."""
    chatd = await start_chatd(provider=fast_gemini(fake_gemini))
    stub = chatd.stub
    signed = content_pb2.Part(text="", thought_signature=b"sig-1")
    messages = [
        content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="q")]),
        content_pb2.Message(
            role=content_pb2.ROLE_MODEL, parts=[content_pb2.Part(text="a"), signed]
        ),
    ]
    await stub.CreateSession(pb.CreateSessionRequest(session_id="sig"))
    await stub.AppendMessages(pb.AppendMessagesRequest(session_id="sig", messages=messages))
    document = await snapshot(stub, "sig")
    await stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="sig2"))
    for sid in ("sig", "sig2"):
        fake_gemini.push(Reply(text="ok"))
        await stub.SendMessage(pb.SendMessageRequest(session_id=sid, text="next"))
        model_parts = fake_gemini.requests[-1].contents[1]["parts"]
        assert model_parts[1]["text"] == ""
        assert get_field(model_parts[1], "thought_signature") is not None


# ----------------------------------------------------------------------------- import sizes


async def test_import_obeys_the_limits_append_obeys(chatd: Chatd) -> None:
    """An imported message of 2,000,000 characters, or of 5,000 parts, is refused as
    AppendMessages refuses it, naming the message inside the document."""
    stub = chatd.stub
    document = await exported_with_call(stub, "src")
    long_text = session_pb2.SessionDocument()
    long_text.CopyFrom(document)
    long_text.messages[0].parts[0].text = "x" * 2_000_000
    fields, message = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=long_text, session_id="c1"))
    )
    assert fields == ["document.messages[0].parts[0].text"]
    assert "100000" in message
    many = session_pb2.SessionDocument()
    many.CopyFrom(document)
    del many.messages[3].parts[:]
    many.messages[3].parts.extend(content_pb2.Part(text="p") for _ in range(5000))
    fields, message = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=many, session_id="c2"))
    )
    assert fields == ["document.messages[3].parts"]
    assert "64" in message
    for doc in (long_text, many):
        appended = pb.AppendMessagesRequest(session_id="src", messages=doc.messages)
        fields, _ = await refused(stub.AppendMessages(appended))
        assert fields and fields[0].startswith("messages[")
    listed = await stub.ListSessions(pb.ListSessionsRequest())
    assert [s.session_id for s in listed.sessions] == ["src"]


async def test_function_calls_and_responses_without_a_name_are_refused(chatd: Chatd) -> None:
    """Gemini refuses history holding a nameless function call or response, so appending
    or importing one is INVALID_ARGUMENT naming the part's name."""
    stub = chatd.stub
    document = await exported_with_call(stub, "src")
    nameless_call = history_with_call(struct({"q": 1}))
    nameless_call[1].parts[0].function_call.name = ""
    fields, _ = await refused(
        stub.AppendMessages(pb.AppendMessagesRequest(session_id="src", messages=nameless_call))
    )
    assert fields == ["messages[1].parts[0].function_call.name"]
    document.messages[2].parts[0].function_response.name = ""
    fields, _ = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="copy"))
    )
    assert fields == ["document.messages[2].parts[0].function_response.name"]
    assert len(await all_messages(stub, "src")) == 4


# ----------------------------------------------------------------------------- the number


def _responses_holding(depth: int) -> list[Any]:
    """Each response that returns stored function-call arguments nesting objects `depth`
    deep, at its deepest (built in place: copying a message that deep fails in upb)."""
    sent = pb.SendMessageResponse()
    streamed = pb.StreamReplyResponse()
    listed = pb.ListMessagesResponse()
    exported = pb.ExportSessionResponse()
    for messages in (
        sent.reply.messages,
        streamed.reply.messages,
        listed.messages,
        exported.document.messages,
    ):
        call = messages.add().parts.add().function_call
        call.name = "f"
        call.args.update({"a": nested(depth - 1)})
    return [sent, streamed, listed, exported]


def _decodes(response: Any) -> bool:
    try:
        type(response).FromString(response.SerializeToString())
    except DecodeError:
        return False
    return True


def test_the_limit_leaves_eight_object_levels_below_what_clients_decode() -> None:
    """The measurement behind MAX_JSON_DEPTH (README, Input limits): with this protobuf,
    arguments nesting objects 32 deep still decode in every response that returns them,
    33 no longer do; the limit stays eight levels below."""
    assert MAX_JSON_DEPTH == 32 - 8
    for response in _responses_holding(32):
        assert _decodes(response), type(response).__name__
    for response in _responses_holding(33):
        assert not _decodes(response), type(response).__name__


async def test_data_parts_gemini_would_refuse_are_refused_in_history(chatd: Chatd) -> None:
    """Appended or imported history obeys the part rules a sent message obeys: inline data
    needs a media type and bytes, a file its URI."""
    stub = chatd.stub
    document = await exported_with_call(stub, "src")
    before = await snapshot(stub, "src")
    no_bytes = content_pb2.Part(inline_data=content_pb2.Blob(mime_type="image/png"))
    messages = [
        content_pb2.Message(
            role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="look"), no_bytes]
        ),
        content_pb2.Message(role=content_pb2.ROLE_MODEL, parts=[content_pb2.Part(text="ok")]),
    ]
    fields, _ = await refused(
        stub.AppendMessages(pb.AppendMessagesRequest(session_id="src", messages=messages))
    )
    assert fields == ["messages[0].parts[1].inline_data.data"]
    document.messages[0].parts.add(file_data=content_pb2.FileData(mime_type="text/plain"))
    fields, _ = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="copy"))
    )
    assert fields == ["document.messages[0].parts[1].file_data.file_uri"]
    assert await snapshot(stub, "src") == before


async def test_implausible_usage_in_history_is_refused(chatd: Chatd) -> None:
    """Token counts of imported messages are Gemini's int32 counts: negative or larger ones
    (which used to overflow the session's sums into INTERNAL) are refused, as is a paused
    turn's negative round count."""
    stub = chatd.stub
    document = await exported_with_call(stub, "src")
    before = await snapshot(stub, "src")
    for count in (2**63 - 1, 2**31, -1):
        tampered = session_pb2.SessionDocument()
        tampered.CopyFrom(document)
        for message in tampered.messages:
            message.usage.total_token_count = count
        fields, description = await refused(
            stub.ImportSession(pb.ImportSessionRequest(document=tampered, session_id="copy"))
        )
        assert fields == ["document.messages[0].usage.total_token_count"]
        assert "2147483647" in description
    await paused_session(stub, "paused")
    paused = await snapshot(stub, "paused")
    paused.pending_turn.rounds = -1
    fields, _ = await refused(
        stub.ImportSession(pb.ImportSessionRequest(document=paused, session_id="copy"))
    )
    assert fields == ["document.pending_turn.rounds"]
    assert await snapshot(stub, "src") == before


async def test_nul_in_ids_stored_as_text_is_refused_on_every_store(chatd: Chatd) -> None:
    """A request_id or an imported turn_id holding NUL (which PostgreSQL text cannot store,
    so it used to fail INTERNAL there) is refused on every backend, naming the field."""
    stub = chatd.stub
    document = await exported_with_call(stub, "src")
    before = await snapshot(stub, "src")
    fields, _ = await refused(
        stub.SendMessage(pb.SendMessageRequest(session_id="src", text="a", request_id="r\x00"))
    )
    assert fields == ["request_id"]
    for turn_id in ("t\x00", "t" * 129):
        document.messages[0].turn_id = turn_id
        fields, message = await refused(
            stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="copy"))
        )
        assert fields == ["document.messages[0].turn_id"]
        assert "128" in message
    assert await snapshot(stub, "src") == before


@pytest.mark.parametrize("path", ["expire_time.nanos", "expire_time.seconds", "ttl.nanos"])
async def test_a_mask_naming_part_of_a_time_is_refused_and_ends_nothing(
    chatd: Chatd, path: str
) -> None:
    """expire_time.nanos alone would merge an expiry of 1970 and end the session."""
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
    session = session_pb2.Session(session_id="s")
    session.expire_time.seconds = 4_000_000_000
    session.ttl.seconds = 60
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=session, update_mask=field_mask_pb2.FieldMask(paths=[path])
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["update_mask"]
    got = (await chatd.stub.GetSession(pb.GetSessionRequest(session_id="s"))).session
    assert not got.HasField("expire_time")
    assert not got.HasField("ttl")
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="s", text="still here"))


def _paused_document() -> session_pb2.SessionDocument:
    """A document paused on the call "a" of f, as chatd exports one."""
    doc = session_pb2.SessionDocument(format_version=1)
    doc.session.function_declarations.add(name="f")
    doc.session.function_declarations.add(name="g")
    doc.messages.add(
        message_id="0", role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="hi")]
    )
    call = content_pb2.FunctionCall(id="a", name="f")
    doc.messages.add(
        message_id="1", role=content_pb2.ROLE_MODEL, parts=[content_pb2.Part(function_call=call)]
    )
    doc.pending_turn.turn_id = "t1"
    doc.pending_turn.first_message_id = "0"
    doc.pending_turn.calls.append(call)
    return doc


def _other_call(doc: session_pb2.SessionDocument) -> None:
    del doc.pending_turn.calls[:]
    doc.pending_turn.calls.add(id="b", name="g")


def _first_not_a_message(doc: session_pb2.SessionDocument) -> None:
    doc.pending_turn.first_message_id = "7"


def _first_not_a_user_message(doc: session_pb2.SessionDocument) -> None:
    doc.pending_turn.first_message_id = "1"


def _answers_no_call(doc: session_pb2.SessionDocument) -> None:
    doc.pending_turn.answered.add(id="zzz", name="f", response=struct({"result": 1}))


@pytest.mark.parametrize(
    ("forge", "field"),
    [
        (_other_call, "document.pending_turn.calls"),
        (_first_not_a_message, "document.pending_turn.first_message_id"),
        (_first_not_a_user_message, "document.pending_turn.first_message_id"),
        (_answers_no_call, "document.pending_turn.answered[0].id"),
    ],
)
async def test_an_imported_paused_turn_must_be_the_one_its_history_ends_with(
    chatd: Chatd, forge: Any, field: str
) -> None:
    """Else tool results answer calls the history does not hold: the stored history
    leaves its own call unanswered, Gemini refuses it, and its export does not import."""
    forged = _paused_document()
    forge(forged)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.ImportSession(pb.ImportSessionRequest(session_id="i", document=forged))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [field]

    await chatd.stub.ImportSession(
        pb.ImportSessionRequest(session_id="i", document=_paused_document())
    )
    result = pb.ToolResult(call_id="a", result=struct_pb2.Value(string_value="x"))
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="i", tool_results=[result]))
    exported = await chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="i"))
    await chatd.stub.ImportSession(
        pb.ImportSessionRequest(session_id="j", document=exported.document)
    )


async def test_an_error_quoting_a_long_value_still_reaches_the_caller_whole(chatd: Chatd) -> None:
    """A message that quotes a caller's value is cut (MAX_MESSAGE_CHARS), so the status and
    its details fit the caller's limit on trailing metadata and arrive as the error."""
    request = pb.CreateSessionRequest(session_id="m")
    request.session.generation_config.response_mime_type = "x" * 20_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.CreateSession(request, metadata=(("x-request-id", "rid-long"),))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details() or "") <= MAX_MESSAGE_CHARS
    assert ("x-request-id", "rid-long") in tuple(err.value.trailing_metadata() or ())
    status = rpc_status.from_call(err.value)
    assert status is not None and status.message == err.value.details()
