"""InstrumentedProvider: a ModelProvider that times each call and counts errors and tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from server.metrics.core import Metrics
from server.metrics.labels import BoundedLabel
from server.sessions.errors import ChatdError
from server.sessions.model import Usage
from server.sessions.ports import (
    ModelChunk,
    ModelProvider,
    ModelRequest,
    SessionResources,
    TokenCount,
    release_session,
)
from server.sessions.stream_watch import watch_stream

# The reason counted for a failure that is not a domain error (the RPC reports INTERNAL).
UNEXPECTED_REASON = "INTERNAL"


def _reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, ChatdError) else UNEXPECTED_REASON


class InstrumentedProvider:
    """Wraps `inner` transparently: the same chunks, exceptions and cancellation; what a
    session's deletion or expiry releases (SessionResources) reaches `inner` if it keeps
    anything per session.

    Each call is timed from stream() to the end of its stream, with outcome "ok", "error"
    or "cancelled" (the consuming task was cancelled or closed the stream early). Tokens
    are counted once per call from the last usage seen, since providers report cumulative
    usage. Models are labelled by the requested name only once a call to it has succeeded
    (or it is the default), at most `max_models` of them: clients choose model names.
    """

    def __init__(
        self, inner: ModelProvider, metrics: Metrics, *, max_models: int = 32, max_reasons: int = 64
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._provider = inner.name
        self._models = BoundedLabel(max_models, (inner.default_model,))
        self._reasons = BoundedLabel(max_reasons)

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def default_model(self) -> str:
        return self._inner.default_model

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        start = time.perf_counter()
        try:
            chunks = self._inner.stream(request)
        except BaseException as exc:
            self._record(request.model, start, _outcome(exc), exc, None)
            raise
        return watch_stream(
            chunks,
            lambda failure, seen: self._record(
                request.model,
                start,
                "ok" if failure is None else _outcome(failure),
                failure,
                seen.usage,
            ),
        )

    def _record(
        self,
        model: str,
        start: float,
        outcome: str,
        failure: BaseException | None,
        usage: Usage | None,
    ) -> None:
        seconds = time.perf_counter() - start
        label = self._models.admit(model) if outcome == "ok" else self._models.get(model)
        self._metrics.record_model_call(self._provider, label, outcome, seconds)
        if outcome == "error" and failure is not None:
            self._metrics.record_model_error(self._provider, self._reasons.admit(_reason(failure)))
        if usage is not None:
            self._metrics.record_tokens(label, usage)

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        return await self._inner.count_tokens(request)

    def release_session(self, tenant: str, session_id: str) -> None:
        release_session(self._inner, tenant, session_id)

    def release_expired(self, now: float) -> None:
        if isinstance(self._inner, SessionResources):
            self._inner.release_expired(now)

    async def close(self) -> None:
        await self._inner.close()


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return "error"


if TYPE_CHECKING:  # mypy checks that the decorator still implements the port
    _implements: type[ModelProvider] = InstrumentedProvider
    _releases: type[SessionResources] = InstrumentedProvider
