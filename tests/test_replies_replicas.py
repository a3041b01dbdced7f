"""Replies across two replicas on one PostgreSQL database: a reply started on one is
followed live, read, listed and cancelled on the other, the model being the fake Gemini
reached over HTTP (so a cancellation is seen as the upstream request closing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import FakeGemini, Hold, Reply
from tests.helpers import all_messages, read_event, rich_details
from tests.store.conftest import fresh_schema, postgres_dsn

ANSWER = "one two three four five six"
# Generous: how long B may wait for events A holds while the model is silent (they are
# stored CHATD_REPLY_FLUSH_INTERVAL, 0.2 s, after they came).
SILENT_TIMEOUT = 30.0


@dataclass
class Replicas:
    a: Chatd
    b: Chatd
    fake: FakeGemini


@pytest.fixture
async def replicas(start_chatd: StartChatd, fake_gemini: FakeGemini) -> AsyncIterator[Replicas]:
    """Replicas A and B sharing a fresh schema, each with its own gemini provider pointed
    at one fake Gemini; session "s" exists."""
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        options: dict[str, Any] = {"database_url": dsn, "postgres_schema": schema}
        a = await start_chatd(provider=fast_gemini(fake_gemini), **options)
        b = await start_chatd(provider=fast_gemini(fake_gemini), **options)
        await a.stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
        yield Replicas(a, b, fake_gemini)
        for replica in (a, b):
            await replica.running.stop(grace=0)


def held_answer(hold: Hold, after: int = 2) -> Reply:
    """ANSWER streamed a word per event, stopped after `after` events until `hold` opens."""
    return Reply(text=ANSWER, chunks=6, hold=hold, hold_after=after)


async def read_all(call: Any) -> list[pb.StreamReplyResponse]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def read_n(call: Any, n: int) -> list[pb.StreamReplyResponse]:
    return [await read_event(call) for _ in range(n)]


async def start_background(chatd: Chatd, text: str = "hi") -> tuple[str, Any]:
    """A background StreamReply on `chatd`: its reply id and the call (first event read)."""
    call = chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="s", text=text, background=True))
    first = await read_event(call)
    assert first.sequence_number == 1 and first.reply_id
    return first.reply_id, call


async def cancelled_end(chatd: Chatd, reply_id: str) -> grpc.aio.AioRpcError:
    """Follows the reply on `chatd` to its end, which must be an error; returns it."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(chatd.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id)))
    return caught.value


async def test_a_reply_running_on_a_is_followed_live_on_b_without_gap_or_duplicate(
    replicas: Replicas,
) -> None:
    a, b, fake = replicas.a, replicas.b, replicas.fake
    hold = Hold()
    fake.push(held_answer(hold))
    reply_id, call = await start_background(a)
    await hold.wait_reached()
    call.cancel()  # the caller leaves; the background turn runs on

    # B reads what the store has, then joins one event before it: the replayed event
    # proves B's stream is up before the model says anything more.
    got = await b.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id))
    assert got.reply.state == pb.REPLY_STATE_RUNNING
    known = got.reply.last_sequence_number
    assert known >= 1
    follow = b.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id, starting_after=known - 1))
    joined = await read_event(follow)
    assert joined.sequence_number == known and joined.reply_id == reply_id

    hold.open()  # everything from here on is written after B joined
    rest = await read_all(follow)
    numbers = [joined.sequence_number] + [e.sequence_number for e in rest]
    assert numbers == list(range(known, known + len(numbers))), "a gap or a duplicate"
    assert rest[-1].HasField("reply") and rest[-1].reply.text == ANSWER
    assert rest[-1].reply.reply_id == reply_id
    deltas = "".join(e.text_delta.text for e in [joined, *rest] if e.HasField("text_delta"))
    assert ANSWER.endswith(deltas) and deltas, "B saw the words written after it joined"

    done = await b.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id))
    assert done.reply.state == pb.REPLY_STATE_COMPLETED
    assert done.reply.last_sequence_number == rest[-1].sequence_number
    assert done.reply.reply.text == ANSWER
    # B's stream is exactly the stored events from where it joined.
    stored = [e for e in done.events if e.sequence_number >= known]
    assert [e.sequence_number for e in stored] == numbers
    assert [e.text_delta.text for e in stored[1:]] == [e.text_delta.text for e in rest]
    assert len(fake.requests) == 1
    assert len(await all_messages(b.stub, "s")) == 2


async def test_what_a_streamed_before_the_model_went_silent_reaches_b_while_it_is_silent(
    replicas: Replicas,
) -> None:
    a, b, fake = replicas.a, replicas.b, replicas.fake
    hold = Hold()
    fake.push(held_answer(hold))
    reply_id, call = await start_background(a)
    said = [await read_event(call) for _ in range(2)]  # the words before the model stops
    assert [e.sequence_number for e in said] == [2, 3]
    assert all(e.text_delta.text for e in said)
    await hold.wait_reached()

    follow = b.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id, starting_after=1))
    # The model says nothing more until B has them: A stores them anyway.
    seen = await asyncio.wait_for(read_n(follow, 2), SILENT_TIMEOUT)
    assert [(e.sequence_number, e.text_delta) for e in seen] == [
        (e.sequence_number, e.text_delta) for e in said
    ]
    got = await b.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id, skip_events=True))
    assert got.reply.state == pb.REPLY_STATE_RUNNING and got.reply.last_sequence_number == 3

    hold.open()
    rest = await read_all(follow)
    assert [e.sequence_number for e in rest] == list(range(4, 4 + len(rest)))
    assert rest[-1].reply.text == ANSWER


async def test_a_reply_running_on_a_is_read_and_listed_on_b(replicas: Replicas) -> None:
    a, b, fake = replicas.a, replicas.b, replicas.fake
    hold = Hold()
    fake.push(held_answer(hold))
    reply_id, call = await start_background(a)
    await hold.wait_reached()

    got = await b.stub.GetReply(pb.GetReplyRequest(session_id="s", reply_id=reply_id))
    assert got.reply.state == pb.REPLY_STATE_RUNNING
    assert got.reply.reply_id == reply_id and got.reply.session_id == "s"
    assert got.reply.background and not got.reply.HasField("reply")
    assert got.reply.last_sequence_number >= 1
    assert [e.sequence_number for e in got.events] == list(
        range(1, got.reply.last_sequence_number + 1)
    )
    assert got.events[0].message.parts[0].text == "hi"
    listed = await b.stub.ListReplies(pb.ListRepliesRequest(session_id="s"))
    assert [(r.reply_id, r.state) for r in listed.replies] == [(reply_id, pb.REPLY_STATE_RUNNING)]

    hold.open()
    events = await read_all(call)
    assert events[-1].reply.text == ANSWER
    done = await b.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id, skip_events=True))
    assert done.reply.state == pb.REPLY_STATE_COMPLETED and not done.events
    listed = await b.stub.ListReplies(pb.ListRepliesRequest(session_id="s"))
    assert [(r.reply_id, r.state) for r in listed.replies] == [(reply_id, pb.REPLY_STATE_COMPLETED)]


@pytest.mark.parametrize("by", ["reply_id", "session_id"])
async def test_cancel_reply_on_b_closes_the_upstream_request_on_a(
    replicas: Replicas, by: str
) -> None:
    a, b, fake = replicas.a, replicas.b, replicas.fake
    hold = Hold()
    fake.push(held_answer(hold))
    sent = await a.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", background=True)
    )
    reply_id = sent.reply.reply_id
    await hold.wait_reached()  # the model is mid-answer on A

    request = (
        pb.CancelReplyRequest(reply_id=reply_id)
        if by == "reply_id"
        else pb.CancelReplyRequest(session_id="s")
    )
    cancelled = await b.stub.CancelReply(request)
    assert cancelled.cancelled
    # The answer is held: only A closing the upstream request, told by B, ends it.
    disconnect = await fake.await_disconnect(timeout=SILENT_TIMEOUT)
    assert disconnect.request.method == "streamGenerateContent"
    assert disconnect.events_sent == 2

    for replica in (b, a):
        error = await cancelled_end(replica, reply_id)
        assert error.code() == grpc.StatusCode.CANCELLED
        assert rich_details(error)["ErrorInfo"].reason == "REPLY_CANCELLED"
    for replica in (a, b):
        got = await replica.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id))
        assert got.reply.state == pb.REPLY_STATE_CANCELLED
        assert got.reply.error.code == grpc.StatusCode.CANCELLED.value[0]
        assert got.reply.error.reason == "REPLY_CANCELLED"
        assert await all_messages(replica.stub, "s") == []
    again = await b.stub.CancelReply(pb.CancelReplyRequest(reply_id=reply_id))
    assert not again.cancelled
    assert len(fake.requests) == 1
