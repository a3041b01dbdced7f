"""Writes that, once begun, end before their caller moves on, even when it is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def complete(write: Awaitable[T]) -> T:
    """Awaits `write` to its end, then re-raises a cancellation that came meanwhile.

    For writes made under a session lock: the lock is released only once the write has
    ended, so the next write to the session never overlaps it, and a caller that left
    is told so only when the outcome is settled. The write's own error, if any, is
    raised when no cancellation came; otherwise the cancellation wins.
    """
    task = asyncio.ensure_future(write)
    interrupted: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            interrupted = exc
    if interrupted is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller hears
        raise interrupted
    return task.result()
