"""InstrumentedStore: a SessionStore that times every operation by its outcome."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import TYPE_CHECKING

from server.metrics.core import Metrics
from server.sessions.errors import AlreadyExists, Conflict, DuplicateRequest, NotFound
from server.sessions.ports import (
    SessionStore,
)
from server.sessions.store_wrapper import StoreWrapper


def store_outcome(exc: BaseException | None) -> str:
    """ok, the store contract's answers (not_found, conflict, duplicate), cancelled or error."""
    if exc is None:
        return "ok"
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, Conflict):
        return "conflict"
    if isinstance(exc, AlreadyExists | DuplicateRequest):
        return "duplicate"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


class _Timed:
    """Times one operation; never swallows what the operation raised."""

    __slots__ = ("_metrics", "_operation", "_start")

    def __init__(self, metrics: Metrics, operation: str) -> None:
        self._metrics = metrics
        self._operation = operation
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        seconds = time.perf_counter() - self._start
        self._metrics.record_store_operation(self._operation, store_outcome(exc), seconds)


class InstrumentedStore(StoreWrapper):
    """Wraps `inner` transparently, recording each method under its own name."""

    def __init__(self, inner: SessionStore, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics

    def _around(self, operation: str) -> _Timed:
        return _Timed(self._metrics, operation)


if TYPE_CHECKING:  # mypy checks that the decorator still implements the port
    _implements: type[SessionStore] = InstrumentedStore
