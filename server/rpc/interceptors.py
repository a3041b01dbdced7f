"""Wraps every RPC handler once: admission (auth, rate, stream slots), request ids, the error
table, and one log line per call."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from server.metrics import NO_RPC_METRICS, RpcObserver
from server.rpc.calls import TENANT
from server.rpc.errors import code_for, grpc_status
from server.rpc.guards import ApiKeys, ByteBudget, RateLimiter, StreamSlots
from server.sessions.errors import ChatdError, InvalidArgument, Unauthenticated, Unimplemented
from server.sessions.model import DEFAULT_TENANT
from server.tracing import Tracing

log = structlog.get_logger("chatd.rpc")

if TYPE_CHECKING:
    from server.tracing.rpc import RpcSpan

    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    Handler = grpc.RpcMethodHandler
Context = grpc.aio.ServicerContext[Any, Any]

INTERNAL_MESSAGE = "internal error: the server logged the details"
REQUEST_ID_KEY = "x-request-id"
# Open to everyone, also when API keys are required: probes and tooling need them.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
CHAT_SERVICE = "/chatd.v1.ChatService/"


@dataclass
class Admission:
    """Who may call (API keys; none = everyone is the default tenant) and how much."""

    keys: ApiKeys
    rate: RateLimiter
    streams: StreamSlots
    memory: ByteBudget = field(default_factory=lambda: ByteBudget(0, 0))

    def tenant(self, method: str, metadata: Mapping[str, str], authorizations: int = 1) -> str:
        """The caller's tenant, its rate token taken. `authorizations` is how many
        authorization values the call carried: more than one is refused (UNAUTHENTICATED,
        API_KEY_DUPLICATED), since edges would not agree on which one counts."""
        if method.startswith(OPEN_SERVICES):
            return DEFAULT_TENANT
        if self.keys and authorizations > 1:
            raise Unauthenticated(
                f"{authorizations} authorization values: send exactly one "
                "'authorization: Bearer <key>'",
                reason="API_KEY_DUPLICATED",
            )
        tenant = self.keys.tenant(metadata.get("authorization")) if self.keys else DEFAULT_TENANT
        self.rate.take(tenant)
        return tenant


def _metadata(context: Context) -> tuple[dict[str, str], int]:
    """The call's text metadata by key, and how many authorization values it carried."""
    pairs = [
        (key, value)
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    ]
    return dict(pairs), sum(1 for key, _ in pairs if key == "authorization")


# The longest error message a log line carries.
_LOGGED_MESSAGE_CHARS = 300


def _failure(exc: BaseException | None) -> dict[str, str]:
    """A failed call's log fields: the ErrorInfo reason and the message its caller got."""
    if exc is None or not isinstance(exc, Exception):
        return {}
    if isinstance(exc, ChatdError):
        return {"reason": exc.reason, "error": exc.message[:_LOGGED_MESSAGE_CHARS]}
    # connectrpc's ConnectError (server/http), without importing the HTTP edge here.
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        fields = {"error": message[:_LOGGED_MESSAGE_CHARS]}
        cause = exc.__cause__
        if isinstance(cause, ChatdError):
            fields["reason"] = cause.reason
        return fields
    if isinstance(exc, grpc.aio.AbortError):
        return {}
    # Anything else reached the caller as INTERNAL_FAILURE's generic message.
    return {"reason": "INTERNAL_FAILURE", "error": INTERNAL_MESSAGE}


def _request_id(metadata: Mapping[str, str]) -> str:
    given = metadata.get(REQUEST_ID_KEY, "")
    return given[:128] if given.isprintable() and given else uuid.uuid4().hex


def wire_error(exc: Exception) -> ChatdError:
    """The error a caller sees for `exc`: a ChatdError as it is, the generated servicers'
    NotImplementedError as UNIMPLEMENTED, and anything else as INTERNAL (logged here with
    its traceback, which the caller never sees)."""
    if isinstance(exc, ChatdError):
        return exc
    if isinstance(exc, NotImplementedError):
        # A generated servicer's default for an RPC its implementation lacks.
        return Unimplemented("method not implemented")
    log.error("unhandled exception", exc_info=exc)
    return ChatdError(INTERNAL_MESSAGE, reason="INTERNAL_FAILURE")


def outcome(exc: BaseException) -> str:
    """The status code name (grpc.StatusCode's) that an exception leaving a handler ends
    its RPC with, for the log line and metrics."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    if isinstance(exc, NotImplementedError):
        return "UNIMPLEMENTED"
    if isinstance(exc, ChatdError):
        return code_for(exc).name
    return "INTERNAL" if isinstance(exc, Exception) else "UNKNOWN"


async def _abort(context: Context, exc: Exception, request_id: str) -> None:
    """Ends the RPC with the status `exc` maps to. Always raises."""
    await context.abort_with_status(grpc_status(wire_error(exc), (REQUEST_ID_KEY, request_id)))


def _code_name(context: Context) -> str:
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode(code).name if isinstance(code, tuple) else str(code)


class RpcCall:
    """One RPC's admission, request id, metrics and log line, whatever carries it: the
    grpc.aio edge (server/rpc) and the HTTP edge (server/http) both go through it.

    `identify` picks the call's request id (the caller's x-request-id, or a new one) and
    binds it to the call's log context; `admit` then binds the tenant and takes the call's
    rate token and stream slot (raising the ChatdError that refuses it); `finish` gives the slot
    back and writes the one log line and the metrics, with `code` a grpc.StatusCode name.
    `fields` are added to the log line (the HTTP edge names its protocol there). With
    `tracing`, `identify` also starts the call's server span (rpc.system `system`, the
    caller's traceparent from `metadata`) and `finish` ends it: both in the same task.
    """

    __slots__ = (
        "_admission",
        "_fields",
        "_method",
        "_metrics",
        "_slot",
        "_span",
        "_start",
        "_stream",
        "_system",
        "_tenant",
        "_tracing",
        "request_id",
    )

    def __init__(
        self,
        method: str,
        admission: Admission,
        stream: bool,
        metrics: RpcObserver = NO_RPC_METRICS,
        tracing: Tracing | None = None,
        system: str = "grpc",
        **fields: str,
    ) -> None:
        self._method, self._admission, self._stream = method, admission, stream
        self._metrics, self._fields = metrics, fields
        self._tracing, self._system = tracing, system
        self._span: RpcSpan | None = None
        self._slot = False
        self.request_id = ""
        self._tenant = DEFAULT_TENANT
        structlog.contextvars.clear_contextvars()
        self._start = time.perf_counter()
        self._metrics.rpc_started(method, stream)

    def identify(self, metadata: Mapping[str, str]) -> str:
        # Health probes and reflection are not traced: a probe every few seconds would
        # bury the traces of real calls.
        if self._tracing is not None and not self._method.startswith(OPEN_SERVICES):
            self._span = self._tracing.rpc_span(self._method, metadata, self._system)
            structlog.contextvars.bind_contextvars(trace_id=self._span.trace_id)
        self.request_id = _request_id(metadata)
        structlog.contextvars.bind_contextvars(request_id=self.request_id)
        return self.request_id

    def admit(self, metadata: Mapping[str, str], authorizations: int = 1) -> None:
        tenant = self._admission.tenant(self._method, metadata, authorizations)
        TENANT.set(tenant)
        self._tenant = tenant
        structlog.contextvars.bind_contextvars(tenant=tenant)
        if self._stream:
            self._admission.streams.acquire(tenant)
            self._slot = True

    def finish(self, code: str, exc: BaseException | None = None) -> None:
        """Ends the call with `code` (a grpc.StatusCode name); `exc` is what ended it, if
        anything (recorded on its span)."""
        if self._slot:
            self._slot = False
            self._admission.streams.release(self._tenant)
        seconds = time.perf_counter() - self._start
        self._metrics.rpc_finished(self._method, code, seconds, self._stream)
        if self._span is not None:
            span, self._span = self._span, None
            span.end(code, exc)
        log.info(
            "rpc",
            method=self._method,
            code=code,
            duration_ms=round(seconds * 1e3, 3),
            **self._fields,
            **(_failure(exc) if code != "OK" else {}),
        )


class _Call:
    """`async with _Call(...)` around one grpc.aio RPC: admits it (request id, tenant,
    rate, stream slot), turns an exception into its status, and writes the RPC's log line."""

    __slots__ = ("_call", "_context")

    def __init__(
        self,
        method: str,
        admission: Admission,
        context: Context,
        stream: bool,
        metrics: RpcObserver = NO_RPC_METRICS,
        tracing: Tracing | None = None,
    ) -> None:
        self._context = context
        self._call = RpcCall(method, admission, stream, metrics, tracing)

    async def __aenter__(self) -> None:
        try:
            metadata, authorizations = _metadata(self._context)
            request_id = self._call.identify(metadata)
            self._context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            self._call.admit(metadata, authorizations)
        except Exception as exc:
            # __aexit__ does not run when __aenter__ fails: refuse the call here.
            await self.__aexit__(type(exc), exc, None)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: Any
    ) -> None:
        if exc is None or isinstance(exc, grpc.aio.AbortError):
            code = _code_name(self._context)
        else:
            code = outcome(exc)
        self._call.finish(code, exc)
        if isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
            await _abort(self._context, exc, self._call.request_id or uuid.uuid4().hex)


class _Undecodable:
    """What the request deserializer yields for bytes that are not the method's message:
    grpc would answer UNKNOWN for a deserializer's exception, chatd INVALID_ARGUMENT."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class _Refused:
    """A large request the byte budget had no room for; it was never parsed."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class _Budgeted:
    """A parsed large request holding `size` bytes of the budget until its call ends."""

    __slots__ = ("_budget", "message", "size")

    def __init__(self, message: Any, size: int, budget: ByteBudget) -> None:
        self.message, self.size = message, size
        self._budget: ByteBudget | None = budget

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget.release(self.size)

    def __del__(self) -> None:  # a call that ended before its handler ran
        self.release()


def _lenient(
    deserialize: Callable[[bytes], Any] | None, budget: ByteBudget
) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        size = len(data)
        if not budget.admits(size):
            return _Refused(size)
        try:
            message = deserialize(data)
        except Exception as exc:
            budget.release(size)
            return _Undecodable(str(exc)[:200])
        if budget.budget and size >= budget.threshold:
            return _Budgeted(message, size, budget)
        return message

    return parse


def _decoded(request: Any, budget: ByteBudget) -> Any:
    """The parsed request, or the error that stands for it."""
    if isinstance(request, _Budgeted):
        return request.message
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            "request",
            f"is not a valid message for this method ({request.error})",
            reason="REQUEST_MALFORMED",
        )
    if isinstance(request, _Refused):
        raise budget.refusal(request.size)
    return request


def _release(request: Any) -> None:
    if isinstance(request, _Budgeted):
        request.release()


async def _decoded_stream(requests: AsyncIterator[Any], budget: ByteBudget) -> AsyncIterator[Any]:
    """A client stream's messages, parsed; each large one gives its bytes back once read."""
    async for request in requests:
        message = _decoded(request, budget)
        _release(request)
        yield message


def _wrap_unary(
    method: str,
    inner: Callable[[Any, Any], Awaitable[Any]],
    admission: Admission,
    metrics: RpcObserver,
    tracing: Tracing | None,
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Context) -> Any:
        try:
            async with _Call(method, admission, context, False, metrics, tracing):
                return await inner(_decoded(request, admission.memory), context)
        finally:
            _release(request)

    return handler


def _wrap_stream(
    method: str,
    inner: Callable[[Any, Any], AsyncIterator[Any]],
    admission: Admission,
    metrics: RpcObserver,
    tracing: Tracing | None,
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async with _Call(method, admission, context, True, metrics, tracing):
                async for response in inner(_decoded(request, admission.memory), context):
                    yield response
        finally:
            _release(request)

    return handler


def _wrap_client_stream(
    method: str,
    inner: Callable[[Any, Any], Awaitable[Any]],
    admission: Admission,
    metrics: RpcObserver,
    tracing: Tracing | None,
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(requests: AsyncIterator[Any], context: Context) -> Any:
        # Not counted as a stream slot: refused before its first read, a client stream's
        # next write fails in the client and grpc clients report INTERNAL, not our status.
        async with _Call(method, admission, context, False, metrics, tracing):
            return await inner(_decoded_stream(requests, admission.memory), context)

    return handler


class ErrorsAndLogging(grpc.aio.ServerInterceptor):
    """Applies admission, the error table and the per-RPC log line to every handler."""

    def __init__(
        self,
        admission: Admission,
        metrics: RpcObserver | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._admission = admission
        self._metrics = NO_RPC_METRICS if metrics is None else metrics
        self._tracing = tracing
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        h: Any = handler
        serde = {
            "request_deserializer": _lenient(h.request_deserializer, self._admission.memory),
            "response_serializer": h.response_serializer,
        }
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, h.unary_unary, self._admission, self._metrics, self._tracing),
                **serde,
            )
        if h.unary_stream is not None:
            # grpc.aio tells write-style streaming handlers (coroutines calling
            # context.write, like health Watch) from generators by their function kind.
            inner = h.unary_stream
            wrapped: Any = (
                _wrap_stream(method, inner, self._admission, self._metrics, self._tracing)
                if inspect.isasyncgenfunction(inner)
                else _wrap_unary(method, inner, self._admission, self._metrics, self._tracing)
            )
            return grpc.unary_stream_rpc_method_handler(wrapped, **serde)
        if h.stream_unary is not None and method.startswith(CHAT_SERVICE):
            return grpc.stream_unary_rpc_method_handler(
                _wrap_client_stream(
                    method, h.stream_unary, self._admission, self._metrics, self._tracing
                ),
                **serde,
            )
        # Server reflection's bidirectional stream keeps its own error handling.
        return handler
