"""Hands freed heap memory back to the operating system after large requests (glibc only),
and keeps start-up's objects out of CPython's full garbage collections."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return trim


_TRIM = _load_trim()


def freeze_start_up() -> None:
    """Collects once, then moves every object still alive (modules, classes, the SDK's and
    protobuf's tables: about 100,000 objects with the gemini provider) into CPython's
    permanent generation (https://docs.python.org/3/library/gc.html#gc.freeze).

    A full collection walks every tracked object it is not told to skip: with start-up's
    objects in reach, each one held the event loop for about 120 ms while 200 paced
    streams ran, and every stream's next chunk waited behind it (bench/README.md, "The
    gemini path"). Frozen objects are never collected; start-up's live for the process
    anyway."""
    gc.collect()
    gc.freeze()


class Trimmer:
    """`request()` from the event loop: runs malloc_trim(0) once on a worker thread.

    Decoding a large request leaves its freed pages in glibc's arenas; without a trim the
    process keeps them (RSS stays at the peak). ctypes releases the GIL for the call, so
    the loop keeps serving while the heap is walked. Requests made while a trim runs are
    folded into one more trim after it.
    """

    def __init__(self) -> None:
        self._running = False
        self._again = False
        self.trims = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return _TRIM is not None

    @property
    def running(self) -> bool:
        return self._running

    def request(self) -> None:
        if _TRIM is None:
            return
        if self._running:
            self._again = True
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._running = True
        self._task = loop.create_task(self._run(loop))

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        assert _TRIM is not None
        try:
            while True:
                self._again = False
                await loop.run_in_executor(None, _TRIM, 0)
                self.trims += 1
                if not self._again:
                    return
        finally:
            self._running = False
