"""Caller-executed tools: a call to a function the session declared pauses the turn (stored,
awaiting tool results), and the caller's results resume the same turn; results that do not
answer the pending calls exactly are refused and leave the turn paused."""

from __future__ import annotations

import pytest

from server.sessions.engine import TurnEngine, TurnInput
from server.sessions.errors import FailedPrecondition, InvalidArgument, Unavailable
from server.sessions.events import ToolCallAnswered, ToolCallRequested
from server.sessions.model import FinishReason, FunctionDeclaration, SessionState
from server.sessions.tool_calls import ToolResultInput
from server.store import MemoryStore
from tests.scripted_model import ScriptedModel, call

from .conftest import TENANT, Bench, Clock, history, kinds, new_session, outcome, run

LOOKUP = FunctionDeclaration("lookup", "Looks a word up.", {"type": "object"})


def results(*answers: tuple[str, object]) -> TurnInput:
    return TurnInput(
        tool_results=tuple(ToolResultInput(i, {"result": value}, False) for i, value in answers)
    )


async def paused(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock, *calls: str
) -> str:
    """A session whose turn is paused on a lookup call per id in `calls`; its turn id."""
    await new_session(store, clock, tools=("double",), function_declarations=(LOOKUP,))
    model.answer(*(call("lookup", {"word": i}, call_id=i) for i in calls))
    return outcome(await run(engine, "look them up")).reply.turn_id


async def test_a_call_to_a_declared_function_pauses_the_turn_and_results_resume_it(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock, function_declarations=(LOOKUP,))
    model.answer("Let me see.", call("lookup", {"word": "chatd"}, call_id="c1"))

    first = await run(engine, "what is chatd?")

    requested = next(e for e in first if isinstance(e, ToolCallRequested))
    assert requested.caller_executed
    reply = outcome(first).reply
    assert reply.finish_reason is FinishReason.TOOL_CALLS_PENDING
    assert [c.id for c in reply.pending_tool_calls] == ["c1"]
    session = await store.get_session(TENANT, "s")
    assert session.state is SessionState.AWAITING_TOOL_RESULTS
    assert session.pending is not None and session.pending.turn_id == reply.turn_id
    assert await history(store) == [
        "user: what is chatd?",
        "model: Let me see. | call lookup({'word': 'chatd'})",
    ]

    model.answer("A chat service.")
    resumed = await run(engine, results(("c1", "a chat daemon")))

    assert kinds(resumed) == ["answer", "message", "text", "message", "completed"]
    answered = next(e for e in resumed if isinstance(e, ToolCallAnswered))
    assert answered.response.id == "c1" and not answered.is_error
    done = outcome(resumed).reply
    assert done.turn_id == reply.turn_id, "the results continue the same turn"
    assert done.finish_reason is FinishReason.STOP
    assert (await store.get_session(TENANT, "s")).pending is None
    assert (await history(store))[2:] == [
        "user: lookup -> {'result': 'a chat daemon'}",
        "model: A chat service.",
    ]
    assert [m.seq for m in model.requests[1].contents] == [0, 1, 2]


async def test_a_new_message_while_results_are_pending_is_refused(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await paused(engine, store, model, clock, "c1")

    with pytest.raises(FailedPrecondition) as refused:
        await run(engine, "hello?")

    assert refused.value.reason == "TOOL_RESULTS_PENDING"
    assert len(model.calls) == 1


async def test_results_without_a_pending_call_are_refused(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    await new_session(store, clock)

    with pytest.raises(FailedPrecondition) as refused:
        await run(engine, results(("c1", "x")))

    assert refused.value.reason == "NO_PENDING_TOOL_CALLS"
    assert model.calls == []


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        pytest.param([("c9", "x")], "TOOL_CALL_UNKNOWN", id="unknown-id"),
        pytest.param([("c1", "x")], "TOOL_RESULTS_MISSING", id="missing"),
        pytest.param([("c1", "x"), ("c1", "y"), ("c2", "z")], "TOOL_CALL_ANSWERED", id="twice"),
    ],
)
async def test_results_that_do_not_answer_each_pending_call_once_are_refused(
    engine: TurnEngine,
    store: MemoryStore,
    model: ScriptedModel,
    clock: Clock,
    answers: list[tuple[str, object]],
    reason: str,
) -> None:
    await paused(engine, store, model, clock, "c1", "c2")
    before = await store.get_session(TENANT, "s")

    with pytest.raises(InvalidArgument) as refused:
        await run(engine, results(*answers))

    assert refused.value.reason == reason
    assert await store.get_session(TENANT, "s") == before, "still paused, unchanged"
    model.answer("Both found.")
    done = outcome(await run(engine, results(("c2", "b"), ("c1", "a")))).reply
    assert done.text == "Both found."
    # Responses go back in the order of the calls, whatever the order of the results.
    assert (await history(store))[2] == (
        "user: lookup -> {'result': 'a'} | lookup -> {'result': 'b'}"
    )


async def test_a_mixed_round_runs_the_server_calls_and_waits_only_for_the_callers(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock, bench: Bench
) -> None:
    await new_session(store, clock, tools=("double",), function_declarations=(LOOKUP,))
    model.answer(
        call("double", {"n": 4}, call_id="s1"), call("lookup", {"word": "w"}, call_id="c1")
    )

    reply = outcome(await run(engine, "both")).reply

    assert bench.runs == ["double(4)"]
    assert [c.id for c in reply.pending_tool_calls] == ["c1"]
    # The server call is answered already: answering it again is refused.
    with pytest.raises(InvalidArgument) as refused:
        await run(engine, results(("s1", 8), ("c1", "x")))
    assert refused.value.reason == "TOOL_CALL_ANSWERED"

    model.answer("8 and x.")
    resumed = await run(engine, results(("c1", "x")))

    assert [e.response.id for e in resumed if isinstance(e, ToolCallAnswered)] == ["c1"]
    assert (await history(store))[2:] == [
        "user: double -> {'result': 8} | lookup -> {'result': 'x'}",
        "model: 8 and x.",
    ]


async def test_a_resume_that_fails_leaves_the_turn_paused_for_another_try(
    engine: TurnEngine, store: MemoryStore, model: ScriptedModel, clock: Clock
) -> None:
    turn_id = await paused(engine, store, model, clock, "c1")
    before = await store.get_session(TENANT, "s")
    model.answer(Unavailable("overloaded", reason="UPSTREAM_UNAVAILABLE"))

    with pytest.raises(Unavailable):
        await run(engine, results(("c1", "x")))

    assert await store.get_session(TENANT, "s") == before
    model.answer("Found.")
    assert outcome(await run(engine, results(("c1", "x")))).reply.turn_id == turn_id
