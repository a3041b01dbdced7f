"""A turn through TurnEngine: its events, what it stores, what it sends the model, and how
a failed, empty or expired turn leaves the session."""

from __future__ import annotations

import asyncio

import pytest

from server.sessions.engine import TurnEngine, TurnInput
from server.sessions.errors import NotFound, Unavailable
from server.sessions.model import (
    FinishReason,
    FunctionDeclaration,
    GenerationConfig,
    Role,
    Usage,
)
from server.store import MemoryStore
from tests.scripted_model import Gate, ScriptedModel

from .conftest import TENANT, Clock, history, kinds, new_session, outcome, run, said


async def test_a_turn_streams_then_stores_the_message_and_the_answer_together(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)
    clock.advance(5)
    model.answer("Hel", "lo!", usage=Usage(prompt_tokens=3, candidates_tokens=2, total_tokens=5))

    events = await run(engine, "hi")

    assert kinds(events) == ["message", "text", "message", "completed"]
    reply = outcome(events).reply
    assert reply.text == "Hello!"
    assert reply.finish_reason is FinishReason.STOP
    assert reply.usage == Usage(prompt_tokens=3, candidates_tokens=2, total_tokens=5)
    assert [(m.role, m.seq, m.create_time) for m in reply.messages] == [
        (Role.USER, 0, clock.now),
        (Role.MODEL, 1, clock.now),
    ]
    assert {m.turn_id for m in reply.messages} == {reply.turn_id}
    assert reply.messages[1].model == model.default_model
    assert await history(store) == ["user: hi", "model: Hello!"]
    stored = await store.recent_messages(TENANT, "s")
    assert list(reply.messages) == stored
    session = await store.get_session(TENANT, "s")
    assert (session.next_seq, session.message_count, session.version) == (2, 2, 2)
    assert session.usage == reply.usage
    assert session.update_time == clock.now


async def test_the_next_turn_sends_the_history_and_the_session_adds_up_usage(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)
    model.answer("one", usage=Usage(prompt_tokens=1, candidates_tokens=1, total_tokens=2))
    model.answer("two", usage=Usage(prompt_tokens=3, candidates_tokens=1, total_tokens=4))

    await run(engine, "first")
    await run(engine, "second")

    second = model.requests[1]
    assert [m.text for m in second.contents] == ["first", "one", "second"]
    assert await history(store) == ["user: first", "model: one", "user: second", "model: two"]
    session = await store.get_session(TENANT, "s")
    assert session.usage == Usage(prompt_tokens=4, candidates_tokens=2, total_tokens=6)
    assert session.version == 3


async def test_the_session_settings_and_the_turn_shape_the_model_request(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    lookup = FunctionDeclaration("lookup", "Looks a word up.", {"type": "object"})
    await new_session(
        store,
        clock,
        model="model-b",
        system_instruction="Be brief.",
        generation_config=GenerationConfig(temperature=0.5, top_k=3),
        tools=("double",),
        function_declarations=(lookup,),
        labels={"team": "a"},
    )
    model.answer("ok")
    turn = TurnInput(
        parts=said("hi").parts, config_override=GenerationConfig(top_k=7), timeout=12.5
    )

    await run(engine, turn)

    [request] = model.requests
    assert request.model == "model-b"
    assert request.system_instruction == "Be brief."
    assert request.generation_config.temperature == 0.5
    assert request.generation_config.top_k == 7, "the turn's override wins"
    assert [d.name for d in request.function_declarations] == ["double", "lookup"]
    assert request.timeout == 12.5
    assert request.allow_function_calls
    assert request.labels == {"team": "a"}


@pytest.mark.parametrize("chunks_before", [0, 1], ids=["before-any-chunk", "mid-stream"])
async def test_a_model_error_leaves_history_and_the_session_as_they_were(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock, chunks_before: int
) -> None:
    await new_session(store, clock)
    model.answer("kept")
    await run(engine, "first")
    before = await store.get_session(TENANT, "s")
    model.answer(*["par"] * chunks_before, Unavailable("overloaded", reason="UPSTREAM_UNAVAILABLE"))

    with pytest.raises(Unavailable):
        await run(engine, "second")

    assert await history(store) == ["user: first", "model: kept"]
    assert await store.get_session(TENANT, "s") == before
    # The session takes the next turn as if the failed one had never been.
    model.answer("again")
    assert outcome(await run(engine, "second")).reply.messages[0].seq == 2


async def test_an_answer_without_content_stores_nothing_and_says_so(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)
    model.answer(finish_reason=FinishReason.SAFETY)

    reply = outcome(await run(engine, "hi")).reply

    assert reply.no_content
    assert "finish reason SAFETY" in reply.no_content_reason
    assert reply.unstored_message is not None and reply.unstored_message.text == "hi"
    assert reply.messages == ()
    assert await history(store) == []
    assert (await store.get_session(TENANT, "s")).version == 1


async def test_a_turn_on_a_missing_or_expired_session_is_not_found(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock, ttl_seconds=60)
    with pytest.raises(NotFound):
        await run(engine, "hi", session_id="nope")
    clock.advance(60)
    with pytest.raises(NotFound):
        await run(engine, "hi")
    assert model.calls == []


async def test_a_session_that_expires_while_the_model_answers_stores_nothing(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock, ttl_seconds=60)
    gate = Gate()
    model.answer("slow ", gate, "answer")
    turn = asyncio.create_task(run(engine, "hi"))
    await gate.reached.wait()

    clock.advance(61)
    gate.open()

    with pytest.raises(NotFound):
        await turn
    assert await store.recent_messages(TENANT, "s") == []
