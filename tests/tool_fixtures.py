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
