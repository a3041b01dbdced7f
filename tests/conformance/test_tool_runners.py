"""Conformance: the ToolRunner contract (server.sessions.ports.ToolRunner), on every
implementation in runners.RUNNERS: the Python registry, the registry behind the tracing
decorator, and MCP server tools over stdio.

Declarations are sorted by name and carry JSON schemas of type object; a call's value comes
back as {"result": ...}; whatever goes wrong with a call (the tool fails, its arguments
break the schema, it takes longer than its timeout, there is no such tool) is an error
outcome {"error": "..."} the model can read, never an exception; cancellation propagates;
and the runner serves calls after any of those.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from server.sessions.ports import ToolOutcome, ToolRunner

from .runners import ADD, FAIL, STALL, STALL_TIMEOUT

# The MCP server is started once per module, so every test runs in the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


def error_of(outcome: ToolOutcome) -> str:
    assert outcome.is_error, outcome
    assert set(outcome.response) == {"error"}, outcome.response
    message = outcome.response["error"]
    assert isinstance(message, str) and message
    return message


async def test_declarations_are_sorted_by_name_with_object_schemas(runner: ToolRunner) -> None:
    declarations = runner.declarations()

    names = [d.name for d in declarations]
    assert names == sorted(names) == [ADD, FAIL, STALL]
    assert runner.names() == frozenset(names)
    add = next(d for d in declarations if d.name == ADD)
    assert add.description == "Adds two integers."
    assert add.parameters is not None
    assert add.parameters["type"] == "object"
    assert sorted(add.parameters["required"]) == ["a", "b"]
    assert {p["type"] for p in add.parameters["properties"].values()} == {"integer"}
    for declaration in declarations:
        assert declaration.parameters is not None
        assert declaration.parameters["type"] == "object"
        json.dumps(declaration.parameters)  # JSON, as it goes to the model


async def test_a_call_returns_its_value_as_the_result(runner: ToolRunner) -> None:
    outcome = await runner.run(ADD, {"a": 2, "b": 3})

    assert outcome == ToolOutcome({"result": "5"}, is_error=False)


async def test_a_tool_that_fails_is_an_error_outcome_with_its_message(runner: ToolRunner) -> None:
    outcome = await runner.run(FAIL, {"reason": "boom"})

    assert "failed: boom" in error_of(outcome)


@pytest.mark.parametrize(
    "args",
    [{"a": "two", "b": 3}, {"a": 2}, {"a": 2, "b": 3, "c": 4}],
    ids=["wrong-type", "missing", "unknown"],
)
async def test_arguments_that_break_the_schema_are_an_error_outcome(
    runner: ToolRunner, args: dict[str, object]
) -> None:
    outcome = await runner.run(ADD, args)

    assert f"invalid arguments for tool {ADD!r}" in error_of(outcome)


async def test_an_unknown_tool_is_an_error_outcome_naming_it(runner: ToolRunner) -> None:
    outcome = await runner.run("t__nowhere", {})

    assert "unknown tool 't__nowhere'" in error_of(outcome)


async def test_a_call_past_its_timeout_is_an_error_outcome_and_calls_go_on(
    runner: ToolRunner,
) -> None:
    outcome = await runner.run(STALL, {})

    assert f"tool {STALL!r} timed out after {STALL_TIMEOUT:g}s" in error_of(outcome)
    assert await runner.run(ADD, {"a": 1, "b": 1}) == ToolOutcome({"result": "2"}, False)


async def test_cancelling_a_call_propagates_and_calls_go_on(runner: ToolRunner) -> None:
    call = asyncio.create_task(runner.run(STALL, {}))
    await asyncio.sleep(0)  # under way

    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
    assert await runner.run(ADD, {"a": 2, "b": 2}) == ToolOutcome({"result": "4"}, False)


async def test_concurrent_calls_each_get_their_own_result(runner: ToolRunner) -> None:
    outcomes = await asyncio.gather(*(runner.run(ADD, {"a": n, "b": n}) for n in range(5)))

    assert [o.response for o in outcomes] == [{"result": str(2 * n)} for n in range(5)]
