"""One turn at a time per session: a second turn (or a delete) waits for the running one
and then sees what it stored; turns of different sessions run at the same time."""

from __future__ import annotations

import asyncio

import pytest

from server.sessions.engine import TurnEngine
from server.sessions.errors import NotFound
from server.sessions.service import ChatSessions
from server.store import MemoryStore
from tests.scripted_model import Gate, ScriptedModel

from .conftest import TENANT, Clock, history, new_session, outcome, run, run_turn, settle


async def test_turns_on_one_session_run_one_after_the_other(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)
    gate = Gate()
    model.answer("one", gate)
    model.answer("two")
    first = asyncio.create_task(run(engine, "first"))
    await gate.reached.wait()
    called = model.called

    second = asyncio.create_task(run(engine, "second"))
    await settle()
    # The second turn waits for the session: it has not called the model. Letting the
    # first turn end is what lets it in.
    assert not called.is_set()
    gate.open()
    await first
    await called.wait()
    await second

    # It read the history after the first turn's commit, and stored after it.
    assert [m.text for m in model.requests[1].contents] == ["first", "one", "second"]
    assert await history(store) == ["user: first", "model: one", "user: second", "model: two"]


async def test_turns_on_different_sessions_run_at_the_same_time(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock, "a")
    await new_session(store, clock, "b")
    gate_a, gate_b = Gate(), Gate()
    model.answer("for a", gate_a)
    model.answer("for b", gate_b)
    turn_a = asyncio.create_task(run(engine, "to a", session_id="a"))
    await gate_a.reached.wait()

    turn_b = asyncio.create_task(run(engine, "to b", session_id="b"))
    # Both answers are under way at once: neither turn waits for the other.
    await gate_b.reached.wait()
    gate_b.open()
    gate_a.open()

    assert outcome(await turn_b).reply.text == "for b"
    assert outcome(await turn_a).reply.text == "for a"
    assert await history(store, "a") == ["user: to a", "model: for a"]
    assert await history(store, "b") == ["user: to b", "model: for b"]


@pytest.mark.parametrize("operation", ["delete", "clear"])
async def test_a_delete_or_a_clear_waits_for_the_running_turn_then_applies_to_what_it_stored(
    chats: ChatSessions, store: MemoryStore, model: ScriptedModel, clock: Clock, operation: str
) -> None:
    await new_session(store, clock)
    gate = Gate()
    model.answer("answer", gate)
    turn = asyncio.create_task(run_turn(chats, "hi"))
    await gate.reached.wait()

    change = asyncio.create_task(
        chats.delete(TENANT, "s") if operation == "delete" else chats.history.clear(TENANT, "s")
    )
    await settle()
    assert not change.done(), "the turn holds the session"
    gate.open()

    assert outcome(await turn).reply.text == "answer"
    await change
    if operation == "delete":
        with pytest.raises(NotFound):
            await store.get_session(TENANT, "s")
    else:
        assert await history(store) == []
        assert (await store.get_session(TENANT, "s")).version == 3
