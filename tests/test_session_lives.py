"""A record never outlives what it describes: request ids, page tokens, etags and message
ids are bound to one life of one session, through a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from server.sessions.model import FinishReason, Part
from server.sessions.ports import ModelChunk, ModelRequest
from server.store import MemoryStore
from tests.conftest import Chatd, StartChatd
from tests.fakes import LatchStore, ScriptedProvider
from tests.helpers import all_messages, rich_details, violated_fields


async def create(chatd: Chatd, sid: str, request_id: str = "") -> session_pb2.Session:
    response = await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id=sid, request_id=request_id)
    )
    return response.session


async def recreate(chatd: Chatd, sid: str) -> session_pb2.Session:
    await chatd.stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid))
    return await create(chatd, sid)


def send(sid: str, text: str, request_id: str = "") -> pb.SendMessageRequest:
    return pb.SendMessageRequest(session_id=sid, text=text, request_id=request_id)


def gone(error: grpc.aio.AioRpcError) -> bool:
    info = rich_details(error).get("ErrorInfo")
    return (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION
        and info is not None
        and info.reason == "REQUEST_RESULT_GONE"
    )


async def test_a_turn_replayed_after_delete_and_recreate_is_refused_not_another_turn(
    chatd: Chatd,
) -> None:
    await create(chatd, "s")
    first = (await chatd.stub.SendMessage(send("s", "first question", "r1"))).reply
    assert (await chatd.stub.SendMessage(send("s", "first question", "r1"))).reply == first

    await recreate(chatd, "s")
    await chatd.stub.SendMessage(send("s", "other question"))

    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await chatd.stub.SendMessage(send("s", "first question", "r1"))
    assert gone(unary.value)
    assert "deleted and created again" in (unary.value.details() or "")
    stream = chatd.stub.StreamReply(
        pb.StreamReplyRequest(session_id="s", text="first question", request_id="r1")
    )
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in stream:
            pass
    assert gone(streamed.value)
    texts = [m.parts[0].text for m in await all_messages(chatd.stub, "s")]
    assert texts[0] == "other question" and len(texts) == 2


async def test_a_turn_replayed_after_clear_history_is_refused(chatd: Chatd) -> None:
    await create(chatd, "s")
    await chatd.stub.SendMessage(send("s", "question", "r1"))
    await chatd.stub.ClearHistory(pb.ClearHistoryRequest(session_id="s"))
    await chatd.stub.SendMessage(send("s", "after clearing"))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(send("s", "question", "r1"))
    assert gone(err.value)
    assert "cleared" in (err.value.details() or "")


async def test_append_and_create_replays_are_bound_to_their_life(chatd: Chatd) -> None:
    await create(chatd, "s", request_id="c1")
    append = pb.AppendMessagesRequest(
        session_id="s",
        request_id="a1",
        messages=[
            content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="hi")])
        ],
    )
    stored = await chatd.stub.AppendMessages(append)
    assert (await chatd.stub.AppendMessages(append)).messages == stored.messages

    await recreate(chatd, "s")
    with pytest.raises(grpc.aio.AioRpcError) as appended:
        await chatd.stub.AppendMessages(append)
    assert gone(appended.value)
    with pytest.raises(grpc.aio.AioRpcError) as created:
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s", request_id="c1"))
    assert gone(created.value)
    assert await all_messages(chatd.stub, "s") == []


async def test_a_new_life_has_a_new_uid_and_old_etags_and_page_tokens_do_not_apply(
    chatd: Chatd,
) -> None:
    old = await create(chatd, "s")
    for i in range(3):
        await chatd.stub.SendMessage(send("s", f"m{i}"))
    page = await chatd.stub.ListMessages(pb.ListMessagesRequest(session_id="s", page_size=2))
    assert page.next_page_token
    read = (await chatd.stub.GetSession(pb.GetSessionRequest(session_id="s"))).session

    new = await recreate(chatd, "s")
    assert len(new.uid) == 32 and new.uid != old.uid
    for i in range(3):
        await chatd.stub.SendMessage(send("s", f"new{i}"))
    # The new life is at the version the old etag names: the etag must still not match.
    assert (await chatd.stub.GetSession(pb.GetSessionRequest(session_id="s"))).session.etag
    with pytest.raises(grpc.aio.AioRpcError) as token:
        await chatd.stub.ListMessages(
            pb.ListMessagesRequest(session_id="s", page_size=2, page_token=page.next_page_token)
        )
    assert token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as etag:
        await chatd.stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=session_pb2.Session(session_id="s", display_name="stale"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                etag=read.etag,
            )
        )
    assert etag.value.code() == grpc.StatusCode.ABORTED
    after = (await chatd.stub.GetSession(pb.GetSessionRequest(session_id="s"))).session
    assert after.display_name == "" and after.uid == new.uid


async def test_stream_events_announce_no_message_ids_only_the_stored_reply_does(
    chatd: Chatd,
) -> None:
    await create(chatd, "s")
    events = [
        e async for e in chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="s", text="hi"))
    ]
    announced = [e.message for e in events if e.HasField("message")]
    assert announced and all(m.message_id == "" for m in announced)
    reply = events[-1].reply
    stored = await all_messages(chatd.stub, "s")
    assert [m.message_id for m in reply.messages] == [m.message_id for m in stored]
    assert [m.parts for m in announced] == [m.parts for m in stored]


async def test_an_unstored_turn_leaves_no_id_that_a_later_turn_reuses(
    start_chatd: StartChatd,
) -> None:
    """A turn that fails after its user message was streamed stores nothing; the ids the
    next turn gets were never shown for other content."""
    provider = ScriptedProvider(fail_after=1, error=RuntimeError("upstream broke"))
    chatd = await start_chatd(provider=provider)
    await create(chatd, "s")
    call = chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="s", text="lost"))
    first = await call.read()
    assert first.HasField("message") and first.message.message_id == ""
    with pytest.raises(grpc.aio.AioRpcError):
        await _read_all(call)
    provider.fail_after = None
    reply = (await chatd.stub.SendMessage(send("s", "kept"))).reply
    assert [m.parts[0].text for m in reply.messages] == ["kept", "Hello!"]


async def test_cancel_reply_during_the_commit_loses_and_the_stream_gets_the_turn(
    start_chatd: StartChatd,
) -> None:
    """Deterministic: the store holds the turn's commit open while CancelReply lands."""
    store = LatchStore(MemoryStore())
    chatd = await start_chatd(store=store)
    await create(chatd, "s")
    store.holding = True
    call = chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="s", text="hello"))
    reading = asyncio.ensure_future(_read_all(call))
    await store.entered.wait()

    cancelled = await chatd.stub.CancelReply(pb.CancelReplyRequest(session_id="s"))
    assert cancelled.cancelled is False
    store.release.set()
    events = await reading
    assert events[-1].HasField("reply")
    assert len(await all_messages(chatd.stub, "s")) == 2


async def test_cancel_reply_before_the_commit_stops_the_turn_with_cancelled(
    start_chatd: StartChatd,
) -> None:
    provider = ScriptedProvider(delay=3600)
    chatd = await start_chatd(provider=provider, store=MemoryStore())
    await create(chatd, "s")
    call = chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="s", text="hello"))
    reading = asyncio.ensure_future(_read_all(call))
    await provider.started.wait()

    assert (await chatd.stub.CancelReply(pb.CancelReplyRequest(session_id="s"))).cancelled
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reading
    assert err.value.code() == grpc.StatusCode.CANCELLED
    assert await all_messages(chatd.stub, "s") == []


async def _read_all(call: object) -> list[pb.StreamReplyResponse]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        events.append(event)
    return events


class ListMessagesLatch:
    """A SessionStore whose next list_messages, once `holding` is set, reports itself in
    `entered` and waits for `release`."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.holding = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        method = getattr(self.inner, name)
        if name != "list_messages":
            return method

        async def held(*args: object) -> object:
            if self.holding:
                self.holding = False
                self.entered.set()
                await self.release.wait()
            return await method(*args)

        return held


async def _with_caller_tool(chatd: Chatd, sid: str) -> None:
    session = session_pb2.Session(
        function_declarations=[session_pb2.FunctionDeclaration(name="lookup")]
    )
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid, session=session))
    await chatd.stub.SendMessage(send(sid, "hi"))


async def test_a_fork_never_copies_half_of_a_turn_that_paused_while_it_read(
    start_chatd: StartChatd,
) -> None:
    """The fork reads the session, then (held here) its history; a turn that pauses for
    tool results in between must not leave its open call in the fork."""
    store = ListMessagesLatch(MemoryStore())
    chatd = await start_chatd(store=store)
    await _with_caller_tool(chatd, "s")
    store.holding = True
    fork = asyncio.ensure_future(
        chatd.stub.ForkSession(pb.ForkSessionRequest(session_id="s", new_session_id="f"))
    )
    await store.entered.wait()
    pausing = asyncio.ensure_future(chatd.stub.SendMessage(send("s", '/call lookup {"q": 1}')))
    await asyncio.wait([pausing], timeout=0.5)
    store.release.set()
    await fork
    assert (await pausing).reply.pending_tool_calls
    forked = await all_messages(chatd.stub, "f")
    assert [m.parts[0].text for m in forked][:1] == ["hi"]
    assert len(forked) == 2
    assert not any(p.HasField("function_call") for m in forked for p in m.parts)


async def test_a_fork_refuses_a_source_another_replica_changed_while_it_read(
    start_chatd: StartChatd,
) -> None:
    """Two servers on one store: a pause committed by the other one between the fork's
    reads is ABORTED, never a fork holding half a turn."""
    store = ListMessagesLatch(MemoryStore())
    forking = await start_chatd(store=store)
    other = await start_chatd(store=store.inner)
    await _with_caller_tool(forking, "s")
    store.holding = True
    fork = asyncio.ensure_future(
        forking.stub.ForkSession(pb.ForkSessionRequest(session_id="s", new_session_id="f"))
    )
    await store.entered.wait()
    await other.stub.SendMessage(send("s", '/call lookup {"q": 1}'))
    store.release.set()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fork
    assert err.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await forking.stub.GetSession(pb.GetSessionRequest(session_id="f"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_delete_that_waited_never_deletes_the_next_life(start_chatd: StartChatd) -> None:
    """Two servers on one store: a delete read life 1 and waits (held here) while the
    other server deletes the session and creates it again; life 2 survives it."""
    store = LatchStore(MemoryStore())
    deleting = await start_chatd(store=store)
    other = await start_chatd(store=store.inner)
    await create(deleting, "s")
    store.holding = True
    delete = asyncio.ensure_future(
        deleting.stub.DeleteSession(pb.DeleteSessionRequest(session_id="s"))
    )
    await store.entered.wait()
    reborn = await recreate(other, "s")
    store.release.set()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delete
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    got = await other.stub.GetSession(pb.GetSessionRequest(session_id="s"))
    assert got.session.uid == reborn.uid


class GatedProvider(ScriptedProvider):
    """A ScriptedProvider whose replies start only once `gate` is set."""

    gate: asyncio.Event

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.started.set()
        await self.gate.wait()
        async for chunk in super().stream(request):
            yield chunk


async def test_a_session_that_expires_while_its_turn_runs_stays_gone(
    start_chatd: StartChatd,
) -> None:
    """Reads say NOT_FOUND once the ttl passed; the turn's commit must not revive it
    (outside the tenant's quota, and only if the sweeper happened not to run yet)."""
    provider = GatedProvider()
    provider.gate = asyncio.Event()
    chatd = await start_chatd(provider=provider, store=MemoryStore(), sweep_interval=3600)
    ttl = session_pb2.Session(ttl=duration_pb2.Duration(seconds=1))
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s", session=ttl))
    turn = asyncio.ensure_future(chatd.stub.SendMessage(send("s", "hello")))
    await provider.started.wait()
    for _ in range(100):
        try:
            await chatd.stub.GetSession(pb.GetSessionRequest(session_id="s"))
        except grpc.aio.AioRpcError as exc:
            expired = exc.code()
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the session did not expire")
    assert expired == grpc.StatusCode.NOT_FOUND
    provider.gate.set()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await turn
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as after:
        await chatd.stub.GetSession(pb.GetSessionRequest(session_id="s"))
    assert after.value.code() == grpc.StatusCode.NOT_FOUND


class CreateLatch:
    """A SessionStore whose create_session reports itself in `entered` and waits for
    `release`."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        method = getattr(self.inner, name)
        if name != "create_session":
            return method

        async def held(*args: object, **kwargs: object) -> object:
            self.entered.set()
            await self.release.wait()
            return await method(*args, **kwargs)

        return held


async def test_a_request_id_raced_on_two_servers_never_returns_another_requests_session(
    start_chatd: StartChatd,
) -> None:
    """Both servers find no record of "r" and create; the one that loses must not
    answer its create of "y" with the session "x" the other request made."""
    store = CreateLatch(MemoryStore())
    late = await start_chatd(store=store)
    first = await start_chatd(store=store.inner)
    creating = asyncio.ensure_future(create(late, "y", request_id="r"))
    await store.entered.wait()
    assert (await create(first, "x", request_id="r")).session_id == "x"
    store.release.set()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await creating
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_details(err.value)["ErrorInfo"].reason == "REQUEST_ID_REUSED"
    with pytest.raises(grpc.aio.AioRpcError):
        await first.stub.GetSession(pb.GetSessionRequest(session_id="y"))


async def test_the_same_append_raced_on_two_servers_returns_the_first_result(
    start_chatd: StartChatd,
) -> None:
    store = LatchStore(MemoryStore())
    late = await start_chatd(store=store)
    first = await start_chatd(store=store.inner)
    await create(first, "s")
    request = pb.AppendMessagesRequest(
        session_id="s",
        request_id="r",
        messages=[
            content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="q")]),
            content_pb2.Message(role=content_pb2.ROLE_MODEL, parts=[content_pb2.Part(text="a")]),
        ],
    )
    store.holding = True
    appending = asyncio.ensure_future(late.stub.AppendMessages(request))
    await store.entered.wait()
    won = await first.stub.AppendMessages(request)
    store.release.set()
    replayed = await appending
    assert list(replayed.messages) == list(won.messages)
    assert len(await all_messages(first.stub, "s")) == 2


class BlockedOnce(ScriptedProvider):
    """Blocks the first prompt it is sent (nothing to store), answers the next ones."""

    calls: int = 0

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.calls += 1
        if self.calls == 1:
            yield ModelChunk(block_reason="SAFETY", finish_reason=FinishReason.SAFETY)
            return
        yield ModelChunk(parts=(Part(text="an answer"),), finish_reason=FinishReason.STOP)


async def test_a_retried_turn_that_stored_nothing_gets_its_first_answer(
    start_chatd: StartChatd,
) -> None:
    """A blocked prompt stores no messages, but its request id still names its answer:
    a retry must not call the model again and come back with another one."""
    provider = BlockedOnce()
    chatd = await start_chatd(provider=provider)
    await create(chatd, "s")
    first = (await chatd.stub.SendMessage(send("s", "hello", request_id="r"))).reply
    again = (await chatd.stub.SendMessage(send("s", "hello", request_id="r"))).reply
    streamed = await _read_all(
        chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="s", text="hello", request_id="r"))
    )
    assert provider.calls == 1
    assert first.finish_reason == content_pb2.FINISH_REASON_PROMPT_BLOCKED
    assert again == first
    assert streamed[-1].reply == first
    assert await all_messages(chatd.stub, "s") == []


async def test_an_expire_time_in_the_past_is_invalid_argument(chatd: Chatd) -> None:
    past = session_pb2.Session(expire_time=timestamp_pb2.Timestamp(seconds=1))
    with pytest.raises(grpc.aio.AioRpcError) as created:
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s", session=past))
    assert created.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(created.value) == ["session.expire_time"]
    await create(chatd, "s")
    with pytest.raises(grpc.aio.AioRpcError) as updated:
        await chatd.stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=session_pb2.Session(session_id="s", expire_time=past.expire_time),
                update_mask=field_mask_pb2.FieldMask(paths=["expire_time"]),
            )
        )
    assert violated_fields(updated.value) == ["session.expire_time"]
    assert (await chatd.stub.GetSession(pb.GetSessionRequest(session_id="s"))).session
