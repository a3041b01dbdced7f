"""The live session RPCs through a real server: lifecycle, turns, history, and bad input."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from tests.conftest import Chatd
from tests.helpers import all_messages, outcome, rich_details, violated_fields


async def create(chatd: Chatd, **session: object) -> session_pb2.Session:
    response = await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session=session_pb2.Session(**session))  # type: ignore[arg-type]
    )
    return response.session


async def test_create_send_stream_and_list_history(chatd: Chatd) -> None:
    """The walkthrough a user does first: every step works and history holds both turns."""
    session = await create(chatd, display_name="first", labels={"env": "test"})
    assert session.session_id
    assert session.state == session_pb2.Session.STATE_ACTIVE
    assert session.create_time.seconds > 0

    sent = await chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id=session.session_id, text="hello")
    )
    assert '"hello"' in sent.reply.text
    assert "not a language model" in sent.reply.text
    assert sent.reply.finish_reason == content_pb2.FINISH_REASON_STOP
    assert [m.role for m in sent.reply.messages] == [content_pb2.ROLE_USER, content_pb2.ROLE_MODEL]
    assert sent.reply.usage.total_token_count > 0

    events = [
        e
        async for e in chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id=session.session_id, text="and again")
        )
    ]
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "message" and kinds[-1] == "reply"
    assert kinds.count("text_delta") >= 3, "the echo reply streams in several deltas"
    deltas = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert deltas == events[-1].reply.text

    history = await all_messages(chatd.stub, session.session_id)
    assert [m.parts[0].text for m in history[::2]] == ["hello", "and again"]
    assert history[3].parts[0].text == events[-1].reply.text
    assert [m.message_id for m in history] == ["0", "1", "2", "3"]

    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id=session.session_id))
    assert got.session.message_count == 4
    assert got.session.display_name == "first"
    assert got.session.usage.total_token_count >= sent.reply.usage.total_token_count


async def test_turns_see_earlier_history(chatd: Chatd) -> None:
    """Context is retained across calls: the echo provider reports the turns it was sent."""
    session = await create(chatd)
    for turn in range(1, 4):
        reply = await chatd.stub.SendMessage(
            pb.SendMessageRequest(session_id=session.session_id, text=f"message {turn}")
        )
        assert f"turn {turn} of this conversation" in reply.reply.text
        assert f"{2 * (turn - 1)} earlier messages in context" in reply.reply.text


async def test_message_parts_round_trip(chatd: Chatd) -> None:
    """A message sent as parts (text plus bytes) comes back from history byte for byte."""
    session = await create(chatd)
    parts = [
        content_pb2.Part(text="look at this"),
        content_pb2.Part(
            inline_data=content_pb2.Blob(mime_type="image/png", data=bytes(range(256)))
        ),
    ]
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id=session.session_id, parts=parts))
    history = await all_messages(chatd.stub, session.session_id)
    assert list(history[0].parts) == parts
    assert "[image/png, 256 bytes]" in history[1].parts[0].text


async def test_caller_chosen_session_id_and_duplicates(chatd: Chatd) -> None:
    """A caller may pick the id; reusing it is ALREADY_EXISTS and leaves the first intact."""
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id="support-42", session=session_pb2.Session(model="m1"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.CreateSession(
            pb.CreateSessionRequest(session_id="support-42", session=session_pb2.Session(model="x"))
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="support-42"))
    assert got.session.model == "m1"


async def test_list_sessions_pages_through_everything(chatd: Chatd) -> None:
    """page_size/page_token visit each session exactly once, newest first."""
    created = [(await create(chatd, labels={"n": str(i)})).session_id for i in range(7)]
    seen: list[str] = []
    token = ""
    while True:
        page = await chatd.stub.ListSessions(pb.ListSessionsRequest(page_size=3, page_token=token))
        assert len(page.sessions) <= 3
        seen.extend(s.session_id for s in page.sessions)
        token = page.next_page_token
        if not token:
            break
    assert seen == created[::-1]
    filtered = await chatd.stub.ListSessions(pb.ListSessionsRequest(filter='labels.n = "4"'))
    assert [s.session_id for s in filtered.sessions] == [created[4]]


async def test_delete_session_removes_it_and_its_history(chatd: Chatd) -> None:
    session = await create(chatd)
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id=session.session_id, text="x"))
    await chatd.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session.session_id))
    for call in (
        chatd.stub.GetSession(pb.GetSessionRequest(session_id=session.session_id)),
        chatd.stub.ListMessages(pb.ListMessagesRequest(session_id=session.session_id)),
        chatd.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session.session_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_session_is_not_found_with_error_info(chatd: Chatd) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="nope", text="hi"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    info = rich_details(err.value)["ErrorInfo"]
    assert info.domain == "chatd" and info.reason
    events = chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="nope", text="hi"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in events:
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.SendMessageRequest(session_id="s1"), "text"),
        (pb.SendMessageRequest(session_id="s1", text="   "), "text"),
        (pb.SendMessageRequest(session_id="", text="hi"), "session_id"),
        (pb.SendMessageRequest(session_id="../etc/passwd", text="hi"), "session_id"),
        (pb.SendMessageRequest(session_id="s1", parts=[content_pb2.Part()]), "parts[0]"),
        (
            pb.SendMessageRequest(session_id="s1", text="a", parts=[content_pb2.Part(text="b")]),
            "parts",
        ),
        (
            pb.SendMessageRequest(
                session_id="s1",
                parts=[content_pb2.Part(function_call=content_pb2.FunctionCall(name="f"))],
            ),
            "parts[0]",
        ),
        (
            pb.SendMessageRequest(
                session_id="s1",
                text="hi",
                generation_config=session_pb2.GenerationConfig(temperature=7),
            ),
            "generation_config.temperature",
        ),
    ],
)
async def test_bad_turn_input_is_invalid_argument_naming_the_field(
    chatd: Chatd, request_: pb.SendMessageRequest, field: str
) -> None:
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [field]
    assert field in (err.value.details() or "")
    history = await all_messages(chatd.stub, "s1")
    assert history == [], "a rejected turn stores nothing"


@pytest.mark.parametrize(
    ("call", "request_", "field", "reason"),
    [
        ("ListSessions", pb.ListSessionsRequest(page_size=-1), "page_size", "PAGE_SIZE_NEGATIVE"),
        (
            "ListSessions",
            pb.ListSessionsRequest(page_token="garbage!"),
            "page_token",
            "PAGE_TOKEN_INVALID",
        ),
        ("ListSessions", pb.ListSessionsRequest(order_by="name"), "order_by", "ORDER_BY_INVALID"),
        (
            "ListSessions",
            pb.ListSessionsRequest(filter="labels.a == 1"),
            "filter",
            "FILTER_INVALID",
        ),
        (
            "ListMessages",
            pb.ListMessagesRequest(session_id="s1", page_size=-5),
            "page_size",
            "PAGE_SIZE_NEGATIVE",
        ),
        (
            "ListMessages",
            pb.ListMessagesRequest(session_id="s1", page_token="x"),
            "page_token",
            "PAGE_TOKEN_INVALID",
        ),
        ("GetSession", pb.GetSessionRequest(session_id=""), "session_id", "FIELD_REQUIRED"),
        ("GetSession", pb.GetSessionRequest(session_id="a" * 200), "session_id", "ID_MALFORMED"),
        (
            "DeleteSession",
            pb.DeleteSessionRequest(session_id="bad id"),
            "session_id",
            "ID_MALFORMED",
        ),
        ("CreateSession", pb.CreateSessionRequest(session_id="-x"), "session_id", "ID_MALFORMED"),
        (
            "CreateSession",
            pb.CreateSessionRequest(
                session=session_pb2.Session(
                    context_policy=session_pb2.ContextPolicy(max_messages=-1)
                )
            ),
            "session.context_policy.max_messages",
            "CONTEXT_POLICY_INVALID",
        ),
        (
            "CreateSession",
            pb.CreateSessionRequest(session=session_pb2.Session(tools=["no_such_tool"])),
            "session.tools[0]",
            "TOOL_UNKNOWN",
        ),
        (
            "CreateSession",
            pb.CreateSessionRequest(
                session=session_pb2.Session(
                    generation_config=session_pb2.GenerationConfig(
                        response_json_schema=struct_pb2.Struct(
                            fields={"maximum": struct_pb2.Value(number_value=float("inf"))}
                        )
                    )
                )
            ),
            "session.generation_config.response_json_schema",
            "JSON_INVALID",
        ),
        (
            "SendMessage",
            pb.SendMessageRequest(
                session_id="s1",
                tool_results=[
                    pb.ToolResult(call_id="c", result=struct_pb2.Value(number_value=float("nan")))
                ],
            ),
            "tool_results[0].result",
            "JSON_INVALID",
        ),
        (
            "CreateSession",
            pb.CreateSessionRequest(
                session=session_pb2.Session(generation_config=session_pb2.GenerationConfig(top_p=2))
            ),
            "session.generation_config.top_p",
            "VALUE_OUT_OF_RANGE",
        ),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    chatd: Chatd, call: str, request_: object, field: str, reason: str
) -> None:
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(chatd.stub, call)(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [field]
    assert rich_details(err.value)["ErrorInfo"].reason == reason


async def test_page_token_of_one_session_is_refused_for_another(chatd: Chatd) -> None:
    """A token only continues the listing it came from."""
    for sid in ("a", "b"):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
        for _ in range(2):
            await chatd.stub.SendMessage(pb.SendMessageRequest(session_id=sid, text="x"))
    page = await chatd.stub.ListMessages(pb.ListMessagesRequest(session_id="a", page_size=1))
    assert page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.ListMessages(
            pb.ListMessagesRequest(session_id="b", page_token=page.next_page_token)
        )
    assert violated_fields(err.value) == ["page_token"]
    assert rich_details(err.value)["ErrorInfo"].reason == "PAGE_TOKEN_MISMATCH"


async def test_tool_results_without_pending_calls_fail_precondition(chatd: Chatd) -> None:
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(
            pb.SendMessageRequest(
                session_id="s1", tool_results=[pb.ToolResult(call_id="c1", error="x")]
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_details(err.value)["ErrorInfo"].reason == "NO_PENDING_TOOL_CALLS"


async def test_every_rpc_of_the_contract_is_live(chatd: Chatd) -> None:
    """No RPC of chatd.v1.ChatService answers UNIMPLEMENTED (empty requests may be refused)."""
    service = pb.DESCRIPTOR.services_by_name["ChatService"]
    codes = {}
    for method in service.methods:
        request = getattr(pb, method.input_type.name)()
        try:
            sent = iter([request]) if method.client_streaming else request
            await outcome(getattr(chatd.stub, method.name)(sent))
            codes[method.name] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            codes[method.name] = err.code()
    assert len(codes) == 22
    bad = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    assert {name: code for name, code in codes.items() if code in bad} == {}
