"""Function calling through a real server: server tools, caller tools, pauses and the loop."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from server.tools import BUILTIN_TOOLS, ToolRegistry
from tests import tool_fixtures
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import FakeGemini, Reply, call_part, get_field
from tests.helpers import all_messages, violated_fields
from tests.process import ChatdProcess

LOOKUP = session_pb2.FunctionDeclaration(
    name="lookup_order",
    description="Finds an order by id.",
    parameters=struct_pb2.Struct(
        fields={
            "type": struct_pb2.Value(string_value="object"),
        }
    ),
)
TEST_TOOLS = ToolRegistry(
    [
        *BUILTIN_TOOLS,
        tool_fixtures.paired_double,
        tool_fixtures.paired_square,
        tool_fixtures.explode,
        tool_fixtures.dawdle,
        tool_fixtures.find_order,
    ]
)


async def session(chatd: Chatd, sid: str = "t", **settings: object) -> None:
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id=sid, session=session_pb2.Session(**settings))  # type: ignore[arg-type]
    )


def events_kinds(events: list[pb.StreamReplyResponse]) -> list[str]:
    kinds: list[str] = []
    for e in events:
        kind: str = e.WhichOneof("event") or ""
        if kind == "message":
            role = "user" if e.message.role == content_pb2.ROLE_USER else "model"
            kind = f"message:{role}"
        if not kinds or kinds[-1] != kind or kind != "text_delta":
            kinds.append(kind)
    return kinds


async def test_list_tools_shows_builtins_with_json_schemas(chatd: Chatd) -> None:
    listed = await chatd.stub.ListTools(pb.ListToolsRequest())
    names = [t.name for t in listed.tools]
    assert names == sorted(names)
    assert {"calculate", "get_current_time"} <= set(names)
    clock = next(t for t in listed.tools if t.name == "get_current_time")
    assert clock.description
    parameters = json_format.MessageToDict(clock.parameters)
    assert parameters["type"] == "object"
    assert parameters["properties"]["timezone"]["type"] == "string"
    first = await chatd.stub.ListTools(pb.ListToolsRequest(page_size=1))
    assert len(first.tools) == 1 and first.next_page_token


async def test_list_tools_gives_each_schema_as_exact_json_text_too(
    start_chatd: StartChatd,
) -> None:
    server = await start_chatd(tools=TEST_TOOLS)
    listed = await server.stub.ListTools(pb.ListToolsRequest())
    for t in listed.tools:
        # The same schema in both forms, up to the Struct's doubles.
        assert json_format.ParseDict(json.loads(t.parameters_json), struct_pb2.Struct()) == (
            t.parameters
        )
    find = next(t for t in listed.tools if t.name == "find_order")
    bound = json.loads(find.parameters_json)["properties"]["order_id"]["maximum"]
    assert bound == tool_fixtures.LARGEST_ORDER_ID
    # The Struct's double cannot hold the same bound.
    assert find.parameters["properties"]["order_id"]["maximum"] != tool_fixtures.LARGEST_ORDER_ID


async def test_echo_call_runs_a_server_tool_and_streams_every_step(chatd: Chatd) -> None:
    """/call on the echo provider: call, result and final answer stream in order and are stored."""
    await session(chatd, tools=["get_current_time"])
    events = [
        e
        async for e in chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="t", text='/call get_current_time {"timezone": "UTC"}')
        )
    ]
    assert events_kinds(events) == [
        "message:user",
        "message:model",
        "tool_call",
        "tool_result",
        "message:user",
        "text_delta",
        "message:model",
        "reply",
    ]
    call = next(e.tool_call for e in events if e.HasField("tool_call"))
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert not call.caller_executed
    assert call.function_call.name == "get_current_time"
    assert call.function_call.id, "chatd assigns an id when the model gives none"
    assert result.function_response.id == call.function_call.id
    assert not result.is_error
    assert (
        json_format.MessageToDict(result.function_response.response)["result"]["timezone"] == "UTC"
    )
    reply = events[-1].reply
    assert reply.finish_reason == content_pb2.FINISH_REASON_STOP
    assert "get_current_time returned" in reply.text
    history = await all_messages(chatd.stub, "t")
    assert len(history) == 4
    assert [m.message_id for m in reply.messages] == [m.message_id for m in history]
    assert history[2].parts[0].function_response.id == call.function_call.id


async def test_caller_executed_tool_pauses_and_resumes_the_turn(chatd: Chatd) -> None:
    await session(chatd, function_declarations=[LOOKUP])
    paused = await chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id="t", text='/call lookup_order {"order": 7}')
    )
    assert paused.reply.finish_reason == content_pb2.FINISH_REASON_TOOL_CALLS_PENDING
    [pending] = paused.reply.pending_tool_calls
    assert pending.name == "lookup_order"
    assert pending.args["order"] == 7
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="t"))
    assert got.session.state == session_pb2.Session.STATE_AWAITING_TOOL_RESULTS
    assert list(got.session.pending_tool_calls) == [pending]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="t", text="hello?"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    result = struct_pb2.Value(string_value="shipped")
    resumed = await chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="t", tool_results=[pb.ToolResult(call_id=pending.id, result=result)]
        )
    )
    assert resumed.reply.finish_reason == content_pb2.FINISH_REASON_STOP
    assert 'lookup_order returned {"result": "shipped"}' in resumed.reply.text
    assert resumed.reply.turn_id == paused.reply.turn_id
    history = await all_messages(chatd.stub, "t")
    assert len(history) == 4
    assert {m.turn_id for m in history} == {paused.reply.turn_id}
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="t"))
    assert got.session.state == session_pb2.Session.STATE_ACTIVE
    assert not got.session.pending_tool_calls


@pytest.mark.parametrize(
    ("results", "field"),
    [
        ([pb.ToolResult(call_id="nope", error="x")], "tool_results[0].call_id"),
        ([], "tool_results"),  # replaced below by a result for nothing: missing answers
        (
            [pb.ToolResult(call_id="{id}", error="a"), pb.ToolResult(call_id="{id}", error="b")],
            "tool_results[1].call_id",
        ),
        ([pb.ToolResult(call_id="{id}")], "tool_results[0]"),
    ],
)
async def test_bad_tool_results_are_invalid_argument_naming_the_id(
    chatd: Chatd, results: list[pb.ToolResult], field: str
) -> None:
    await session(chatd, function_declarations=[LOOKUP])
    paused = await chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id="t", text="/call lookup_order {}\n/call lookup_order {}")
    )
    first, second = paused.reply.pending_tool_calls
    for r in results:
        r.call_id = r.call_id.replace("{id}", first.id)
    if not results:
        results = [pb.ToolResult(call_id=first.id, error="only one of two")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="t", tool_results=results))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [field]
    if field == "tool_results":
        assert second.id in (err.value.details() or "")
    history = await all_messages(chatd.stub, "t")
    assert len(history) == 2, "a rejected answer changes nothing"


async def test_server_and_caller_tools_mix_in_one_round(chatd: Chatd) -> None:
    """The server tool runs at once; its result waits with the caller's for one response."""
    await session(chatd, tools=["calculate"], function_declarations=[LOOKUP])
    paused = await chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="t",
            text='/call calculate {"expression": "6*7"}\n/call lookup_order {"order": 1}',
        )
    )
    [pending] = paused.reply.pending_tool_calls
    assert pending.name == "lookup_order"
    resumed = await chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="t", tool_results=[pb.ToolResult(call_id=pending.id, error="no such order")]
        )
    )
    assert "calculate returned" in resumed.reply.text
    assert '"error": "no such order"' in resumed.reply.text
    history = await all_messages(chatd.stub, "t")
    responses = [p.function_response for p in history[2].parts]
    assert [r.name for r in responses] == ["calculate", "lookup_order"]
    assert responses[0].response["result"] == 42


async def test_pending_turn_survives_kill_and_restart(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/chatd.db"
    server = await ChatdProcess("--database-url", db).start()
    try:
        async with server.channel() as channel:
            stub, _ = server.stubs(channel)
            await stub.CreateSession(
                pb.CreateSessionRequest(
                    session_id="p", session=session_pb2.Session(function_declarations=[LOOKUP])
                )
            )
            paused = await stub.SendMessage(
                pb.SendMessageRequest(session_id="p", text="/call lookup_order {}")
            )
        server.send_signal(signal.SIGKILL)
        await server.wait()
    finally:
        await server.kill()
    [pending] = paused.reply.pending_tool_calls
    restarted = await ChatdProcess("--database-url", db).start()
    try:
        async with restarted.channel() as channel:
            stub, _ = restarted.stubs(channel)
            got = await stub.GetSession(pb.GetSessionRequest(session_id="p"))
            assert list(got.session.pending_tool_calls) == [pending]
            resumed = await stub.SendMessage(
                pb.SendMessageRequest(
                    session_id="p", tool_results=[pb.ToolResult(call_id=pending.id, error="x")]
                )
            )
            assert resumed.reply.finish_reason == content_pb2.FINISH_REASON_STOP
    finally:
        await restarted.kill()


# ----------------------------------------------------------------------------- on Gemini


@pytest.fixture
async def tool_chatd(start_chatd: StartChatd, fake_gemini: FakeGemini) -> Chatd:
    server: Chatd = await start_chatd(
        provider=fast_gemini(fake_gemini), tools=TEST_TOOLS, max_tool_rounds=3
    )
    return server


def responses_in(request_contents: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The function responses of each user content that carries them."""
    found = []
    for content in request_contents:
        parts = content.get("parts") or []
        responses = [get_field(p, "function_response") for p in parts]
        responses = [r for r in responses if r is not None]
        if responses:
            found.append(responses)
    return found


async def test_two_round_server_tool_turn_on_gemini(
    tool_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """Each round's responses reach Gemini in one user content, ids matching the calls."""
    await session(tool_chatd, tools=["calculate", "get_current_time"])
    fake_gemini.push(Reply(parts=[call_part("calculate", {"expression": "2+3"}, id="c-1")]))
    fake_gemini.push(
        Reply(
            parts=[
                call_part("get_current_time", {"timezone": "UTC"}, id="c-2"),
                call_part("calculate", {"expression": "10/4"}),
            ]
        )
    )
    fake_gemini.push(Reply(text="All done."))
    events = [
        e
        async for e in tool_chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="t", text="work it out")
        )
    ]
    assert events_kinds(events) == [
        "message:user",
        "message:model", "tool_call", "tool_result", "message:user",
        "message:model", "tool_call", "tool_call", "tool_result", "tool_result", "message:user",
        "text_delta", "message:model",
        "reply",
    ]  # fmt: skip
    assert events[-1].reply.text == "All done."

    second, third = fake_gemini.requests[1], fake_gemini.requests[2]
    assert [[get_field(r, "id") for r in rs] for rs in responses_in(second.contents)] == [["c-1"]]
    round_two = responses_in(third.contents)
    assert len(round_two) == 2, "one user content per round"
    ids = [get_field(r, "id") for r in round_two[1]]
    assert ids[0] == "c-2"
    assert ids[1], "a call without an id got one, and its response carries it"
    calls = [get_field(p, "function_call") for p in third.contents[3]["parts"]]
    assert [get_field(c, "id") for c in calls] == ids
    assert get_field(round_two[0][0], "response", "result") == 5
    assert get_field(round_two[1][1], "response", "result") == 2.5
    history = await all_messages(tool_chatd.stub, "t")
    assert len(history) == 6


async def test_parallel_calls_run_concurrently(tool_chatd: Chatd, fake_gemini: FakeGemini) -> None:
    """Two calls in one round (an async tool, and a sync one in a thread) run at the same
    time: each returns only once the other has started, so one after the other they
    would time out instead."""
    tool_fixtures.MEETING.reset()
    await session(tool_chatd, tools=["paired_double", "paired_square"])
    fake_gemini.push(
        Reply(parts=[call_part("paired_double", {"n": 4}), call_part("paired_square", {"n": 4})])
    )
    fake_gemini.push(Reply(text="8 and 16"))
    events = [
        e
        async for e in tool_chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="t", text="go"))
    ]
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert [dict(r.function_response.response) for r in results] == [
        {"result": 8},
        {"result": 16},
    ]


@pytest.mark.parametrize(
    ("call", "error_contains"),
    [
        (call_part("explode", {"reason": "test"}), "exploded: test"),
        (call_part("dawdle", {}), "timed out"),
        (call_part("no_such_tool", {}), "no_such_tool"),
        (call_part("paired_double", {"n": "four"}), "n"),
        (call_part("calculate", {"expression": "2+2"}), "calculate"),  # not enabled here
    ],
)
async def test_tool_failures_reach_the_model_as_errors_and_the_turn_completes(
    tool_chatd: Chatd, fake_gemini: FakeGemini, call: dict[str, object], error_contains: str
) -> None:
    await session(tool_chatd, tools=["explode", "dawdle", "paired_double"])
    fake_gemini.push(Reply(parts=[call]))
    fake_gemini.push(Reply(text="sorry about that"))
    sent = await tool_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="t", text="try"))
    assert sent.reply.finish_reason == content_pb2.FINISH_REASON_STOP
    assert sent.reply.text == "sorry about that"
    [[response]] = responses_in(fake_gemini.requests[-1].contents)
    error = get_field(response, "response", "error")
    assert error_contains in json.dumps(error)
    assert len(await all_messages(tool_chatd.stub, "t")) == 4


async def test_tool_loop_stops_at_the_round_limit(
    tool_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A model that keeps calling tools is stopped after max_tool_rounds (3 here): its last
    calls are answered with an error and it is asked once more with function calling off."""
    await session(tool_chatd, tools=["calculate"])
    fake_gemini.set_default(
        lambda request: (
            Reply(text="I give up.")
            if request.field("tool_config")
            else Reply(parts=[call_part("calculate", {"expression": "1"})])
        )
    )
    sent = await tool_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="t", text="loop"))
    assert sent.reply.finish_reason == content_pb2.FINISH_REASON_MAX_TOOL_ROUNDS
    assert sent.reply.text == "I give up."
    assert len(fake_gemini.requests) == 5, "3 rounds of tools, 4 model calls, 1 last word"
    last = fake_gemini.requests[-1]
    mode = get_field(last.field("tool_config"), "function_calling_config", "mode")
    assert mode == "NONE"
    history = await all_messages(tool_chatd.stub, "t")
    stopped = history[-2]
    assert stopped.role == content_pb2.ROLE_USER
    assert "tool rounds" in stopped.parts[0].function_response.response.fields["error"].string_value
    assert history[-1].role == content_pb2.ROLE_MODEL


async def test_context_window_never_splits_a_call_from_its_response(
    tool_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await session(
        tool_chatd, tools=["calculate"], context_policy=session_pb2.ContextPolicy(max_messages=3)
    )
    fake_gemini.push(Reply(parts=[call_part("calculate", {"expression": "1+1"})]))
    fake_gemini.push(Reply(text="two"))
    await tool_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="t", text="first"))
    fake_gemini.push(Reply(text="ok"))
    await tool_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="t", text="second"))
    sent = fake_gemini.requests[-1].contents
    # The last 3 messages would start at the function response; the window starts later.
    assert [c["role"] for c in sent] == ["user"]
    assert fake_gemini.requests[-1].texts("user") == ["second"]
