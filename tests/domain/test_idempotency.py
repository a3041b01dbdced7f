"""Turns with a request id (ChatSessions.run_turn with a RequestKey): a retry gets the first
run's reply back without calling the model again, a duplicate sent while the first runs
waits for it, and an id reused for another request is refused."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from server.sessions.errors import InvalidArgument, Unavailable
from server.sessions.events import ReplyStarted, TurnCompleted
from server.sessions.idempotency import RequestKey
from server.sessions.ports import ReplyEvents
from server.sessions.service import ChatSessions
from server.store import MemoryStore
from tests.scripted_model import Gate, ScriptedModel

from .conftest import Clock, StoredEvents, history, new_session, outcome, run_turn, said, settle

KEY = RequestKey("request-1", "fingerprint-of-hi")


@pytest.mark.parametrize("streamed", [True, False], ids=["StreamReply", "SendMessage"])
async def test_a_retry_replays_the_stored_reply_without_calling_the_model(
    chats: ChatSessions,
    store: MemoryStore,
    model: ScriptedModel,
    clock: Clock,
    events: StoredEvents,
    streamed: bool,
) -> None:
    await new_session(store, clock)
    model.answer("Hel", "lo!")
    turn = replace(said("hi"), stream_text=streamed)

    first = await run_turn(chats, turn, key=KEY)
    clock.advance(30)
    again = await run_turn(chats, turn, key=KEY)

    assert len(model.calls) == 1
    assert isinstance(first[0], ReplyStarted) and again[0] == first[0], "the same reply id"
    assert all(isinstance(chunk, ReplyEvents) for chunk in again[1:])
    replayed = events.decode(again[1:])  # type: ignore[arg-type]
    assert replayed[-1] == first[-1]
    if streamed:
        assert replayed == first[1:], "every event, as first sent"
    assert await history(store) == ["user: hi", "model: Hello!"]


async def test_a_duplicate_sent_while_the_first_runs_gets_the_same_reply(
    chats: ChatSessions,
    store: MemoryStore,
    model: ScriptedModel,
    clock: Clock,
    events: StoredEvents,
) -> None:
    await new_session(store, clock)
    gate = Gate()
    model.answer("Hel", gate, "lo!")
    first = asyncio.create_task(run_turn(chats, "hi", key=KEY))
    await gate.reached.wait()

    second = asyncio.create_task(run_turn(chats, "hi", key=KEY))
    await settle()
    assert not second.done(), "it waits for the first run"
    gate.open()

    ran, waited = await first, await second
    assert len(model.calls) == 1
    assert waited[0] == ran[0]
    assert events.decode(waited[1:]) == ran[1:]  # type: ignore[arg-type]
    assert outcome(ran).reply.text == "Hello!"
    assert await history(store) == ["user: hi", "model: Hello!"]


async def test_a_request_id_reused_for_another_request_is_refused(
    chats: ChatSessions, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)
    gate = Gate()
    model.answer("Hel", gate, "lo!")
    first = asyncio.create_task(run_turn(chats, "hi", key=KEY))
    await gate.reached.wait()
    other = RequestKey(KEY.request_id, "fingerprint-of-bye")

    with pytest.raises(InvalidArgument) as running:
        await run_turn(chats, "bye", key=other)
    gate.open()
    await first
    with pytest.raises(InvalidArgument) as done:
        await run_turn(chats, "bye", key=other)

    assert running.value.reason == done.value.reason == "REQUEST_ID_REUSED"
    assert len(model.calls) == 1


async def test_a_turn_that_failed_runs_again_on_retry(
    chats: ChatSessions, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    """Nothing of a failed turn was stored, its request id included: the retry runs it."""
    await new_session(store, clock)
    model.answer(Unavailable("overloaded", reason="UPSTREAM_UNAVAILABLE"))
    model.answer("Hello!")

    with pytest.raises(Unavailable):
        await run_turn(chats, "hi", key=KEY)
    retried = await run_turn(chats, "hi", key=KEY)

    assert len(model.calls) == 2
    assert isinstance(retried[-1], TurnCompleted)
    assert await history(store) == ["user: hi", "model: Hello!"]
