"""Server tools for tests: slow, failing and well-behaved ones, registered like an operator's."""

from __future__ import annotations

import asyncio
import time

from server.tools import tool


@tool(timeout=2.0)
async def slow_double(n: int) -> int:
    """Doubles a number after a short pause.

    Args:
        n: The number to double.
    """
    await asyncio.sleep(0.3)
    return 2 * n


@tool(timeout=2.0)
def slow_square(n: int) -> int:
    """Squares a number after a short pause, in a worker thread.

    Args:
        n: The number to square.
    """
    time.sleep(0.3)
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
    """Takes longer than its timeout."""
    await asyncio.sleep(5)
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
