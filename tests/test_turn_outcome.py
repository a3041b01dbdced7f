"""One outcome per turn, decided in one place: once its commit has begun a cancel loses,
the session lock covers the write, and masked updates apply to the current state; an
expired session is gone for every path at once.

Driven at the domain level (ChatSessions on the memory store) with a store whose writes
wait on an event, so every interleaving here is forced, not hoped for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chatd.v1 import chat_service_pb2 as pb
from server.rpc.reply_codec import decode_events, encode_events
from server.rpc.turn_codec import reply_to_pb
from server.sessions.engine import TurnInput
from server.sessions.errors import Cancelled, NotFound
from server.sessions.events import MessageCompleted, ReplyStarted, TurnCompleted, TurnEvent
from server.sessions.idempotency import RequestKey
from server.sessions.model import DEFAULT_TENANT, Message, Part, Role, SessionSettings
from server.sessions.ports import ReplyEvents, ReplyState, SessionStore
from server.sessions.service import ChatSessions
from server.store import CachedStore, MemoryStore, SqliteStore
from server.tools import ToolRegistry
from tests.fakes import LatchStore, ScriptedProvider

TENANT = DEFAULT_TENANT


@pytest.fixture
async def latch() -> AsyncIterator[LatchStore]:
    store = LatchStore(MemoryStore())
    yield store
    store.release.set()


def sessions(store: LatchStore, provider: ScriptedProvider | None = None) -> ChatSessions:
    return ChatSessions(
        store, provider or ScriptedProvider(), ToolRegistry([]), event_encoder=encode_events
    )


async def run(chats: ChatSessions, session_id: str, text: str) -> list[TurnEvent]:
    turn = TurnInput(parts=(Part(text=text),))
    return [
        event
        async for event in chats.run_turn(TENANT, session_id, turn)
        if not isinstance(event, ReplyStarted | ReplyEvents)
    ]


async def test_cancel_during_the_commit_loses_and_the_caller_gets_the_stored_turn(
    latch: LatchStore,
) -> None:
    chats = sessions(latch)
    await chats.create(TENANT, SessionSettings(), "s")
    latch.holding = True
    turn = asyncio.create_task(run(chats, "s", "hello"))
    await latch.entered.wait()

    assert await chats.cancel(TENANT, "s") is False  # the commit has begun: the turn completes
    latch.release.set()
    events = await turn

    assert isinstance(events[-1], TurnCompleted)
    history = await latch.inner.recent_messages(TENANT, "s")
    assert [m.text for m in history] == ["hello", "Hello!"]
    assert [m.seq for m in events[-1].reply.messages] == [m.seq for m in history]


async def test_cancel_before_the_commit_wins_and_nothing_is_stored(latch: LatchStore) -> None:
    provider = ScriptedProvider(delay=3600)  # waits until cancelled
    chats = sessions(latch, provider)
    await chats.create(TENANT, SessionSettings(), "s")
    turn = asyncio.create_task(run(chats, "s", "hello"))
    await provider.started.wait()

    assert await chats.cancel(TENANT, "s") is True
    with pytest.raises(Cancelled):
        await turn
    assert provider.cancelled.is_set()
    assert await latch.inner.recent_messages(TENANT, "s") == []


async def test_cancel_while_an_event_is_being_written_ends_the_turn_unstored(
    latch: LatchStore,
) -> None:
    """The stream is suspended at a yield (its RPC writing an event) when the cancel
    lands: the turn stops when it resumes, before anything is stored."""
    chats = sessions(latch)
    await chats.create(TENANT, SessionSettings(), "s")
    stream = chats.run_turn(TENANT, "s", TurnInput(parts=(Part(text="hello"),)))
    assert isinstance(await anext(stream), ReplyStarted)
    first = await anext(stream)
    assert isinstance(first, MessageCompleted)

    assert await chats.cancel(TENANT, "s") is True
    with pytest.raises(Cancelled):
        await anext(stream)
    assert await latch.inner.recent_messages(TENANT, "s") == []


async def test_a_caller_leaving_mid_commit_holds_the_session_until_the_write_ends(
    latch: LatchStore,
) -> None:
    chats = sessions(latch)
    await chats.create(TENANT, SessionSettings(), "s")
    latch.holding = True
    first = asyncio.create_task(run(chats, "s", "one"))
    await latch.entered.wait()
    first.cancel()  # the caller goes away while the turn is being written
    second = asyncio.create_task(run(chats, "s", "two"))
    latch.log.clear()
    # Let everything runnable run: the second turn must still be waiting for the lock.
    for _ in range(20):
        await asyncio.sleep(0)
    assert latch.log == []
    assert not first.done()

    latch.release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    # The first write ended before the second turn read the session.
    assert latch.log[:2] == ["commit_turn end", "get_session"]
    history = await latch.inner.recent_messages(TENANT, "s")
    assert [m.text for m in history] == ["one", "Hello!", "two", "Hello!"]


async def test_a_caller_leaving_mid_commit_leaves_the_stored_turn_and_a_completed_reply(
    latch: LatchStore,
) -> None:
    """The caller's leaving does not undo a commit that has begun: the turn is stored, and
    its reply ends COMPLETED with the turn as its outcome, not CANCELLED."""
    chats = sessions(latch)
    await chats.create(TENANT, SessionSettings(), "s")
    latch.holding = True
    stream = chats.run_turn(TENANT, "s", TurnInput(parts=(Part(text="one"),)))
    started = await anext(stream)
    assert isinstance(started, ReplyStarted)

    async def follow() -> None:
        async for _ in stream:
            pass

    caller = asyncio.create_task(follow())
    await latch.entered.wait()
    caller.cancel()  # the caller goes away while the turn is being written
    latch.release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller

    history = await latch.inner.recent_messages(TENANT, "s")
    assert [m.text for m in history] == ["one", "Hello!"]
    record, _, stored = await chats.get_reply(TENANT, "s", started.reply_id, after=0, events=True)
    assert record.state is ReplyState.COMPLETED
    assert record.error is None
    events = decode_events(stored, 0)
    assert events[-1].HasField("reply")
    assert events[-1].reply.text == "Hello!"


async def test_masked_updates_apply_to_the_state_under_the_lock(latch: LatchStore) -> None:
    chats = sessions(latch)
    await chats.create(TENANT, SessionSettings(display_name="old"), "s")
    latch.holding = True
    labels = asyncio.create_task(
        chats.history.update(TENANT, "s", lambda s: _evolve(s.settings, labels={"team": "a"}), None)
    )
    await latch.entered.wait()
    name = asyncio.create_task(
        chats.history.update(TENANT, "s", lambda s: _evolve(s.settings, display_name="new"), None)
    )
    for _ in range(20):
        await asyncio.sleep(0)
    latch.release.set()
    await labels
    updated = await name

    assert updated.settings.labels == {"team": "a"}
    assert updated.settings.display_name == "new"
    stored = await latch.inner.get_session(TENANT, "s")
    assert stored.settings == updated.settings


def _evolve(settings: SessionSettings, **changes: Any) -> SessionSettings:
    return replace(settings, **changes)


@pytest.fixture(params=["memory", "cached-sqlite"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    store: SessionStore
    if request.param == "memory":
        store = MemoryStore()
    else:
        store = CachedStore(await SqliteStore.open(str(tmp_path / "chatd.db")), 1 << 20)
    yield store
    await store.close()


async def test_an_expired_session_is_gone_for_every_path_before_the_sweep(
    any_store: SessionStore,
) -> None:
    now = [1000.0]
    chats = ChatSessions(
        any_store,
        ScriptedProvider(),
        ToolRegistry([]),
        event_encoder=encode_events,
        clock=lambda: now[0],
    )
    old = await chats.create(TENANT, SessionSettings(ttl_seconds=10), "s")
    async for _ in chats.run_turn(TENANT, "s", TurnInput(parts=(Part(text="old"),))):
        pass
    now[0] += 11  # expired; nothing has swept it

    reads = [
        chats.get(TENANT, "s"),
        chats.list_messages(TENANT, "s", page_size=10, page_token=""),
        chats.history.export(TENANT, "s"),
        chats.fork(TENANT, "s", None, "copy"),
        chats.append(TENANT, "s", (Message(Role.USER, (Part(text="x"),)),)),
        chats.count_tokens(TENANT, "s", candidate=(), contents=(), model=""),
        chats.history.clear(TENANT, "s"),
        chats.delete(TENANT, "s"),
        run(chats, "s", "new"),
    ]
    for read in reads:
        with pytest.raises(NotFound):
            await read
    listed = await chats.list(TENANT, page_size=10, page_token="", filter="", order_by="")
    assert listed.items == []

    new = await chats.create(TENANT, SessionSettings(), "s")  # the id is free again
    assert new.uid != old.uid
    page = await chats.list_messages(TENANT, "s", page_size=10, page_token="")
    assert page.items == []


async def test_cancel_while_a_no_content_reply_is_recorded_loses_too(latch: LatchStore) -> None:
    """A turn whose answer had no content stores only its request record; once that write
    has begun, the outcome is decided there as for any commit."""
    chats = sessions(latch, ScriptedProvider(deltas=[]))
    await chats.create(TENANT, SessionSettings(), "s")
    latch.holding = True
    key = RequestKey("r1", "fingerprint")
    turn = TurnInput(parts=(Part(text="hello"),))

    async def run_keyed() -> list[Any]:
        return [
            event
            async for event in chats.run_turn(TENANT, "s", turn, key)
            if not isinstance(event, ReplyStarted)
        ]

    task = asyncio.create_task(run_keyed())
    await latch.entered.wait()
    assert await chats.cancel(TENANT, "s") is False
    latch.release.set()
    events = await task
    reply = events[-1]
    assert isinstance(reply, TurnCompleted) and reply.reply.no_content
    # A retry gets that same reply, as stored (the rpc layer's encoding of it).
    replayed = await run_keyed()
    assert isinstance(replayed[-1], ReplyEvents)
    expected = pb.Reply()
    reply_to_pb(reply.reply, expected)
    assert decode_events(replayed, 0)[-1].reply == expected
