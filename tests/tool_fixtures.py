"""Server tools for tests: slow, failing and well-behaved ones, registered like an operator's."""

from __future__ import annotations

import asyncio
import threading

from server.tools import tool

# How long each of a pair of calls waits for the other (and its tool timeout).
PAIR_WAIT = 10.0


class Meeting:
    """Where paired_double and paired_square wait for each other (thread-safe): each
    returns only once both have started, so run one after the other, the first would wait
    until its timeout. Call `reset()` before each test that runs them."""

    def __init__(self) -> None:
        self._barrier = threading.Barrier(2, timeout=PAIR_WAIT)

    def reset(self) -> None:
        self._barrier = threading.Barrier(2, timeout=PAIR_WAIT)

    def arrive(self) -> None:
        """Blocks until the other call arrives; BrokenBarrierError after PAIR_WAIT."""
        self._barrier.wait()


MEETING = Meeting()


@tool(timeout=PAIR_WAIT)
async def paired_double(n: int) -> int:
    """Doubles a number once paired_square has started too.

    Args:
        n: The number to double.
    """
    await asyncio.to_thread(MEETING.arrive)
    return 2 * n


@tool(timeout=PAIR_WAIT)
def paired_square(n: int) -> int:
    """Squares a number, in a worker thread, once paired_double has started too.

    Args:
        n: The number to square.
    """
    MEETING.arrive()
    return n * n


@tool
async def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: What to complain about.
    """
    raise RuntimeError(f"exploded: {reason}")


@tool(timeout=0.1)
async def dawdle() -> str:
    """Never finishes: only its timeout ends it."""
    await asyncio.Event().wait()
    return "never"


# An id bound no double holds exactly (2**63 - 1): ListTools' parameters_json keeps it whole.
LARGEST_ORDER_ID = 9223372036854775807


@tool(
    parameters={
        "type": "object",
        "properties": {"order_id": {"type": "integer", "minimum": 1, "maximum": LARGEST_ORDER_ID}},
        "required": ["order_id"],
    }
)
async def find_order(order_id: int) -> str:
    """Finds an order by id."""
    return f"order {order_id}"
