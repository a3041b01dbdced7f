"""ToolRegistry.run: outcomes for success and every kind of failure, timeouts, concurrency;
ToolRegistry.replace: one origin's tools swapped while the others keep theirs."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import structlog

from server.sessions.model import Blob
from server.sessions.ports import ToolOutcome, ToolRunner
from server.sessions.values import MAX_JSON_DEPTH
from server.tools import Tool, ToolError, ToolRegistry, ToolResult, tool


@tool
async def add(a: int, b: int = 0) -> int:
    """Adds two integers."""
    return a + b


@tool
def pair(x: str) -> tuple[str, list[tuple[int, int]]]:
    """Returns tuples, which go to the model as lists."""
    return (x, [(1, 2)])


@tool
def explode(message: str) -> None:
    """Raises."""
    raise RuntimeError(message)


@tool
async def refuse(message: str) -> None:
    """Raises ToolError."""
    raise ToolError(message)


@tool
def not_json() -> object:
    """Returns a set."""
    return {"ok": {1, 2}}


@tool
async def own_timeout() -> None:
    """Raises TimeoutError itself, well before its deadline."""
    raise TimeoutError("upstream took too long")


@tool(timeout=0.05)
async def slow() -> str:
    """Never finishes: only its timeout ends it."""
    await asyncio.Event().wait()
    return "never"


# Fails a hung test: how long a tool that must not block for good waits at most.
HANG_GUARD = 30.0


class Latches:
    """Thread-safe events the tools below wait for or report through, made afresh by
    each test (`reset`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.release = threading.Event()  # lets slow_sync's thread finish
        self.finished = threading.Event()  # slow_sync's thread finished
        self.entered = threading.Event()  # a call of wait_for_the_loop started
        self.loop_turn = threading.Event()  # set by the test's event loop
        self.pair = threading.Barrier(2, timeout=HANG_GUARD)  # meet_in_threads' two calls


LATCHES = Latches()


@tool(timeout=0.05)
def slow_sync() -> None:
    """Blocks its thread past its timeout, until the test releases it."""
    LATCHES.release.wait(HANG_GUARD)
    LATCHES.finished.set()


@tool(timeout=HANG_GUARD)
def wait_for_the_loop() -> bool:
    """Blocks its thread until the event loop sets `loop_turn`: which it can only do if
    this runs off the loop. False if it never did."""
    LATCHES.entered.set()
    return LATCHES.loop_turn.wait(HANG_GUARD)


@tool(timeout=HANG_GUARD)
async def meet_on_the_loop() -> str:
    """Returns once a second call has started too."""
    await ON_LOOP.pair.wait()
    return "met"


@tool(timeout=HANG_GUARD)
def meet_in_threads() -> str:
    """Returns once a second call has started too, in its own thread."""
    LATCHES.pair.wait()
    return "met"


class OnTheLoop:
    """asyncio latches of the tools below, made afresh by each test (`reset`): they bind
    to the test's event loop when first used."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = asyncio.Event()  # hang started
        self.stopped = asyncio.Event()  # hang was cancelled
        self.pair = asyncio.Barrier(2)  # meet_on_the_loop's two calls


ON_LOOP = OnTheLoop()


@tool(timeout=HANG_GUARD)
async def hang() -> None:
    """Never finishes, until cancelled."""
    ON_LOOP.started.set()
    try:
        await asyncio.Event().wait()
    finally:
        ON_LOOP.stopped.set()


REGISTRY = ToolRegistry(
    [
        add,
        pair,
        explode,
        refuse,
        not_json,
        own_timeout,
        slow,
        wait_for_the_loop,
        meet_on_the_loop,
        meet_in_threads,
        hang,
    ]
)


@pytest.fixture(autouse=True)
def fresh_latches() -> None:
    LATCHES.reset()
    ON_LOOP.reset()


def test_the_registry_is_a_tool_runner_with_sorted_declarations() -> None:
    runner: ToolRunner = REGISTRY
    names = [d.name for d in runner.declarations()]
    assert names == sorted(names)
    assert runner.names() == frozenset(names)
    assert "add" in REGISTRY and REGISTRY.get("add") is add


async def test_success_wraps_the_return_value_in_result() -> None:
    assert await REGISTRY.run("add", {"a": 2, "b": 3.0}) == ToolOutcome({"result": 5}, False)


async def test_tuples_in_results_become_lists() -> None:
    outcome = await REGISTRY.run("pair", {"x": "p"})
    assert outcome == ToolOutcome({"result": ["p", [[1, 2]]]}, False)


async def test_an_unknown_tool_is_an_error_listing_the_known_ones() -> None:
    outcome = await REGISTRY.run("nope", {})
    assert outcome.is_error
    assert outcome.response["error"] == (
        "unknown tool 'nope'; known tools: add, explode, hang, meet_in_threads, "
        "meet_on_the_loop, not_json, own_timeout, pair, refuse, slow, wait_for_the_loop"
    )


async def test_arguments_breaking_the_schema_are_an_error_naming_them() -> None:
    outcome = await REGISTRY.run("add", {"a": "two", "c": 1})
    assert outcome == ToolOutcome(
        {
            "error": "invalid arguments for tool 'add': args.a: expected integer, got string; "
            "args.c: unknown argument (known: a, b)"
        },
        True,
    )


async def test_an_exception_is_an_error_with_its_type_and_message_and_is_logged() -> None:
    with structlog.testing.capture_logs() as logs:
        outcome = await REGISTRY.run("explode", {"message": "boom"})
    assert outcome == ToolOutcome({"error": "RuntimeError: boom"}, True)
    assert logs == [
        {
            "event": "tool_failed",
            "tool": "explode",
            "error": "RuntimeError: boom",
            "exc_info": True,
            "log_level": "warning",
        }
    ]


async def test_a_tool_error_gives_the_model_just_its_message() -> None:
    outcome = await REGISTRY.run("refuse", {"message": "no such city"})
    assert outcome == ToolOutcome({"error": "no such city"}, True)


async def test_a_tools_own_timeout_error_is_an_ordinary_failure() -> None:
    outcome = await REGISTRY.run("own_timeout", {})
    assert outcome == ToolOutcome({"error": "TimeoutError: upstream took too long"}, True)


async def test_a_slow_async_tool_is_stopped_at_its_timeout() -> None:
    outcome = await REGISTRY.run("slow", {})
    assert outcome == ToolOutcome({"error": "tool 'slow' timed out after 0.05s"}, True)


async def test_a_slow_sync_tool_times_out_without_waiting_for_its_thread() -> None:
    try:
        outcome = await ToolRegistry([slow_sync]).run("slow_sync", {})
        assert outcome == ToolOutcome({"error": "tool 'slow_sync' timed out after 0.05s"}, True)
        assert not LATCHES.finished.is_set(), "the call waited for the tool's thread"
    finally:
        LATCHES.release.set()  # the thread cannot be cancelled: let it finish


async def test_a_sync_tool_runs_off_the_event_loop() -> None:
    """The tool blocks until the loop gives it the go-ahead, which a tool blocking the
    loop itself would never get."""
    call = asyncio.create_task(REGISTRY.run("wait_for_the_loop", {}))
    await asyncio.to_thread(LATCHES.entered.wait, HANG_GUARD)
    LATCHES.loop_turn.set()
    assert await call == ToolOutcome({"result": True}, False)


@pytest.mark.parametrize("name", ["meet_on_the_loop", "meet_in_threads"])
async def test_two_calls_run_concurrently(name: str) -> None:
    """Each call returns only once the other has started."""
    outcomes = await asyncio.gather(REGISTRY.run(name, {}), REGISTRY.run(name, {}))
    assert [o.response for o in outcomes] == [{"result": "met"}] * 2


async def test_a_result_that_is_not_json_is_an_error_saying_so() -> None:
    outcome = await REGISTRY.run("not_json", {})
    assert outcome.is_error
    assert outcome.response["error"] == (
        "tool 'not_json' returned a value that is not JSON: result.ok: set is not JSON-able"
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (float("inf"), "result: inf is not a JSON number"),
        ({1: "a"}, "result: key 1 is not a string"),
        (10**400, "result: integer with 401 digits is too large"),
        (b"bytes", "result: bytes is not JSON-able"),
    ],
)
async def test_values_json_cannot_carry_are_refused(value: Any, why: str) -> None:
    @tool
    def give() -> Any:
        """Returns the value."""
        return value

    outcome = await ToolRegistry([give]).run("give", {})
    assert outcome.response == {"error": f"tool 'give' returned a value that is not JSON: {why}"}


async def test_cancelling_the_turn_cancels_the_call() -> None:
    task = asyncio.create_task(REGISTRY.run("hang", {}))
    await ON_LOOP.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ON_LOOP.stopped.is_set()


def _lists(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 10, 5000])
async def test_a_result_nested_past_the_limit_is_a_tool_error(depth: int) -> None:
    """Stored as {"result": value}, a result may nest MAX_JSON_DEPTH - 1 levels; deeper ones
    (even far past Python's recursion limit) answer the model with a tool error."""

    @tool
    def give() -> Any:
        """Returns the value."""
        return _lists(depth)

    outcome = await ToolRegistry([give]).run("give", {})
    assert outcome.is_error
    assert "nests too deeply" in outcome.response["error"]
    assert str(MAX_JSON_DEPTH) in outcome.response["error"]


async def test_a_result_at_the_limit_is_kept() -> None:
    @tool
    def give() -> Any:
        """Returns the value."""
        return _lists(MAX_JSON_DEPTH - 1)

    outcome = await ToolRegistry([give]).run("give", {})
    assert outcome.response == {"result": _lists(MAX_JSON_DEPTH - 1)}


@tool
def big_text(n: int) -> str:
    """Returns n characters."""
    return "x" * n


@tool
def big_media(n: int) -> ToolResult:
    """Returns an n-byte image beside a short value."""
    return ToolResult("ok", (Blob("image/png", b"\x89" * n),))


async def test_a_result_over_the_limit_is_an_error_naming_its_size_and_the_limit() -> None:
    """A tool (an MCP server's above all) is not trusted to be small: what goes into the
    history is capped, JSON text and media bytes together."""
    registry = ToolRegistry([big_text, big_media], max_result_bytes=1000)
    # {"result": ...} is not counted, only the value: 998 characters and two quotes fit.
    assert not (await registry.run("big_text", {"n": 998})).is_error
    refused = await registry.run("big_text", {"n": 999})
    assert refused.is_error
    assert refused.response == {
        "error": "tool 'big_text' returned 1001 bytes, more than the 1000 a result may hold"
    }
    assert not (await registry.run("big_media", {"n": 996})).is_error  # 4 bytes of "ok"
    assert (await registry.run("big_media", {"n": 997})).is_error


def _origin_tool(name: str, origin: str, answer: str) -> Tool:
    """A tool without arguments that answers `answer`, served for `origin`."""

    async def answer_with() -> str:
        return answer

    return Tool(name, answer, {"type": "object"}, answer_with, source=origin)


async def test_replace_swaps_one_origins_tools_and_leaves_the_others() -> None:
    registry = ToolRegistry([add, _origin_tool("s__a", "server s", "first a")])
    assert registry.served_by("server s") == {"s__a"}
    skipped = registry.replace(
        "server s", [_origin_tool("s__b", "server s", "b"), _origin_tool("s__c", "server s", "c")]
    )
    assert skipped == []
    assert registry.names() == {"add", "s__b", "s__c"}
    assert [d.name for d in registry.declarations()] == ["add", "s__b", "s__c"]
    assert (await registry.run("s__b", {})).response == {"result": "b"}
    gone = await registry.run("s__a", {})
    assert gone.is_error and "unknown tool 's__a'" in gone.response["error"]
    registry.replace("server s", [])
    assert registry.names() == {"add"} and registry.served_by("server s") == frozenset()


async def test_replace_never_takes_a_name_another_origin_serves() -> None:
    python_add = add
    registry = ToolRegistry([python_add, _origin_tool("t__x", "server t", "t's x")])
    clash_python = _origin_tool("add", "server s", "s's add")
    clash_server = _origin_tool("t__x", "server s", "s's x")
    fine = _origin_tool("s__y", "server s", "y")
    skipped = registry.replace("server s", [clash_python, fine, clash_server])
    assert skipped == [(clash_python, python_add.source), (clash_server, "server t")]
    assert registry.get("add") is python_add
    assert (await registry.run("t__x", {})).response == {"result": "t's x"}
    assert registry.served_by("server s") == {"s__y"}
    # Once the holder gives the name up, the same list serves it.
    registry.replace("server t", [])
    assert registry.replace("server s", [clash_server, fine]) == []
    assert (await registry.run("t__x", {})).response == {"result": "s's x"}
