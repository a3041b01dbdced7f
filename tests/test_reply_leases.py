"""Replies' leases at the domain level: two replicas (ChatSessions) on one store, with
injected clocks, so a replica that stops renewing is noticed exactly when its lease
lapses, and one that finds its reply declared lost stops the turn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.rpc.reply_codec import encode_events
from server.sessions.engine import TurnInput
from server.sessions.errors import NotFound, ReplyFailed, Unavailable
from server.sessions.events import ReplyStarted, TurnEvent
from server.sessions.model import DEFAULT_TENANT, Part, SessionSettings
from server.sessions.ports import ReplyEvents, ReplyState
from server.sessions.replies import REPLICA_LOST
from server.sessions.service import ChatSessions
from server.store import MemoryStore
from server.sweeper import Sweeper
from server.tools import ToolRegistry
from tests.fakes import GatedProvider

TENANT = DEFAULT_TENANT
LEASE = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def replica(store: MemoryStore, provider: GatedProvider, clock: Clock) -> ChatSessions:
    return ChatSessions(
        store,
        provider,
        ToolRegistry([]),
        event_encoder=encode_events,
        single_process=False,
        reply_lease=LEASE,
        clock=clock,
    )


Two = tuple[ChatSessions, ChatSessions, GatedProvider, Clock, MemoryStore]


@pytest.fixture
async def two() -> AsyncIterator[Two]:
    store, clock, provider = MemoryStore(), Clock(), GatedProvider()
    a, b = replica(store, provider, clock), replica(store, GatedProvider(), clock)
    await a.create(TENANT, SessionSettings(), "s")
    yield a, b, provider, clock, store
    await a.drain(0)
    await b.drain(0)


async def start_background(
    chats: ChatSessions,
) -> tuple[str, AsyncIterator[TurnEvent | ReplyStarted | ReplyEvents]]:
    stream = chats.run_turn(TENANT, "s", TurnInput(parts=(Part(text="hi"),)), background=True)
    started = await anext(stream)
    assert isinstance(started, ReplyStarted)
    await anext(stream)  # the user's message: stored before anyone saw it
    return started.reply_id, stream


async def test_a_lapsed_lease_is_failed_by_another_replica_and_not_before(
    two: Two,
) -> None:
    a, b, provider, clock, store = two
    reply_id, _ = await start_background(a)
    await provider.started.wait()

    clock.now += LEASE - 0.001
    assert await b.replies.keep_once() == 0
    clock.now += 0.001
    assert await b.replies.keep_once() == 1
    record = await b.replies.record(TENANT, "", reply_id)
    assert record.state is ReplyState.FAILED and record.error == REPLICA_LOST

    # The replica that was thought dead stores its next events (the model's answer, as
    # a completed message) and finds out: it stops the turn and stores nothing of it,
    # and its followers hear how the reply ended.
    follower = a.follow_reply(TENANT, "s", reply_id, 1)
    assert isinstance(await anext(follower), ReplyStarted)
    provider.release(4)
    with pytest.raises(ReplyFailed) as caught:
        async for _ in follower:
            pass
    assert caught.value.reason == "REPLICA_LOST"
    stored = await b.replies.record(TENANT, "", reply_id)
    assert stored.state is ReplyState.FAILED and stored.error == REPLICA_LOST
    assert await store.recent_messages(TENANT, "s") == []


async def test_a_renewed_lease_is_never_failed(
    two: Two,
) -> None:
    a, b, provider, clock, _ = two
    reply_id, stream = await start_background(a)
    for _ in range(5):
        clock.now += LEASE * 0.9
        await a.replies.keep_once()
        assert await b.replies.keep_once() == 0
    provider.release(4)
    async for _ in stream:
        pass
    record = await b.replies.record(TENANT, "s", reply_id)
    assert record.state is ReplyState.COMPLETED and record.lease_expire_time is None


async def test_a_single_process_store_fails_the_replies_left_running_at_start() -> None:
    store, clock, provider = MemoryStore(), Clock(), GatedProvider()
    first = replica(store, provider, clock)
    await first.create(TENANT, SessionSettings(), "s")
    reply_id, _ = await start_background(first)
    # The process dies without a word: nothing more of it runs. The next one starts.
    again = ChatSessions(
        store, GatedProvider(), ToolRegistry([]), event_encoder=encode_events, clock=clock
    )
    await again.start()
    try:
        record = await again.replies.record(TENANT, "s", reply_id)
        assert record.state is ReplyState.FAILED and record.error == REPLICA_LOST
    finally:
        await again.drain(0)
        await first.drain(0)


async def test_a_reply_error_keeps_its_status_code() -> None:
    failed = ReplyFailed("UNAVAILABLE", "gone", reason="REPLICA_LOST")
    assert failed.code == Unavailable.code and failed.reason == "REPLICA_LOST"


async def test_ended_replies_are_forgotten_after_the_window_and_not_before() -> None:
    store, clock, provider = MemoryStore(), Clock(), GatedProvider()
    chats = replica(store, provider, clock)
    await chats.create(TENANT, SessionSettings(), "s")
    provider.release(4)
    events = [
        event async for event in chats.run_turn(TENANT, "s", TurnInput(parts=(Part(text="hi"),)))
    ]
    assert isinstance(events[0], ReplyStarted)
    reply_id = events[0].reply_id
    window = 3600.0
    sweeper = Sweeper(store, interval=60, request_window=window, reply_window=window, clock=clock)

    clock.now += window
    assert (await sweeper.sweep())[2] == 0
    assert (await chats.replies.record(TENANT, "s", reply_id)).state is ReplyState.COMPLETED
    clock.now += 0.001
    assert (await sweeper.sweep())[2] == 1
    with pytest.raises(NotFound):
        await chats.replies.record(TENANT, "s", reply_id)
    await chats.drain(0)


async def test_a_turn_refused_before_its_first_event_leaves_no_reply_behind() -> None:
    store, clock = MemoryStore(), Clock()
    chats = replica(store, GatedProvider(), clock)
    for _ in range(3):
        with pytest.raises(NotFound):
            async for _ in chats.run_turn(TENANT, "nope", TurnInput(parts=(Part(text="x"),))):
                pass
    assert await store.list_replies(TENANT, "nope", 10) == []
    await chats.drain(0)


async def test_a_draining_replica_starts_no_background_reply() -> None:
    store, clock = MemoryStore(), Clock()
    chats = replica(store, GatedProvider(), clock)
    await chats.create(TENANT, SessionSettings(), "s")
    await chats.drain(0)
    with pytest.raises(Unavailable) as caught:
        async for _ in chats.run_turn(
            TENANT, "s", TurnInput(parts=(Part(text="x"),)), background=True
        ):
            pass
    assert caught.value.reason == "REPLICA_STOPPING"
    assert await store.list_replies(TENANT, "s", 10) == []
