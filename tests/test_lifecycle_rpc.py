"""Whole-session RPCs through a real server: update, fork, clear, append, export/import, cancel."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2
from tests.conftest import Chatd, StartChatd
from tests.fakes import ScriptedProvider
from tests.helpers import all_messages, outcome, violated_fields


async def create(chatd: Chatd, sid: str, **settings: object) -> session_pb2.Session:
    response = await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id=sid, session=session_pb2.Session(**settings))  # type: ignore[arg-type]
    )
    return response.session


async def send(chatd: Chatd, sid: str, text: str) -> pb.Reply:
    return (await chatd.stub.SendMessage(pb.SendMessageRequest(session_id=sid, text=text))).reply


def user(text: str) -> content_pb2.Message:
    return content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text=text)])


def model(text: str) -> content_pb2.Message:
    return content_pb2.Message(role=content_pb2.ROLE_MODEL, parts=[content_pb2.Part(text=text)])


async def test_update_touches_only_the_masked_fields(chatd: Chatd) -> None:
    before = await create(
        chatd,
        "u",
        display_name="old",
        system_instruction="keep me",
        labels={"a": "1"},
        generation_config=session_pb2.GenerationConfig(temperature=0.5, top_k=3),
    )
    updated = await chatd.stub.UpdateSession(
        pb.UpdateSessionRequest(
            session=session_pb2.Session(
                session_id="u",
                display_name="new",
                system_instruction="ignored: not in the mask",
                generation_config=session_pb2.GenerationConfig(temperature=0.9),
            ),
            update_mask=field_mask_pb2.FieldMask(
                paths=["display_name", "generation_config.temperature"]
            ),
        )
    )
    s = updated.session
    assert s.display_name == "new"
    assert s.system_instruction == "keep me"
    assert dict(s.labels) == {"a": "1"}
    assert s.generation_config.temperature == pytest.approx(0.9)
    assert s.generation_config.top_k == 3
    assert s.etag != before.etag
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="u"))
    assert got.session == s


async def test_update_without_a_mask_writes_the_fields_it_sets(chatd: Chatd) -> None:
    await create(chatd, "u", display_name="old", labels={"a": "1"})
    updated = await chatd.stub.UpdateSession(
        pb.UpdateSessionRequest(session=session_pb2.Session(session_id="u", labels={"b": "2"}))
    )
    assert dict(updated.session.labels) == {"b": "2"}
    assert updated.session.display_name == "old"


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        (["nonsense"], "update_mask"),
        (["message_count"], "update_mask"),
        (["session_id"], "update_mask"),
        (["generation_config.nope"], "update_mask"),
        (["*", "labels"], "update_mask"),
    ],
)
async def test_update_refuses_unknown_or_output_only_paths(
    chatd: Chatd, paths: list[str], field: str
) -> None:
    await create(chatd, "u")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=session_pb2.Session(session_id="u"),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [field]


async def test_update_with_a_stale_etag_is_aborted(chatd: Chatd) -> None:
    created = await create(chatd, "u")
    await send(chatd, "u", "changes the etag")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=session_pb2.Session(session_id="u", display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                etag=created.etag,
            )
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="u"))
    assert got.session.display_name == ""


async def test_fork_copies_history_up_to_a_message_and_leaves_the_source(chatd: Chatd) -> None:
    await create(chatd, "src", labels={"k": "v"})
    for text in ("one", "two", "three"):
        await send(chatd, "src", text)
    source_before = await all_messages(chatd.stub, "src")
    forked = await chatd.stub.ForkSession(
        pb.ForkSessionRequest(session_id="src", message_id="3", new_session_id="fork")
    )
    assert forked.session.session_id == "fork"
    assert forked.session.message_count == 4
    assert dict(forked.session.labels) == {"k": "v"}
    fork_history = await all_messages(chatd.stub, "fork")
    assert fork_history == source_before[:4]
    reply = await send(chatd, "fork", "branch")
    assert "turn 3 of this conversation" in reply.text
    assert await all_messages(chatd.stub, "src") == source_before

    whole = await chatd.stub.ForkSession(pb.ForkSessionRequest(session_id="src"))
    assert whole.session.message_count == 6
    assert whole.session.session_id not in ("src", "fork")


@pytest.mark.parametrize(
    ("message_id", "field"), [("2", "message_id"), ("99", "message_id"), ("x", "message_id")]
)
async def test_fork_refuses_a_cut_inside_a_turn_or_a_missing_message(
    chatd: Chatd, message_id: str, field: str
) -> None:
    await create(chatd, "src")
    await send(chatd, "src", "one")
    await send(chatd, "src", "two")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.ForkSession(pb.ForkSessionRequest(session_id="src", message_id=message_id))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [field]


@pytest.mark.parametrize("message_id", ["2", "3"])
async def test_fork_refuses_a_cut_in_the_turn_waiting_for_tool_results(
    chatd: Chatd, message_id: str
) -> None:
    """Not a fork that silently ends before the message asked for."""
    declaration = session_pb2.FunctionDeclaration(name="f")
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="src", session=session_pb2.Session(function_declarations=[declaration])
        )
    )
    await send(chatd, "src", "one")
    assert (await send(chatd, "src", "/call f {}")).pending_tool_calls
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.ForkSession(pb.ForkSessionRequest(session_id="src", message_id=message_id))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["message_id"]
    forked = await chatd.stub.ForkSession(pb.ForkSessionRequest(session_id="src", message_id="1"))
    assert [m.message_id for m in await all_messages(chatd.stub, forked.session.session_id)] == [
        "0",
        "1",
    ]


async def test_clear_history_keeps_settings(chatd: Chatd) -> None:
    await create(chatd, "c", system_instruction="stay", labels={"x": "y"})
    await send(chatd, "c", "one")
    cleared = await chatd.stub.ClearHistory(pb.ClearHistoryRequest(session_id="c"))
    assert cleared.session.message_count == 0
    assert cleared.session.system_instruction == "stay"
    assert await all_messages(chatd.stub, "c") == []
    reply = await send(chatd, "c", "again")
    assert "turn 1 of this conversation" in reply.text
    history = await all_messages(chatd.stub, "c")
    assert [m.message_id for m in history] == ["2", "3"], "message ids are never reused"


async def test_append_messages_adds_history_the_model_then_sees(chatd: Chatd) -> None:
    await create(chatd, "a")
    appended = await chatd.stub.AppendMessages(
        pb.AppendMessagesRequest(
            session_id="a", messages=[user("imported question"), model("imported answer")]
        )
    )
    assert [m.message_id for m in appended.messages] == ["0", "1"]
    assert appended.session.message_count == 2
    reply = await send(chatd, "a", "next")
    assert "turn 2 of this conversation" in reply.text


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages"),
        ([model("model first")], "messages[0]"),
        (
            [
                user("q"),
                model("a"),
                content_pb2.Message(
                    role=content_pb2.ROLE_MODEL,
                    parts=[
                        content_pb2.Part(
                            function_response=content_pb2.FunctionResponse(id="c", name="f")
                        )
                    ],
                ),
            ],
            "messages[2]",
        ),
        ([content_pb2.Message(role=content_pb2.ROLE_USER)], "messages[0].parts"),
        ([content_pb2.Message(parts=[content_pb2.Part(text="x")])], "messages[0].role"),
        (
            [
                user("q"),
                content_pb2.Message(
                    role=content_pb2.ROLE_MODEL,
                    parts=[
                        content_pb2.Part(function_call=content_pb2.FunctionCall(id="c", name="f"))
                    ],
                ),
            ],
            "messages",
        ),
    ],
)
async def test_append_refuses_history_gemini_would_reject(
    chatd: Chatd, messages: list[content_pb2.Message], field: str
) -> None:
    await create(chatd, "a")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.AppendMessages(pb.AppendMessagesRequest(session_id="a", messages=messages))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [field]
    assert await all_messages(chatd.stub, "a") == []


async def test_export_then_import_elsewhere_is_lossless(start_chatd: StartChatd) -> None:
    first, second = await start_chatd(), await start_chatd()
    await create(first, "e", system_instruction="sys", labels={"l": "1"})
    await send(first, "e", "one")
    await send(first, "e", "two")
    exported = await first.stub.ExportSession(pb.ExportSessionRequest(session_id="e"))
    document = exported.document
    assert document.format_version == 1
    assert len(document.messages) == 4
    imported = await second.stub.ImportSession(pb.ImportSessionRequest(document=document))
    assert imported.session.session_id == "e"
    assert await all_messages(second.stub, "e") == await all_messages(first.stub, "e")
    again = await second.stub.ExportSession(pb.ExportSessionRequest(session_id="e"))
    assert list(again.document.messages) == list(document.messages)
    reply_a, reply_b = await send(first, "e", "three"), await send(second, "e", "three")
    assert reply_a.text == reply_b.text


async def test_import_refuses_an_unknown_format(chatd: Chatd) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.ImportSession(
            pb.ImportSessionRequest(document=session_pb2.SessionDocument(format_version=7))
        )
    assert violated_fields(err.value) == ["document.format_version"]


async def test_cancel_reply_from_another_connection_stops_the_turn(
    start_chatd: StartChatd,
) -> None:
    provider = ScriptedProvider(deltas=[f"w{i} " for i in range(200)], delay=0.02)
    chatd = await start_chatd(provider=provider)
    await create(chatd, "k")
    call = chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="k", text="long"))
    running = asyncio.ensure_future(outcome(call))
    await provider.started.wait()
    other = grpc.aio.insecure_channel(chatd.address)
    try:
        stub = chat_service_pb2_grpc.ChatServiceStub(other)
        cancelled = await stub.CancelReply(pb.CancelReplyRequest(session_id="k"))
        assert cancelled.cancelled
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await running
        assert err.value.code() == grpc.StatusCode.CANCELLED
        assert await all_messages(chatd.stub, "k") == []
        idle = await stub.CancelReply(pb.CancelReplyRequest(session_id="k"))
        assert not idle.cancelled
    finally:
        await other.close()


async def test_list_sessions_by_update_time_and_stable_tokens(chatd: Chatd) -> None:
    for i in range(6):
        await create(chatd, f"s{i}")
    await send(chatd, "s2", "touch")
    page = await chatd.stub.ListSessions(pb.ListSessionsRequest(order_by="update_time desc"))
    assert page.sessions[0].session_id == "s2"
    first = await chatd.stub.ListSessions(
        pb.ListSessionsRequest(page_size=3, order_by="create_time")
    )
    await create(chatd, "late")  # a concurrent insert between pages
    rest = await chatd.stub.ListSessions(
        pb.ListSessionsRequest(
            page_size=10, order_by="create_time", page_token=first.next_page_token
        )
    )
    ids = [s.session_id for s in [*first.sessions, *rest.sessions]]
    assert ids == ["s0", "s1", "s2", "s3", "s4", "s5", "late"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.ListSessions(
            pb.ListSessionsRequest(order_by="update_time", page_token=first.next_page_token)
        )
    assert violated_fields(err.value) == ["page_token"]


async def read_all(
    call: grpc.aio.UnaryStreamCall[object, pb.StreamReplyResponse],
) -> list[pb.StreamReplyResponse]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        assert isinstance(event, pb.StreamReplyResponse)
        events.append(event)
    return events
