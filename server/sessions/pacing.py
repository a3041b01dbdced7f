"""Long CPU work on the event loop in short slices, so other calls keep being served.

Two things hold the loop during work on a big history: the conversion itself, which a
`Pacer` cuts into slices of a few milliseconds, and CPython's full garbage collection,
which walks every live object (about 65 ms per 100,000 messages in memory) and fires
again and again while such a history is being built. `deferred_full_collection()` keeps
full collections off while heavy work runs; young collections go on as usual (they walk
only what was allocated lately), and the next full collection comes after the work, when
its big objects are gone again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from server.sessions.errors import InvalidArgument

T = TypeVar("T")
R = TypeVar("R")

# Slices of a few milliseconds: health checks and small calls wait at most about this
# long for the loop, and a 300,000-message document still takes only a few hundred yields.
SLICE_SECONDS = 0.004
# Between slices the loop waits this long in its poll, with the GIL released. A bare
# sleep(0) would let other tasks run but keep the GIL: grpc's poller thread, which hands
# every completed read and write to the loop, would then get the GIL once per switch
# interval (5 ms), one completion at a time, and every RPC would stall behind it.
GIL_BREAK_SECONDS = 0.001
_NEVER = 1 << 30


class _Deferral:
    holders = 0
    thresholds: tuple[int, int, int] = (0, 0, 0)


def _restore() -> None:
    if _Deferral.holders == 0 and gc.get_threshold()[2] == _NEVER:
        gc.set_threshold(*_Deferral.thresholds)


@contextlib.contextmanager
def deferred_full_collection() -> Iterator[None]:
    """While any such block runs, the oldest generation is never collected automatically.

    The old threshold comes back only on the next turn of the event loop, once the
    caller has returned and dropped its big objects: restored at once, the collection it
    owes would walk them all one last time.
    """
    if _Deferral.holders == 0 and gc.get_threshold()[2] != _NEVER:
        _Deferral.thresholds = gc.get_threshold()
        first, second, _ = _Deferral.thresholds
        gc.set_threshold(first, second, _NEVER)
    _Deferral.holders += 1
    try:
        yield
    finally:
        _Deferral.holders -= 1
        if _Deferral.holders == 0:
            try:
                asyncio.get_running_loop().call_soon(_restore)
            except RuntimeError:
                _restore()


class Pacer:
    """`await pacer.tick()` after each unit of work: yields to the loop once a slice is used.

    Reading the clock costs about 50 ns, far less than converting one message, so it is
    checked every tick rather than every N items (items vary from bytes to megabytes).
    """

    __slots__ = ("_deadline", "_slice")

    def __init__(self, slice_seconds: float = SLICE_SECONDS) -> None:
        self._slice = slice_seconds
        self._deadline = time.perf_counter() + slice_seconds

    async def tick(self) -> None:
        if time.perf_counter() >= self._deadline:
            await asyncio.sleep(GIL_BREAK_SECONDS)
            self._deadline = time.perf_counter() + self._slice


async def paced_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(item) for item in items], yielding to the loop between slices."""
    pacer = Pacer()
    out: list[R] = []
    for item in items:
        out.append(fn(item))
        await pacer.tick()
    return out


# Items checked per slice by check_in_slices (a few ms for messages).
CHECK_SLICE = 2000


def shifted(exc: InvalidArgument, field: str, offset: int) -> InvalidArgument:
    """`exc`, raised for a slice of `field` starting at `offset`, naming the item's place
    in the whole sequence."""
    violation = exc.violations[0]
    renamed = re.sub(
        rf"^{re.escape(field)}\[(\d+)\]",
        lambda m: f"{field}[{int(m.group(1)) + offset}]",
        violation.field,
    )
    return InvalidArgument(renamed, violation.description, reason=exc.reason)


async def check_in_slices(
    check: Callable[[Sequence[T], str], None], items: Sequence[T], field: str
) -> None:
    """check(items, field) for a check that looks at each item alone, a slice at a time,
    yielding between slices; an error names the item's index in the whole sequence."""
    for start in range(0, len(items), CHECK_SLICE):
        try:
            check(items[start : start + CHECK_SLICE], field)
        except InvalidArgument as exc:
            raise shifted(exc, field, start) from None
        await asyncio.sleep(GIL_BREAK_SECONDS)
