"""Replies as resources, through a real server: ids, background turns, resume, GetReply,
ListReplies, CancelReply by reply id, and what a stopping replica leaves behind."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2
from server.sessions.model import DEFAULT_TENANT
from server.sessions.paging import encode_token
from server.sessions.ports import ReplyState, ReplyWrite
from server.store import SqliteStore
from tests.conftest import Chatd, StartChatd
from tests.fakes import GatedProvider
from tests.helpers import all_messages, read_event, rich_details


def reason_of(error: grpc.aio.AioRpcError) -> str:
    info = rich_details(error).get("ErrorInfo")
    return str(info.reason) if info is not None else ""


async def read_all(call: Any) -> list[pb.StreamReplyResponse]:
    """The rest of a stream (read with read(), so a test may have read some already)."""
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


@pytest.fixture
def provider() -> GatedProvider:
    return GatedProvider()


@pytest.fixture
async def server(start_chatd: StartChatd, provider: GatedProvider) -> Chatd:
    chatd: Chatd = await start_chatd(provider=provider)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
    return chatd


async def test_a_dropped_background_stream_completes_and_resumes_with_exactly_the_missing_events(
    server: Chatd, provider: GatedProvider
) -> None:
    call = server.stub.StreamReply(
        pb.StreamReplyRequest(session_id="s", text="hi", background=True)
    )
    first = await read_event(call)
    assert first.sequence_number == 1 and first.HasField("message")
    reply_id = first.reply_id
    assert reply_id
    provider.release()
    second = await read_event(call)
    assert second.sequence_number == 2 and second.text_delta.text == "one "
    call.cancel()  # the client goes away mid-reply

    provider.release(3)
    rest = await read_all(
        server.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id, starting_after=2))
    )
    assert [e.sequence_number for e in rest] == list(range(3, 3 + len(rest)))
    assert rest[0].reply_id == reply_id
    assert [e.text_delta.text for e in rest if e.HasField("text_delta")] == [
        "two ",
        "three ",
        "four",
    ]
    assert rest[-1].reply.text == "one two three four"
    assert rest[-1].reply.reply_id == reply_id
    assert not provider.cancelled.is_set() and provider.calls == 1

    got = await server.stub.GetReply(pb.GetReplyRequest(session_id="s", reply_id=reply_id))
    assert got.reply.state == pb.REPLY_STATE_COMPLETED
    assert got.reply.background and got.reply.last_sequence_number == rest[-1].sequence_number
    assert got.reply.reply.text == "one two three four"
    assert [m.role for m in await all_messages(server.stub, "s")] == [
        content_pb2.ROLE_USER,
        content_pb2.ROLE_MODEL,
    ]

    # A finished reply replays whole, numbered as it was first sent.
    whole = await read_all(server.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id)))
    assert whole[1] == second
    for a, b in zip(whole[2:], rest, strict=True):
        c = pb.StreamReplyResponse()
        c.CopyFrom(b)
        c.reply_id = ""
        assert a == c
    assert [e.sequence_number for e in got.events] == [e.sequence_number for e in whole]


async def test_a_disconnect_without_background_cancels_the_turn_at_once(
    server: Chatd, provider: GatedProvider
) -> None:
    call = server.stub.StreamReply(pb.StreamReplyRequest(session_id="s", text="hi"))
    reply_id = (await read_event(call)).reply_id
    await provider.started.wait()
    call.cancel()
    await provider.cancelled.wait()

    follow = server.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id, starting_after=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(follow)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert reason_of(caught.value) == "CALLER_DISCONNECTED"
    got = await server.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id))
    assert got.reply.state == pb.REPLY_STATE_CANCELLED
    assert got.reply.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert await all_messages(server.stub, "s") == []


async def test_a_background_send_message_returns_at_once_and_is_followed_to_its_end(
    server: Chatd, provider: GatedProvider
) -> None:
    sent = await server.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", background=True)
    )
    reply_id = sent.reply.reply_id
    assert reply_id and not sent.reply.text and not sent.reply.messages

    running = await server.stub.GetReply(pb.GetReplyRequest(session_id="s", reply_id=reply_id))
    assert running.reply.state == pb.REPLY_STATE_RUNNING
    listed = await server.stub.ListReplies(pb.ListRepliesRequest(session_id="s"))
    assert [r.reply_id for r in listed.replies] == [reply_id]

    provider.release(4)
    events = await read_all(server.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id)))
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    assert events[0].reply_id == reply_id
    assert events[-1].reply.text == "one two three four"

    done = await server.stub.GetReply(
        pb.GetReplyRequest(session_id="s", reply_id=reply_id, skip_events=True)
    )
    assert done.reply.state == pb.REPLY_STATE_COMPLETED and not done.events
    assert done.reply.reply.text == "one two three four"
    assert done.reply.reply.reply_id == reply_id
    assert done.reply.turn_id == done.reply.reply.turn_id


async def test_cancel_reply_by_id_stops_a_background_turn(
    server: Chatd, provider: GatedProvider
) -> None:
    sent = await server.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", background=True)
    )
    reply_id = sent.reply.reply_id
    await provider.started.wait()
    cancelled = await server.stub.CancelReply(pb.CancelReplyRequest(reply_id=reply_id))
    assert cancelled.cancelled
    await provider.cancelled.wait()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(server.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id)))
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert reason_of(caught.value) == "REPLY_CANCELLED"
    got = await server.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id))
    assert got.reply.state == pb.REPLY_STATE_CANCELLED and not got.reply.error.retryable
    assert await all_messages(server.stub, "s") == []
    again = await server.stub.CancelReply(pb.CancelReplyRequest(reply_id=reply_id))
    assert not again.cancelled


async def test_a_retry_while_the_background_turn_runs_follows_it_instead_of_running_again(
    server: Chatd, provider: GatedProvider
) -> None:
    sent = await server.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", background=True, request_id="r1")
    )
    retry = server.stub.StreamReply(
        pb.StreamReplyRequest(session_id="s", text="hi", request_id="r1")
    )
    first = await read_event(retry)
    assert first.reply_id == sent.reply.reply_id and first.sequence_number == 1
    provider.release(4)
    rest = await read_all(retry)
    assert rest[-1].reply.text == "one two three four"
    assert provider.calls == 1
    assert len(await all_messages(server.stub, "s")) == 2


async def test_send_message_replies_are_listed_and_read_back(
    server: Chatd, provider: GatedProvider
) -> None:
    ids = []
    for n in range(3):
        provider.release(4)
        sent = await server.stub.SendMessage(pb.SendMessageRequest(session_id="s", text=f"m{n}"))
        assert sent.reply.reply_id
        ids.append(sent.reply.reply_id)
        got = await server.stub.GetReply(pb.GetReplyRequest(reply_id=sent.reply.reply_id))
        assert got.reply.state == pb.REPLY_STATE_COMPLETED
        assert got.reply.reply == sent.reply
        assert got.events[-1].reply == sent.reply
    page = await server.stub.ListReplies(pb.ListRepliesRequest(session_id="s", page_size=2))
    assert [r.reply_id for r in page.replies] == ids[::-1][:2]
    assert all(not r.HasField("reply") for r in page.replies)
    rest = await server.stub.ListReplies(
        pb.ListRepliesRequest(session_id="s", page_size=2, page_token=page.next_page_token)
    )
    assert [r.reply_id for r in rest.replies] == ids[:1] and not rest.next_page_token


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.StreamReplyRequest(reply_id="r1", text="x"), "text"),
        (pb.StreamReplyRequest(reply_id="r1", background=True), "background"),
        (pb.StreamReplyRequest(reply_id="r1", request_id="q"), "request_id"),
        (pb.StreamReplyRequest(session_id="s", text="x", starting_after=3), "starting_after"),
        (pb.StreamReplyRequest(reply_id="r1", starting_after=-1), "starting_after"),
        (pb.StreamReplyRequest(reply_id="bad id"), "reply_id"),
    ],
)
async def test_malformed_resumes_name_the_field(
    server: Chatd, request_: pb.StreamReplyRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(server.stub.StreamReply(request_))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_unknown_replies_and_cursors_past_the_end(
    server: Chatd, provider: GatedProvider
) -> None:
    for call in (
        server.stub.GetReply(pb.GetReplyRequest(reply_id="r-none")),
        server.stub.CancelReply(pb.CancelReplyRequest(reply_id="r-none")),
        read_all(server.stub.StreamReply(pb.StreamReplyRequest(reply_id="r-none"))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(caught.value) == "REPLY_NOT_FOUND"
    provider.release(4)
    sent = await server.stub.SendMessage(pb.SendMessageRequest(session_id="s", text="hi"))
    await server.stub.CreateSession(pb.CreateSessionRequest(session_id="other"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.GetReply(
            pb.GetReplyRequest(session_id="other", reply_id=sent.reply.reply_id)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(
            server.stub.StreamReply(
                pb.StreamReplyRequest(reply_id=sent.reply.reply_id, starting_after=1000)
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_another_tenant_never_sees_a_reply(start_chatd: StartChatd) -> None:
    provider = GatedProvider()
    chatd: Chatd = await start_chatd(provider=provider, api_keys="a:key-a,b:key-b")
    as_a = (("authorization", "Bearer key-a"),)
    as_b = (("authorization", "Bearer key-b"),)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s"), metadata=as_a)
    provider.release(4)
    sent = await chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi"), metadata=as_a
    )
    for call in (
        chatd.stub.GetReply(pb.GetReplyRequest(reply_id=sent.reply.reply_id), metadata=as_b),
        chatd.stub.CancelReply(pb.CancelReplyRequest(reply_id=sent.reply.reply_id), metadata=as_b),
        read_all(
            chatd.stub.StreamReply(
                pb.StreamReplyRequest(reply_id=sent.reply.reply_id), metadata=as_b
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_background_turn_cut_by_shutdown_fails_retryable_and_its_retry_runs_once(
    start_chatd: StartChatd, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path}/stop.db"
    provider = GatedProvider()
    first: Chatd = await start_chatd(provider=provider, database_url=url)
    await first.stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
    sent = await first.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", background=True, request_id="r1")
    )
    await provider.started.wait()
    await first.running.stop(grace=0)  # the grace period ends with the turn still running
    assert provider.cancelled.is_set()

    again = GatedProvider()
    second: Chatd = await start_chatd(provider=again, database_url=url)
    got = await second.stub.GetReply(pb.GetReplyRequest(reply_id=sent.reply.reply_id))
    assert got.reply.state == pb.REPLY_STATE_FAILED
    assert got.reply.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert got.reply.error.reason == "REPLICA_STOPPING" and got.reply.error.retryable
    assert await all_messages(second.stub, "s") == []

    again.release(4)
    retried = await second.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", request_id="r1")
    )
    assert retried.reply.text == "one two three four"
    replayed = await second.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", request_id="r1")
    )
    assert replayed.reply.text == retried.reply.text and again.calls == 1
    assert len(await all_messages(second.stub, "s")) == 2


async def test_background_replies_share_the_stream_caps(start_chatd: StartChatd) -> None:
    provider = GatedProvider()
    chatd: Chatd = await start_chatd(provider=provider, max_streams=1)
    for sid in ("a", "b"):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    first = await chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id="a", text="hi", background=True)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chatd.stub.SendMessage(
            pb.SendMessageRequest(session_id="b", text="hi", background=True)
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value) == "TOO_MANY_BACKGROUND_REPLIES"
    provider.release(4)
    await read_all(chatd.stub.StreamReply(pb.StreamReplyRequest(reply_id=first.reply.reply_id)))
    provider.release(4)
    # Followed to its end: the slot is free again.
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="b", text="hi", background=True))


async def test_replies_of_an_earlier_life_of_the_session_are_not_listed(
    server: Chatd, provider: GatedProvider
) -> None:
    provider.release(4)
    await server.stub.SendMessage(pb.SendMessageRequest(session_id="s", text="old life"))
    await server.stub.DeleteSession(pb.DeleteSessionRequest(session_id="s"))
    await server.stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
    listed = await server.stub.ListReplies(pb.ListRepliesRequest(session_id="s"))
    assert list(listed.replies) == []


async def test_cancelling_a_reply_waiting_its_turn_stops_it_and_not_the_running_one(
    server: Chatd, provider: GatedProvider
) -> None:
    first = await server.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="first", background=True)
    )
    await provider.started.wait()
    second = await server.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="second", background=True)
    )
    cancelled = await server.stub.CancelReply(pb.CancelReplyRequest(reply_id=second.reply.reply_id))
    assert cancelled.cancelled
    provider.release(4)
    done = await read_all(
        server.stub.StreamReply(pb.StreamReplyRequest(reply_id=first.reply.reply_id))
    )
    assert done[-1].reply.text == "one two three four"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(
            server.stub.StreamReply(pb.StreamReplyRequest(reply_id=second.reply.reply_id))
        )
    assert reason_of(caught.value) == "REPLY_CANCELLED"
    assert provider.calls == 1
    assert len(await all_messages(server.stub, "s")) == 2


async def test_get_reply_after_the_last_event_still_gives_the_outcome(
    server: Chatd, provider: GatedProvider
) -> None:
    provider.release(4)
    call = server.stub.StreamReply(pb.StreamReplyRequest(session_id="s", text="hi"))
    events = await read_all(call)
    reply_id, last = events[0].reply_id, events[-1].sequence_number
    got = await server.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id, starting_after=last))
    assert list(got.events) == [] and got.reply.reply.text == "one two three four"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id, starting_after=last + 1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_resume_past_a_running_reply_s_last_event_is_refused(
    server: Chatd, provider: GatedProvider
) -> None:
    sent = await server.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", background=True)
    )
    await provider.started.wait()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(
            server.stub.StreamReply(
                pb.StreamReplyRequest(reply_id=sent.reply.reply_id, starting_after=2**62)
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "starting_after" in (caught.value.details() or "")


@pytest.mark.parametrize("position", [[1e300, "r1"], [-5, "r1"], [1, "bad id"], [1]])
async def test_a_crafted_list_replies_page_token_is_invalid_argument(
    server: Chatd, position: list[object]
) -> None:
    """Page tokens are not signed: one made by hand with the right query names a
    position that must still be checked as hostile input."""
    session = await server.stub.GetSession(pb.GetSessionRequest(session_id="s"))
    token = encode_token(f"replies|s|{session.session.uid}", position)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.ListReplies(pb.ListRepliesRequest(session_id="s", page_token=token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (caught.value.details() or "")


class HoldFirstRecord:
    """A store that holds the first record a background reply stores (state RUNNING, no
    events) until `release` is set; everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_reply(self, write: ReplyWrite) -> bool:
        if write.record.state is ReplyState.RUNNING and write.events is None:
            self.entered.set()
            await self.release.wait()
        return bool(await self.inner.put_reply(write))


async def test_a_background_reply_starting_as_the_replica_stops_fails_retryable(
    start_chatd: StartChatd, tmp_path: Any
) -> None:
    """Its record was being stored when SIGTERM came: drain waits for that write, and
    the reply ends at once, failed REPLICA_STOPPING, instead of running on unwatched."""
    path = str(tmp_path / "drain.db")
    store = HoldFirstRecord(await SqliteStore.open(path))
    provider = GatedProvider()
    chatd: Chatd = await start_chatd(store=store, provider=provider)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
    sending = asyncio.ensure_future(
        chatd.stub.SendMessage(pb.SendMessageRequest(session_id="s", text="x", background=True))
    )
    await store.entered.wait()
    stopping = asyncio.ensure_future(chatd.running.stop(grace=0.5))
    while not await _not_serving(chatd):
        pass  # health says NOT_SERVING first; the drain starts right after
    await asyncio.sleep(0)
    store.release.set()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sending
    await stopping
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(caught.value) == "REPLICA_STOPPING"
    assert provider.calls == 0
    reopened = await SqliteStore.open(path)
    try:
        replies = await reopened.list_replies(DEFAULT_TENANT, "s", 10)
        assert [(r.state, r.error and r.error.reason) for r in replies] == [
            (ReplyState.FAILED, "REPLICA_STOPPING")
        ]
    finally:
        await reopened.close()


async def _not_serving(chatd: Chatd) -> bool:
    try:
        status = await chatd.health.Check(health_pb2.HealthCheckRequest())
    except grpc.aio.AioRpcError:
        return True
    return bool(status.status == health_pb2.HealthCheckResponse.NOT_SERVING)
