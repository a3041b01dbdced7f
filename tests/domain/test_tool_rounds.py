"""chatd's own tool loop: server tools the session enabled run between model calls, their
responses go back to the model, and the round limit ends the loop in words."""

from __future__ import annotations

import pytest

from server.sessions.engine import ROUND_LIMIT_ERROR, TurnEngine
from server.sessions.errors import Unavailable
from server.sessions.events import ToolCallAnswered, ToolCallRequested
from server.sessions.model import FinishReason, Usage
from server.store import MemoryStore
from tests.scripted_model import ScriptedModel, call

from .conftest import (
    MAX_TOOL_ROUNDS,
    TENANT,
    Bench,
    Clock,
    history,
    kinds,
    new_session,
    outcome,
    run,
)


async def test_a_server_tool_round_runs_the_call_and_stores_call_and_response(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock, bench: Bench
) -> None:
    await new_session(store, clock, tools=("double",))
    model.answer(call("double", {"n": 21}), usage=Usage(prompt_tokens=2, total_tokens=2))
    model.answer("It is 42.", usage=Usage(prompt_tokens=5, total_tokens=5))

    events = await run(engine, "twice 21?")

    assert kinds(events) == [
        "message",  # the user's
        "message",  # the model's call
        "call",
        "answer",
        "message",  # the response
        "text",
        "message",
        "completed",
    ]
    requested = next(e for e in events if isinstance(e, ToolCallRequested))
    answered = next(e for e in events if isinstance(e, ToolCallAnswered))
    assert not requested.caller_executed
    assert requested.call.id, "chatd gives the call an id when the model did not"
    assert answered.response.id == requested.call.id
    assert not answered.is_error
    assert bench.runs == ["double(21)"]
    assert await history(store) == [
        "user: twice 21?",
        "model: call double({'n': 21})",
        "user: double -> {'result': 42}",
        "model: It is 42.",
    ]
    # The second call carries the first answer and the response to it.
    second = model.requests[1]
    assert [m.seq for m in second.contents] == [0, 1, 2]
    reply = outcome(events).reply
    assert reply.text == "It is 42."
    assert reply.usage == Usage(prompt_tokens=7, total_tokens=7)
    assert len({m.turn_id for m in reply.messages}) == 1


async def test_the_calls_of_one_round_run_at_the_same_time(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    """Each `meet` call returns only once the other has started: run one after the other,
    the round would never end."""
    await new_session(store, clock, tools=("meet",))
    model.answer(call("meet", {"side": "left"}), call("meet", {"side": "right"}))
    model.answer("They met.")

    await run(engine, "meet")

    assert (await history(store))[2] == (
        "user: meet -> {'result': 'left met right'} | meet -> {'result': 'right met left'}"
    )


async def test_failing_and_unavailable_tools_are_error_responses_the_model_sees(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock, bench: Bench
) -> None:
    await new_session(store, clock, tools=("refuse",))
    model.answer(
        call("refuse", {"why": "no"}),
        call("double", {"n": 1}),  # registered, but not enabled in this session
        call("nowhere", {}),
    )
    model.answer("Sorry.")

    events = await run(engine, "try")

    answers = [e for e in events if isinstance(e, ToolCallAnswered)]
    assert [a.is_error for a in answers] == [True, True, True]
    assert answers[0].response.response == {"error": "refused: no"}
    assert "not available in this session" in str(answers[1].response.response["error"])
    assert "not available in this session" in str(answers[2].response.response["error"])
    assert bench.runs == ["refuse"]
    assert (await history(store))[-1] == "model: Sorry."


async def test_the_round_limit_answers_the_last_calls_with_an_error_and_asks_for_words(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock, bench: Bench
) -> None:
    await new_session(store, clock, tools=("double",))
    for n in range(MAX_TOOL_ROUNDS + 1):
        model.answer(call("double", {"n": n}))
    # Asked without tools, a model that still calls has its calls left out.
    model.answer("Enough.", call("double", {"n": 99}))

    reply = outcome(await run(engine, "again and again")).reply

    assert bench.runs == [f"double({n})" for n in range(MAX_TOOL_ROUNDS)]
    assert [r.allow_function_calls for r in model.requests] == [True] * (MAX_TOOL_ROUNDS + 1) + [
        False
    ]
    assert reply.finish_reason is FinishReason.MAX_TOOL_ROUNDS
    assert reply.text == "Enough."
    stored = await history(store)
    limit = {"error": ROUND_LIMIT_ERROR.format(MAX_TOOL_ROUNDS)}
    assert stored[-2] == f"user: double -> {limit}"
    assert stored[-1] == "model: Enough."
    assert len(stored) == 1 + 2 * (MAX_TOOL_ROUNDS + 1) + 1


async def test_a_model_failure_after_a_tool_round_stores_nothing_of_the_turn(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock, bench: Bench
) -> None:
    await new_session(store, clock, tools=("double",))
    model.answer(call("double", {"n": 2}))
    model.answer(Unavailable("overloaded", reason="UPSTREAM_UNAVAILABLE"))

    with pytest.raises(Unavailable):
        await run(engine, "twice 2?")

    assert bench.runs == ["double(2)"], "the tool ran"
    assert await history(store) == [], "but the turn is stored whole or not at all"
    assert (await store.get_session(TENANT, "s")).version == 1
