"""TracedProvider: a ModelProvider whose every call is a GenAI client span.

Follows the OpenTelemetry GenAI semantic conventions, v1.37.0
(https://github.com/open-telemetry/semantic-conventions/blob/v1.37.0/docs/gen-ai/gen-ai-spans.md,
the release that introduced gen_ai.provider.name; opentelemetry-semantic-conventions
0.66b2 carries the same attribute names): span name "chat {gen_ai.request.model}", kind
CLIENT, gen_ai.operation.name "chat", gen_ai.provider.name, gen_ai.request.model,
gen_ai.response.model, gen_ai.usage.input_tokens, gen_ai.usage.output_tokens,
gen_ai.response.finish_reasons, and error.type on failure; the request's sampling
settings that are set (gen_ai.request.temperature, top_p, top_k, max_tokens, seed,
presence_penalty, frequency_penalty, stop_sequences). gen_ai.system, which
gen_ai.provider.name replaced, is set too for back ends that still read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from server.sessions.errors import ChatdError
from server.sessions.ports import (
    ModelChunk,
    ModelProvider,
    ModelRequest,
    SessionResources,
    TokenCount,
    release_session,
)
from server.sessions.stream_watch import StreamSeen, watch_stream
from server.tracing.setup import Tracing


def error_type(exc: BaseException) -> str:
    """error.type: a domain error's reason (UPSTREAM_RATE_LIMITED...), else the class name."""
    return exc.reason if isinstance(exc, ChatdError) else type(exc).__qualname__


class TracedProvider:
    """Wraps `inner` transparently: the same chunks, exceptions and cancellation; what a
    session's deletion or expiry releases (SessionResources) reaches `inner` if it keeps
    anything per session.

    `provider_name` is gen_ai.provider.name ("gcp.gemini", "gcp.vertex_ai", or chatd's
    own "chatd.echo"), `system` the older gen_ai.system value ("gemini", "vertex_ai",
    "echo"). The span lasts from stream() to the end of the stream; usage and finish
    reason are the last ones the stream reported (providers report them cumulatively).
    """

    def __init__(
        self, inner: ModelProvider, tracing: Tracing, provider_name: str, system: str
    ) -> None:
        self._inner = inner
        self._tracer = tracing.tracer
        self._static: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider_name,
            "gen_ai.system": system,
        }

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def default_model(self) -> str:
        return self._inner.default_model

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        attributes: dict[str, AttributeValue] = {
            **self._static,
            "gen_ai.request.model": request.model,
        }
        config = request.generation_config
        for name, value in (
            ("temperature", config.temperature),
            ("top_p", config.top_p),
            ("top_k", config.top_k),
            ("max_tokens", config.max_output_tokens),
            ("seed", config.seed),
            ("presence_penalty", config.presence_penalty),
            ("frequency_penalty", config.frequency_penalty),
            ("stop_sequences", config.stop_sequences),
        ):
            if value is not None:
                attributes[f"gen_ai.request.{name}"] = value
        span = self._tracer.start_span(
            f"chat {request.model}", kind=SpanKind.CLIENT, attributes=attributes
        )
        try:
            with trace.use_span(span, end_on_exit=False):
                chunks = self._inner.stream(request)
        except BaseException as exc:
            _failed(span, exc)
            span.end()
            raise
        return watch_stream(chunks, lambda failure, seen: self._end(span, failure, seen))

    @staticmethod
    def _end(span: trace.Span, failure: BaseException | None, seen: StreamSeen) -> None:
        if seen.model_version:
            span.set_attribute("gen_ai.response.model", seen.model_version)
        if seen.finish_reason is not None:
            span.set_attribute(
                "gen_ai.response.finish_reasons", (seen.finish_reason.value.lower(),)
            )
        if seen.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", seen.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", seen.usage.candidates_tokens)
        if failure is not None:
            _failed(span, failure)
        span.end()

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        return await self._inner.count_tokens(request)

    def release_session(self, tenant: str, session_id: str) -> None:
        release_session(self._inner, tenant, session_id)

    def release_expired(self, now: float) -> None:
        if isinstance(self._inner, SessionResources):
            self._inner.release_expired(now)

    async def close(self) -> None:
        await self._inner.close()


def _failed(span: trace.Span, exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        span.set_attribute("error.type", "cancelled")
        return
    span.set_attribute("error.type", error_type(exc))
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


if TYPE_CHECKING:  # mypy checks that the decorator still implements the port
    _implements: type[ModelProvider] = TracedProvider
    _releases: type[SessionResources] = TracedProvider
