"""Gemini fidelity through gRPC -> chatd -> google-genai -> fake Gemini: built-in tools and
their parts, candidate metadata, parts chatd does not model, exact JSON numbers,
multimodal function responses, answers without content and the history shapes the SDK's
own chat produces. Each test reads the wire request from the fake's log."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from server.sessions.model import Blob
from server.tools import ToolRegistry, ToolResult, tool
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import (
    FakeGemini,
    Raw,
    Reply,
    b64decode,
    call_part,
    code_part,
    code_result_part,
    get_field,
    grounding,
    signature_part,
    text_part,
    usage,
)
from tests.helpers import all_messages, violated_fields

SIGNATURE = bytes(range(256))
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
BIG = 12345678901234567890123  # far past 2**53: a double would round it


async def new_session(chatd: Chatd, session_id: str = "g", **settings: Any) -> None:
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id=session_id, session=session_pb2.Session(**settings))
    )


async def send(chatd: Chatd, text: str, session_id: str = "g") -> pb.Reply:
    response = await chatd.stub.SendMessage(pb.SendMessageRequest(session_id=session_id, text=text))
    return response.reply


def tools_of(body: Any) -> list[dict[str, Any]]:
    tools = get_field(body, "tools", default=[])
    assert isinstance(tools, list)
    return tools


async def refused(call: Any) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return violated_fields(err.value)


ALL_BUILTINS = session_pb2.BuiltinTools(
    google_search=session_pb2.BuiltinTools.GoogleSearch(),
    code_execution=session_pb2.BuiltinTools.CodeExecution(),
    url_context=session_pb2.BuiltinTools.UrlContext(),
    google_maps=session_pb2.BuiltinTools.GoogleMaps(enable_widget=True),
)


# --------------------------------------------------------------------------- built-in tools


async def test_builtin_tools_are_sent_beside_declarations_stored_updated_and_exported(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A session's built-in tools reach Gemini's `tools` next to the function declarations,
    are returned by GetSession, change with UpdateSession and survive export/import."""
    await new_session(
        gemini_chatd,
        builtin_tools=ALL_BUILTINS,
        function_declarations=[session_pb2.FunctionDeclaration(name="lookup")],
    )
    await send(gemini_chatd, "hi")
    tools = tools_of(fake_gemini.requests[-1].body)
    # The SDK puts the function declarations last, in a Tool of their own.
    assert get_field(tools[-1], "function_declarations", 0, "name") == "lookup"
    assert tools[:-1] == [
        {"googleSearch": {}},
        {"codeExecution": {}},
        {"urlContext": {}},
        {"googleMaps": {"enableWidget": True}},
    ]
    got = await gemini_chatd.stub.GetSession(pb.GetSessionRequest(session_id="g"))
    assert got.session.builtin_tools == ALL_BUILTINS

    only_url = session_pb2.BuiltinTools(url_context=session_pb2.BuiltinTools.UrlContext())
    await gemini_chatd.stub.UpdateSession(
        pb.UpdateSessionRequest(
            session=session_pb2.Session(session_id="g", builtin_tools=only_url),
            update_mask=field_mask_pb2.FieldMask(paths=["builtin_tools"]),
        )
    )
    await send(gemini_chatd, "again")
    assert tools_of(fake_gemini.requests[-1].body)[:-1] == [{"urlContext": {}}]

    exported = await gemini_chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="g"))
    assert exported.document.session.builtin_tools == only_url
    imported = await gemini_chatd.stub.ImportSession(
        pb.ImportSessionRequest(document=exported.document, session_id="copy")
    )
    assert imported.session.builtin_tools == only_url


async def test_builtin_tools_work_statelessly(gemini_chatd: Chatd, fake_gemini: FakeGemini) -> None:
    await gemini_chatd.stub.GenerateContent(
        pb.GenerateContentRequest(
            contents=[
                content_pb2.Content(
                    role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="search")]
                )
            ],
            builtin_tools=session_pb2.BuiltinTools(
                google_search=session_pb2.BuiltinTools.GoogleSearch()
            ),
        )
    )
    assert tools_of(fake_gemini.requests[-1].body) == [{"googleSearch": {}}]


CODE_REPLY = Reply(
    parts=[
        text_part("Let me compute."),
        code_part("print(6 * 7)", id="x1", signature=SIGNATURE),
        code_result_part("42\n", id="x1"),
        text_part("It is 42."),
    ]
)


async def test_code_execution_parts_are_typed_streamed_stored_and_replayed_exactly(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """executableCode / codeExecutionResult arrive as typed parts (live `part` events in
    StreamReply, the reply, ListMessages) and go back to the model as they came, the
    signature included."""
    await new_session(
        gemini_chatd,
        builtin_tools=session_pb2.BuiltinTools(
            code_execution=session_pb2.BuiltinTools.CodeExecution()
        ),
    )
    fake_gemini.push(CODE_REPLY)
    events = [
        e
        async for e in gemini_chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="g", text="6 times 7?")
        )
    ]
    live = [e.part for e in events if e.HasField("part")]
    assert [p.WhichOneof("data") for p in live] == ["executable_code", "code_execution_result"]
    reply = events[-1].reply
    parts = reply.messages[1].parts
    assert [p.WhichOneof("data") for p in parts] == [
        "text",
        "executable_code",
        "code_execution_result",
        "text",
    ]
    assert parts[1].executable_code == content_pb2.ExecutableCode(
        language="PYTHON", code="print(6 * 7)", id="x1"
    )
    assert parts[1].thought_signature == SIGNATURE
    assert parts[2].code_execution_result == content_pb2.CodeExecutionResult(
        outcome="OUTCOME_OK", output="42\n", id="x1"
    )
    history = await all_messages(gemini_chatd.stub, "g")
    assert list(history[1].parts) == list(parts)

    await send(gemini_chatd, "thanks")
    sent = fake_gemini.requests[-1].contents[1]["parts"]
    assert get_field(sent[1], "executable_code") == {
        "code": "print(6 * 7)",
        "language": "PYTHON",
        "id": "x1",
    }
    assert b64decode(get_field(sent[1], "thought_signature")) == SIGNATURE
    assert get_field(sent[2], "code_execution_result") == {
        "outcome": "OUTCOME_OK",
        "output": "42\n",
        "id": "x1",
    }
    assert [get_field(p, "text") for p in sent] == ["Let me compute.", None, None, "It is 42."]


async def test_server_side_tool_call_and_response_parts_are_typed_and_replayed(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """Gemini's own toolCall / toolResponse parts come back typed and are sent back."""
    await new_session(gemini_chatd)
    call = {"toolCall": {"id": "t1", "toolType": "GOOGLE_SEARCH_WEB", "args": {"q": "x"}}}
    answer = {"toolResponse": {"id": "t1", "toolType": "GOOGLE_SEARCH_WEB", "response": {"n": 3}}}
    fake_gemini.push(Reply(parts=[call, answer, text_part("found")]))
    reply = await send(gemini_chatd, "search")
    parts = reply.messages[1].parts
    assert parts[0].tool_call.tool_type == "GOOGLE_SEARCH_WEB"
    assert json.loads(parts[0].tool_call.args_json) == {"q": "x"}
    assert json.loads(parts[1].tool_response.response_json) == {"n": 3}
    await send(gemini_chatd, "more")
    sent = fake_gemini.requests[-1].contents[1]["parts"]
    assert get_field(sent[0], "tool_call", "args") == {"q": "x"}
    assert get_field(sent[1], "tool_response", "response") == {"n": 3}
    assert get_field(sent[1], "tool_response", "id") == "t1"


# --------------------------------------------------------------------------- metadata

CANDIDATE = {
    "groundingMetadata": grounding(
        ("https://a.example/1", "A"), ("https://b.example/2", "B"), queries=["q one"]
    ),
    "urlContextMetadata": {
        "urlMetadata": [
            {
                "retrievedUrl": "https://c.example",
                "urlRetrievalStatus": "URL_RETRIEVAL_STATUS_SUCCESS",
            }
        ]
    },
    "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}],
    "citationMetadata": {"citationSources": [{"startIndex": 0, "endIndex": 4, "uri": "https://d"}]},
    "finishMessage": "Grounded in two sources.",
}


async def test_candidate_metadata_reaches_reply_and_stored_message_typed_and_whole(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """Grounding sources and supports, URL context, safety ratings, citations and the
    finish message: typed on the Reply and on the stored model message, whole in `json`.
    (google-genai 3.6.1 drops `finishMessage` when it reads a Gemini API response; chatd
    reads the answer itself and keeps it.)"""
    await new_session(gemini_chatd)
    fake_gemini.push(Reply(text="grounded", chunks=2, candidate=CANDIDATE))
    reply = await send(gemini_chatd, "look it up")
    for metadata in (reply.candidate_metadata, reply.messages[1].candidate_metadata):
        g = metadata.grounding_metadata
        assert list(g.web_search_queries) == ["q one"]
        assert [(s.uri, s.title, s.kind) for s in g.sources] == [
            ("https://a.example/1", "A", "web"),
            ("https://b.example/2", "B", "web"),
        ]
        assert [list(s.source_indices) for s in g.supports] == [[0], [1]]
        assert g.supports[1].start_index == 1
        assert g.search_entry_point_html == "<div>suggestions</div>"
        assert metadata.url_context_metadata.url_metadata[0].retrieved_url == "https://c.example"
        assert metadata.safety_ratings[0].category == "HARM_CATEGORY_HARASSMENT"
        assert metadata.citation_metadata.citations[0].uri == "https://d"
        assert metadata.finish_message == "Grounded in two sources."
        whole = json.loads(metadata.json)
        assert whole["groundingMetadata"] == CANDIDATE["groundingMetadata"]
        # Kept as the Gemini API sent it (google-genai would rename it `citations`).
        assert whole["citationMetadata"] == CANDIDATE["citationMetadata"]
    history = await all_messages(gemini_chatd.stub, "g")
    assert history[1].candidate_metadata == reply.messages[1].candidate_metadata


# --------------------------------------------------------------------------- unmodeled parts


async def test_a_part_chatd_does_not_model_is_kept_whole_and_replayed(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A part with a field chatd has no place for (partMetadata here) is neither reshaped
    nor stripped: the caller sees its Gemini JSON, the model gets it back unchanged."""
    await new_session(gemini_chatd)
    odd = {"text": "tagged", "partMetadata": {"k": [1, 2]}, "thoughtSignature": "AAEC"}
    fake_gemini.push(Reply(parts=[odd, text_part("plain")]))
    reply = await send(gemini_chatd, "hi")
    parts = reply.messages[1].parts
    assert parts[0].WhichOneof("data") == "gemini_part"
    assert json.loads(parts[0].gemini_part) == odd
    assert parts[1].text == "plain"
    await send(gemini_chatd, "next")
    sent = fake_gemini.requests[-1].contents[1]["parts"][0]
    assert get_field(sent, "part_metadata") == {"k": [1, 2]}
    assert get_field(sent, "text") == "tagged"
    assert b64decode(get_field(sent, "thought_signature")) == b"\x00\x01\x02"


async def test_signature_only_part_stays_a_signature_only_part(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A part carrying only a signature is stored as such (no data set), not as empty
    text, and goes back to the model as `{"thoughtSignature": ...}`."""
    await new_session(gemini_chatd)
    fake_gemini.push(Reply(parts=[text_part("answer"), signature_part(SIGNATURE)]))
    reply = await send(gemini_chatd, "hi")
    parts = reply.messages[1].parts
    assert parts[1].WhichOneof("data") is None
    assert parts[1].thought_signature == SIGNATURE
    await send(gemini_chatd, "next")
    sent = fake_gemini.requests[-1].contents[1]["parts"]
    assert len(sent) == 2
    assert set(sent[1]) in ({"thoughtSignature"}, {"thought_signature"})
    assert b64decode(get_field(sent[1], "thought_signature")) == SIGNATURE


# --------------------------------------------------------------------------- exact JSON


async def test_big_integers_and_integral_numbers_travel_exactly_both_ways(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """The model's call arguments reach the caller exactly in args_json; the caller's
    result_json reaches the wire exactly; 3 stays 3 (never 3.0), also from a Struct."""
    await new_session(
        gemini_chatd,
        function_declarations=[
            session_pb2.FunctionDeclaration(
                name="order",
                parameters_json='{"type":"object","properties":{"id":{"type":"integer",'
                f'"maximum":{BIG}}}}}}}',
            ),
            session_pb2.FunctionDeclaration(name="count"),
        ],
        generation_config=session_pb2.GenerationConfig(
            response_mime_type="application/json",
            response_json_schema_json=f'{{"type":"object","maxProperties":{BIG}}}',
        ),
    )
    fake_gemini.push(
        Reply(
            parts=[
                call_part("order", {"id": BIG, "qty": 3, "price": 2.5}, id="c1"),
                call_part("count", {"n": 3}, id="c2"),
            ]
        )
    )
    fake_gemini.push(Reply(text="ok"))
    reply = await send(gemini_chatd, "order it")
    first = fake_gemini.requests[0]
    assert f'"maximum": {BIG}' in first.raw_body.decode() or f'"maximum":{BIG}' in (
        first.raw_body.decode()
    )
    schema = first.field("generation_config", "response_json_schema")
    assert schema == {"type": "object", "maxProperties": BIG}

    calls = {c.name: c for c in reply.pending_tool_calls}
    assert json.loads(calls["order"].args_json) == {"id": BIG, "qty": 3, "price": 2.5}
    assert str(BIG) in calls["order"].args_json
    assert calls["count"].args_json == '{"n":3}'
    session = await gemini_chatd.stub.GetSession(pb.GetSessionRequest(session_id="g"))
    declared = session.session.function_declarations[0]
    assert json.loads(declared.parameters_json)["properties"]["id"]["maximum"] == BIG
    config = session.session.generation_config
    assert json.loads(config.response_json_schema_json) == {"type": "object", "maxProperties": BIG}

    value = json.loads('{"n": 3}')
    from google.protobuf import struct_pb2

    struct_value = struct_pb2.Value()
    struct_value.struct_value.update(value)
    await gemini_chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="g",
            tool_results=[
                pb.ToolResult(call_id="c1", result_json=f'{{"total": {BIG}, "rows": [1, 2.5]}}'),
                pb.ToolResult(call_id="c2", result=struct_value),
            ],
        )
    )
    wire = fake_gemini.requests[-1]
    responses = wire.contents[2]["parts"]
    assert get_field(responses[0], "function_response", "response") == {
        "result": {"total": BIG, "rows": [1, 2.5]}
    }
    count = get_field(responses[1], "function_response", "response", "result", "n")
    assert count == 3 and isinstance(count, int)
    assert get_field(wire.contents[1], "parts", 0, "function_call", "args", "id") == BIG
    history = await all_messages(gemini_chatd.stub, "g")
    assert json.loads(history[2].parts[0].function_response.response_json) == {
        "result": {"total": BIG, "rows": [1, 2.5]}
    }


@pytest.mark.parametrize(
    ("result", "field"),
    [
        (pb.ToolResult(call_id="c1", result_json="{not json"), "tool_results[0].result_json"),
        (pb.ToolResult(call_id="c1", result_json="NaN"), "tool_results[0].result_json"),
        (
            pb.ToolResult(call_id="c1", result_json="[" * 30 + "]" * 30),
            "tool_results[0].result_json",
        ),
        (pb.ToolResult(call_id="c1"), "tool_results[0]"),
    ],
)
async def test_unreadable_tool_results_are_refused_naming_the_field(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, result: pb.ToolResult, field: str
) -> None:
    await new_session(
        gemini_chatd, function_declarations=[session_pb2.FunctionDeclaration(name="f")]
    )
    fake_gemini.push(Reply(parts=[call_part("f", id="c1")]))
    await send(gemini_chatd, "go")
    fields = await refused(
        gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", tool_results=[result]))
    )
    assert fields == [field]


async def test_both_forms_of_a_json_field_must_agree(gemini_chatd: Chatd) -> None:
    """Struct and JSON text may both be set only with the same value (as chatd writes
    them); otherwise the JSON field is named."""
    declaration = session_pb2.FunctionDeclaration(name="f", parameters_json='{"type":"object"}')
    declaration.parameters.update({"type": "object"})
    await new_session(gemini_chatd, "same", function_declarations=[declaration])
    declaration.parameters.update({"type": "object", "x": 1})
    fields = await refused(
        gemini_chatd.stub.CreateSession(
            pb.CreateSessionRequest(
                session_id="differ",
                session=session_pb2.Session(function_declarations=[declaration]),
            )
        )
    )
    assert fields == ["session.function_declarations[0].parameters_json"]


# --------------------------------------------------------------------------- media in results


@tool
def snapshot(label: str) -> ToolResult:
    """Takes a picture.

    Args:
        label: what to call it.
    """
    return ToolResult({"label": label, "bytes": len(IMAGE)}, (Blob("image/png", IMAGE),))


async def test_server_and_caller_tool_results_carry_media_parts(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """A server tool returning ToolResult with an image, and a caller's tool result with
    parts, reach the wire as functionResponse.parts and are stored and returned."""
    chatd = await start_chatd(provider=fast_gemini(fake_gemini), tools=ToolRegistry([snapshot]))
    await new_session(
        chatd, tools=["snapshot"], function_declarations=[session_pb2.FunctionDeclaration(name="f")]
    )
    fake_gemini.push(Reply(parts=[call_part("snapshot", {"label": "cat"}, id="s1")]))
    fake_gemini.push(Reply(parts=[call_part("f", id="c1")]))
    fake_gemini.push(Reply(text="nice"))
    reply = await send(chatd, "take one")
    answered = reply.messages[2].parts[0].function_response
    assert answered.parts[0].inline_data.data == IMAGE
    wire = fake_gemini.requests[1].contents[2]["parts"][0]
    media = get_field(wire, "function_response", "parts", 0, "inline_data")
    assert get_field(media, "mime_type") == "image/png"
    assert b64decode(get_field(media, "data")) == IMAGE

    file = content_pb2.FileData(mime_type="application/pdf", file_uri="https://f.example/doc")
    done = await chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="g",
            tool_results=[
                pb.ToolResult(
                    call_id="c1",
                    result_json='{"ok": true}',
                    parts=[content_pb2.FunctionResponsePart(file_data=file)],
                )
            ],
        )
    )
    assert done.reply.text == "nice"
    wire = fake_gemini.requests[-1].contents[4]["parts"][0]
    assert get_field(wire, "function_response", "parts", 0, "file_data", "file_uri") == (
        "https://f.example/doc"
    )
    history = await all_messages(chatd.stub, "g")
    assert history[4].parts[0].function_response.parts[0].file_data == file


# --------------------------------------------------------------------------- no content


NO_CONTENT = [
    pytest.param(
        Raw(
            [
                {
                    "candidates": [
                        {
                            "content": {"role": "model", "parts": [signature_part(SIGNATURE)]},
                            "finishReason": "MALFORMED_FUNCTION_CALL",
                        }
                    ]
                }
            ]
        ),
        content_pb2.FINISH_REASON_MALFORMED_FUNCTION_CALL,
        id="signature-only",
    ),
    pytest.param(Reply(text=""), content_pb2.FINISH_REASON_STOP, id="empty-text"),
    pytest.param(Raw([{"modelVersion": "m"}]), content_pb2.FINISH_REASON_STOP, id="no-candidates"),
    pytest.param(
        Reply(block_reason="SAFETY"), content_pb2.FINISH_REASON_PROMPT_BLOCKED, id="blocked"
    ),
]


@pytest.mark.parametrize(("answer", "finish"), NO_CONTENT)
async def test_an_answer_without_content_is_reported_and_the_turn_not_stored(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, answer: Any, finish: int
) -> None:
    """Whatever its shape, an answer with no content ends the turn unstored: the reply
    says no_content and not_stored, explains, and returns the user's message; the next
    turn sends no empty part."""
    await new_session(gemini_chatd)
    fake_gemini.push(answer)
    reply = await send(gemini_chatd, "hello")
    assert reply.no_content and reply.not_stored
    assert reply.finish_reason == finish
    assert "nothing of this turn was stored" in reply.no_content_reason
    assert reply.unstored_message.parts[0].text == "hello"
    assert reply.unstored_message.message_id == ""
    assert list(reply.messages) == []
    assert await all_messages(gemini_chatd.stub, "g") == []
    await send(gemini_chatd, "again")
    assert fake_gemini.requests[-1].contents == [{"role": "user", "parts": [{"text": "again"}]}]


async def test_an_empty_answer_to_tool_results_keeps_the_results(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """After tool results the turn is stored without a final answer, reported as such,
    and the next request is one Gemini accepts (no empty parts)."""
    await new_session(
        gemini_chatd, function_declarations=[session_pb2.FunctionDeclaration(name="f")]
    )
    fake_gemini.push(Reply(parts=[call_part("f", id="c1", signature=SIGNATURE)]))
    fake_gemini.push(Reply(text="", finish_reason="MALFORMED_FUNCTION_CALL"))
    await send(gemini_chatd, "go")
    done = await gemini_chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="g", tool_results=[pb.ToolResult(call_id="c1", result_json="1")]
        )
    )
    assert done.reply.no_content and not done.reply.not_stored
    assert "stored, without a final answer" in done.reply.no_content_reason
    assert len(await all_messages(gemini_chatd.stub, "g")) == 3
    await send(gemini_chatd, "next")
    contents = fake_gemini.requests[-1].contents
    assert [c["role"] for c in contents] == ["user", "model", "user", "user"]
    assert all(get_field(p, "text") != "" for c in contents for p in c["parts"])
    assert b64decode(get_field(contents[1], "parts", 0, "thought_signature")) == SIGNATURE


# --------------------------------------------------------------------------- history shapes


def model(*parts: content_pb2.Part) -> content_pb2.Message:
    return content_pb2.Message(role=content_pb2.ROLE_MODEL, parts=parts)


def user(*parts: content_pb2.Part) -> content_pb2.Message:
    return content_pb2.Message(role=content_pb2.ROLE_USER, parts=parts)


def text(value: str) -> content_pb2.Part:
    return content_pb2.Part(text=value)


async def test_citations_under_either_apis_name_read_typed(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """Candidate metadata holds a Gemini API answer's citations as Gemini sends them,
    `citationSources`, or as Vertex AI and google-genai name them, `citations`: both read as
    the typed citations (here from an imported copy whose metadata says `citationSources`)."""
    await new_session(gemini_chatd)
    fake_gemini.push(Reply(text="cited", candidate=CANDIDATE))
    await send(gemini_chatd, "cite")
    exported = await gemini_chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="g"))
    document = exported.document
    answer = document.messages[1].candidate_metadata
    whole = json.loads(answer.json)
    whole["citationMetadata"] = {"citationSources": [{"startIndex": 1, "uri": "https://s"}]}
    answer.json = json.dumps(whole)
    await gemini_chatd.stub.ImportSession(
        pb.ImportSessionRequest(document=document, session_id="copy")
    )
    for session_id, cited in (("g", (0, "https://d")), ("copy", (1, "https://s"))):
        history = await all_messages(gemini_chatd.stub, session_id)
        citations = history[1].candidate_metadata.citation_metadata.citations
        assert [(c.start_index, c.uri) for c in citations] == [cited]


async def test_history_as_the_sdk_chat_keeps_it_is_appended_and_sent_as_it_is(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """One model content per streamed chunk and calls without ids (the SDK's own chat
    history) are accepted and sent back unchanged: no ids are invented for them."""
    call = content_pb2.Part(
        function_call=content_pb2.FunctionCall(name="f", args_json='{"a":1}'),
        thought_signature=SIGNATURE,
    )
    response = content_pb2.Part(
        function_response=content_pb2.FunctionResponse(name="f", response_json='{"r":2}')
    )
    history = [
        user(text("q")),
        model(text("thinking ")),
        model(text("more"), call),
        user(response),
        model(text("done")),
    ]
    await new_session(gemini_chatd)
    await gemini_chatd.stub.AppendMessages(
        pb.AppendMessagesRequest(session_id="g", messages=history)
    )
    await send(gemini_chatd, "next")
    contents = fake_gemini.requests[-1].contents
    assert [c["role"] for c in contents] == ["user", "model", "model", "user", "model", "user"]
    assert get_field(contents[2], "parts", 1, "function_call") == {"args": {"a": 1}, "name": "f"}
    assert get_field(contents[3], "parts", 0, "function_response") == {
        "name": "f",
        "response": {"r": 2},
    }
    fields = await refused(
        gemini_chatd.stub.AppendMessages(
            pb.AppendMessagesRequest(session_id="g", messages=[model(call), user(text("no"))])
        )
    )
    assert fields == ["messages[1]"]


async def test_chatd_invents_call_ids_only_when_the_model_sent_none(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """A call without an id gets one, and its response carries the same one on the wire;
    a call with the model's id keeps it."""
    chatd = await start_chatd(provider=fast_gemini(fake_gemini), tools=ToolRegistry([snapshot]))
    await new_session(chatd, tools=["snapshot"])
    fake_gemini.push(
        Reply(
            parts=[
                call_part("snapshot", {"label": "a"}),
                call_part("snapshot", {"label": "b"}, id="model-id"),
            ]
        )
    )
    fake_gemini.push(Reply(text="ok"))
    await send(chatd, "two")
    contents = fake_gemini.requests[-1].contents
    call_ids = [get_field(p, "function_call", "id") for p in contents[1]["parts"]]
    response_ids = [get_field(p, "function_response", "id") for p in contents[2]["parts"]]
    assert call_ids[1] == "model-id"
    assert call_ids[0] and call_ids[0] != "model-id"
    assert response_ids == call_ids


# --------------------------------------------------------------------------- export / import


async def test_export_import_then_next_turn_sends_identical_contents(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A session holding code execution parts, grounding metadata, a multimodal function
    response and big integers: the imported copy's next request has byte-identical
    `contents` to the original's."""
    await new_session(
        gemini_chatd,
        builtin_tools=ALL_BUILTINS,
        function_declarations=[session_pb2.FunctionDeclaration(name="f")],
    )
    fake_gemini.push(CODE_REPLY)
    await send(gemini_chatd, "compute")
    fake_gemini.push(Reply(parts=[call_part("f", {"big": BIG}, id="c1", signature=SIGNATURE)]))
    await send(gemini_chatd, "call it")
    fake_gemini.push(Reply(text="grounded", candidate=CANDIDATE))
    image = content_pb2.FunctionResponsePart(
        inline_data=content_pb2.Blob(mime_type="image/png", data=IMAGE)
    )
    await gemini_chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="g",
            tool_results=[pb.ToolResult(call_id="c1", result_json=f"[{BIG}]", parts=[image])],
        )
    )
    exported = await gemini_chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="g"))
    await gemini_chatd.stub.ImportSession(
        pb.ImportSessionRequest(document=exported.document, session_id="copy")
    )
    again = await gemini_chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="copy"))
    assert list(again.document.messages) == list(exported.document.messages)

    bodies = []
    for session_id in ("g", "copy"):
        fake_gemini.push(Reply(text="same"))
        await send(gemini_chatd, "next", session_id)
        bodies.append(fake_gemini.requests[-1].raw_body)
    # The whole request body, byte for byte: contents, tools and config alike.
    assert bodies[0] == bodies[1]
    contents = json.loads(bodies[0])["contents"]
    assert str(BIG) in json.dumps(contents)
    assert any("executableCode" in p for c in contents for p in c["parts"])


async def test_appended_gemini_parts_and_signature_only_parts_are_checked_and_sent_as_given(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A caller's gemini_part must name Gemini Part fields; a good one and a
    signature-only part go to the model as given. A part with nothing in it is refused."""
    await new_session(gemini_chatd)
    odd = {"text": "clip", "videoMetadata": {"startOffset": "1s"}}
    good = [
        user(content_pb2.Part(gemini_part=json.dumps(odd))),
        model(text("seen"), content_pb2.Part(thought_signature=SIGNATURE)),
    ]
    await gemini_chatd.stub.AppendMessages(pb.AppendMessagesRequest(session_id="g", messages=good))
    await send(gemini_chatd, "next")
    contents = fake_gemini.requests[-1].contents
    assert get_field(contents[0], "parts", 0, "video_metadata") == {"start_offset": "1s"} or (
        get_field(contents[0], "parts", 0, "video_metadata") == {"startOffset": "1s"}
    )
    assert b64decode(get_field(contents[1], "parts", 1, "thought_signature")) == SIGNATURE

    for bad, field in [
        (content_pb2.Part(gemini_part='{"bogus": 1}'), "messages[0].parts[0].gemini_part"),
        (content_pb2.Part(gemini_part='{"text": 5}'), "messages[0].parts[0].gemini_part"),
        (content_pb2.Part(gemini_part="[1]"), "messages[0].parts[0].gemini_part"),
        (content_pb2.Part(), "messages[0].parts[0]"),
    ]:
        fields = await refused(
            gemini_chatd.stub.AppendMessages(
                pb.AppendMessagesRequest(session_id="g", messages=[user(bad), model(text("a"))])
            )
        )
        assert fields == [field]


async def test_builtin_tools_beside_a_cached_content_are_refused(gemini_chatd: Chatd) -> None:
    """A cached content holds the tools itself and Gemini refuses tools beside it."""
    fields = await refused(
        gemini_chatd.stub.CreateSession(
            pb.CreateSessionRequest(
                session=session_pb2.Session(
                    builtin_tools=ALL_BUILTINS,
                    generation_config=session_pb2.GenerationConfig(
                        cached_content="cachedContents/abc"
                    ),
                )
            )
        )
    )
    assert fields == ["session.generation_config.cached_content"]


async def test_parts_of_another_models_answer_go_without_their_signatures(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """After a model change, a kept Gemini JSON part loses its signature like any part,
    and a signature-only part is left out (history itself is unchanged)."""
    await new_session(gemini_chatd, model="gemini-a")
    odd = {"text": "tagged", "partMetadata": {"k": 1}, "thoughtSignature": "AAEC"}
    fake_gemini.push(Reply(parts=[odd, text_part("plain"), signature_part(SIGNATURE)]))
    await send(gemini_chatd, "hi")
    await gemini_chatd.stub.UpdateSession(
        pb.UpdateSessionRequest(
            session=session_pb2.Session(session_id="g", model="gemini-b"),
            update_mask=field_mask_pb2.FieldMask(paths=["model"]),
        )
    )
    await send(gemini_chatd, "next")
    sent = fake_gemini.requests[-1].contents[1]["parts"]
    assert len(sent) == 2
    assert get_field(sent[0], "part_metadata") == {"k": 1}
    assert all(get_field(p, "thought_signature") is None for p in sent)
    history = await all_messages(gemini_chatd.stub, "g")
    assert len(history[1].parts) == 3


async def test_a_retried_stream_repeats_its_part_events(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A StreamReply retried with the same request_id replays the code execution parts as
    `part` events without calling the model again."""
    await new_session(gemini_chatd)
    fake_gemini.push(CODE_REPLY)
    request = pb.StreamReplyRequest(session_id="g", text="compute", request_id="r1")
    kinds = []
    for _ in range(2):
        events = [e async for e in gemini_chatd.stub.StreamReply(request)]
        kinds.append([e.part.WhichOneof("data") for e in events if e.HasField("part")])
    assert kinds[0] == kinds[1] == ["executable_code", "code_execution_result"]
    assert len(fake_gemini.requests) == 1


async def test_prompt_feedback_reaches_the_reply(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A blocked prompt's reason, Gemini's message about it and its safety ratings."""
    await new_session(gemini_chatd)
    feedback = {
        "blockReason": "SAFETY",
        "blockReasonMessage": "blocked for safety",
        "safetyRatings": [
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}
        ],
    }
    fake_gemini.push(Raw([{"promptFeedback": feedback, "modelVersion": "m"}]))
    reply = await send(gemini_chatd, "bad")
    assert reply.no_content and reply.block_reason == "SAFETY"
    got = reply.prompt_feedback
    assert got.block_reason == "SAFETY"
    assert got.block_reason_message == "blocked for safety"
    assert got.safety_ratings[0].blocked
    assert json.loads(got.json) == feedback


@pytest.mark.parametrize(
    "answer",
    [
        Reply(text="grounded", usage=usage(prompt=4, candidates=2), candidate=CANDIDATE),
        Raw([{"promptFeedback": {"blockReason": "SAFETY"}, "modelVersion": "m"}]),
    ],
    ids=["candidate-metadata", "blocked"],
)
async def test_a_generation_describes_the_answer_as_a_reply_does(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, answer: Reply | Raw
) -> None:
    """GenerateContent's Generation and SendMessage's Reply say the same of one answer:
    finish reason, usage, model, block reason, candidate metadata, no_content, prompt
    feedback."""
    await new_session(gemini_chatd)
    fake_gemini.push(answer)
    reply = await send(gemini_chatd, "look it up")
    fake_gemini.push(answer)
    user = content_pb2.Content(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="q")])
    request = pb.GenerateContentRequest(contents=[user])
    generation = (await gemini_chatd.stub.GenerateContent(request)).generation
    shared = ("finish_reason", "usage", "model", "block_reason", "candidate_metadata")
    for field in (*shared, "no_content", "prompt_feedback"):
        assert getattr(generation, field) == getattr(reply, field), field
    assert generation.candidate_metadata.json or generation.prompt_feedback.json


async def test_a_model_run_with_calls_without_ids_imports_across_check_slices(
    gemini_chatd: Chatd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An imported history is checked a slice at a time: a run of model messages whose
    calls (without ids) are answered after the slice ends is still accepted."""
    from server.sessions import history_ops

    monkeypatch.setattr(history_ops, "CHECK_SLICE", 3)

    def call(name: str) -> content_pb2.Part:
        return content_pb2.Part(function_call=content_pb2.FunctionCall(name=name))

    def answer(name: str) -> content_pb2.Part:
        return content_pb2.Part(function_response=content_pb2.FunctionResponse(name=name))

    history = [
        user(text("q")),
        model(call("a")),
        model(call("b")),
        model(text("waiting")),
        user(answer("a"), answer("b")),
        model(text("done")),
    ]
    await new_session(gemini_chatd)
    await gemini_chatd.stub.AppendMessages(
        pb.AppendMessagesRequest(session_id="g", messages=history)
    )
    exported = await gemini_chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="g"))
    imported = await gemini_chatd.stub.ImportSession(
        pb.ImportSessionRequest(document=exported.document, session_id="copy")
    )
    assert imported.session.message_count == len(history)
