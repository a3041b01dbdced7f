"""Stopping a turn: CancelReply (TurnEngine.cancel, ChatSessions.cancel) or the caller
leaving, mid-stream or while a tool runs, stores nothing and closes the model call."""

from __future__ import annotations

import asyncio

import pytest

from server.sessions.engine import TurnEngine
from server.sessions.errors import Cancelled
from server.sessions.events import ReplyStarted, TextDelta
from server.sessions.ports import ReplyState
from server.sessions.service import ChatSessions
from server.store import MemoryStore
from tests.scripted_model import Gate, ScriptedModel, call

from .conftest import (
    TENANT,
    Bench,
    Clock,
    StoredEvents,
    history,
    new_session,
    outcome,
    run,
    said,
)


async def test_cancel_mid_stream_stores_nothing_and_closes_the_model_call(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)
    gate = Gate()
    model.answer("one ", gate, "two")
    turn = asyncio.create_task(run(engine, "count"))
    await gate.reached.wait()

    assert engine.cancel(TENANT, "s") is True

    with pytest.raises(Cancelled) as stopped:
        await turn
    assert stopped.value.reason == "REPLY_CANCELLED"
    assert model.calls[0].outcome == "closed"
    assert await history(store) == []
    assert (await store.get_session(TENANT, "s")).version == 1
    assert engine.cancel(TENANT, "s") is False, "nothing runs any more"
    model.answer("three")
    assert outcome(await run(engine, "again")).reply.messages[0].seq == 0


async def test_cancel_while_a_server_tool_runs_stores_nothing(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock, bench: Bench
) -> None:
    await new_session(store, clock, tools=("block",))
    model.answer(call("block"))
    turn = asyncio.create_task(run(engine, "wait"))
    await bench.started("block").wait()

    assert engine.cancel(TENANT, "s") is True

    with pytest.raises(Cancelled):
        await turn
    assert await history(store) == []
    assert model.unanswered == 0 and len(model.calls) == 1


async def test_cancel_names_the_reply_it_stops_and_nothing_else(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)
    await new_session(store, clock, "idle")
    gate = Gate()
    model.answer("one ", gate, "two")
    turn = asyncio.create_task(run(engine, "count"))
    await gate.reached.wait()

    assert engine.cancel(TENANT, "s", reply_id="another-reply") is False
    assert engine.cancel(TENANT, "idle") is False
    assert engine.cancel("other-tenant", "s") is False

    gate.open()
    assert outcome(await turn).reply.text == "one two"
    assert await history(store) == ["user: count", "model: one two"]


async def test_the_caller_leaving_mid_stream_stores_nothing(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)
    gate = Gate()
    model.answer("one ", gate, "two")
    turn = asyncio.create_task(run(engine, "count"))
    await gate.reached.wait()

    turn.cancel()

    with pytest.raises(asyncio.CancelledError):
        await turn
    assert model.calls[0].outcome == "closed"
    assert await history(store) == []


async def test_cancel_reply_through_chat_sessions_ends_the_reply_cancelled(
    chats: ChatSessions,
    store: MemoryStore,
    model: ScriptedModel,
    clock: Clock,
    events: StoredEvents,
) -> None:
    await new_session(store, clock)
    gate = Gate()
    model.answer("one ", gate, "two")
    seen: list[object] = []

    async def consume() -> None:
        async for event in chats.run_turn(TENANT, "s", said("count")):
            seen.append(event)

    turn = asyncio.create_task(consume())
    await gate.reached.wait()
    started = seen[0]
    assert isinstance(started, ReplyStarted)
    assert isinstance(seen[-1], TextDelta)

    assert await chats.cancel(TENANT, "s", started.reply_id) is True

    with pytest.raises(Cancelled):
        await turn
    assert model.calls[0].outcome == "closed"
    assert await history(store) == []
    record, _, stored = await chats.get_reply(TENANT, "s", started.reply_id, after=0, events=True)
    assert record.state is ReplyState.CANCELLED
    assert record.error is not None and record.error.reason == "REPLY_CANCELLED"
    assert events.decode(stored) == seen[1:]
