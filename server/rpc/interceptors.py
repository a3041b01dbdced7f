"""Wraps every RPC handler once: admission (auth, rate, stream slots), request ids, the error
table, and one log line per call."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from server.rpc.calls import TENANT
from server.rpc.errors import code_for, rich_status, trailing_metadata
from server.rpc.guards import ApiKeys, RateLimiter, StreamSlots
from server.sessions.errors import ChatdError
from server.sessions.model import DEFAULT_TENANT

log = structlog.get_logger("chatd.rpc")

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    Handler = grpc.RpcMethodHandler
Context = grpc.aio.ServicerContext[Any, Any]

INTERNAL_MESSAGE = "internal error: the server logged the details"
REQUEST_ID_KEY = "x-request-id"
# Open to everyone, also when API keys are required: probes and tooling need them.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass
class Admission:
    """Who may call (API keys; none = everyone is the default tenant) and how much."""

    keys: ApiKeys
    rate: RateLimiter
    streams: StreamSlots

    def tenant(self, method: str, metadata: dict[str, str]) -> str:
        if method.startswith(OPEN_SERVICES):
            return DEFAULT_TENANT
        tenant = self.keys.tenant(metadata.get("authorization")) if self.keys else DEFAULT_TENANT
        self.rate.take(tenant)
        return tenant


def _metadata(context: Context) -> dict[str, str]:
    return {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }


def _request_id(metadata: dict[str, str]) -> str:
    given = metadata.get(REQUEST_ID_KEY, "")
    return given[:128] if given.isprintable() and given else uuid.uuid4().hex


async def _abort(context: Context, exc: Exception, request_id: str) -> None:
    """Ends the RPC with the status `exc` maps to. Always raises."""
    if isinstance(exc, ChatdError):
        code, message, detail = code_for(exc), exc.message, exc
    else:
        log.error("unhandled exception", exc_info=exc)
        code, message, detail = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, None
    status = rich_status(code, message, detail)
    metadata: tuple[tuple[str, str | bytes], ...] = (
        *trailing_metadata(status),
        (REQUEST_ID_KEY, request_id),
    )
    await context.abort(code, message, metadata)


def _code_name(context: Context) -> str:
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode(code).name if isinstance(code, tuple) else str(code)


def _failed(exc: Exception) -> str:
    return code_for(exc).name if isinstance(exc, ChatdError) else "INTERNAL"


class _Call:
    """One RPC's bookkeeping: its request id, tenant and log line."""

    __slots__ = ("code", "method", "request_id", "start")

    def __init__(self, method: str, admission: Admission, context: Context) -> None:
        structlog.contextvars.clear_contextvars()
        self.method, self.code, self.start = method, "UNKNOWN", time.perf_counter()
        metadata = _metadata(context)
        self.request_id = _request_id(metadata)
        structlog.contextvars.bind_contextvars(request_id=self.request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        self._admit(admission, metadata)

    def _admit(self, admission: Admission, metadata: dict[str, str]) -> None:
        tenant = admission.tenant(self.method, metadata)
        TENANT.set(tenant)
        structlog.contextvars.bind_contextvars(tenant=tenant)

    def finish(self) -> None:
        duration = round((time.perf_counter() - self.start) * 1e3, 3)
        log.info("rpc", method=self.method, code=self.code, duration_ms=duration)


def _wrap_unary(
    method: str, inner: Callable[[Any, Any], Awaitable[Any]], admission: Admission
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Context) -> Any:
        request_id = ""
        call = None
        try:
            call = _Call(method, admission, context)
            request_id = call.request_id
            result = await inner(request, context)
            call.code = _code_name(context)
            return result
        except asyncio.CancelledError:
            if call is not None:
                call.code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            if call is not None:
                call.code = _code_name(context)
            raise
        except Exception as exc:
            if call is not None:
                call.code = _failed(exc)
            await _abort(context, exc, request_id or uuid.uuid4().hex)
        finally:
            if call is not None:
                call.finish()

    return handler


def _wrap_stream(
    method: str, inner: Callable[[Any, Any], AsyncIterator[Any]], admission: Admission
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        request_id = ""
        call = None
        slot = False
        try:
            call = _Call(method, admission, context)
            request_id = call.request_id
            admission.streams.acquire()
            slot = True
            async for response in inner(request, context):
                yield response
            call.code = _code_name(context)
        except (asyncio.CancelledError, GeneratorExit):
            if call is not None:
                call.code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            if call is not None:
                call.code = _code_name(context)
            raise
        except Exception as exc:
            if call is not None:
                call.code = _failed(exc)
            await _abort(context, exc, request_id or uuid.uuid4().hex)
        finally:
            if slot:
                admission.streams.release()
            if call is not None:
                call.finish()

    return handler


class ErrorsAndLogging(grpc.aio.ServerInterceptor):
    """Applies admission, the error table and the per-RPC log line to every handler."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
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
            "request_deserializer": h.request_deserializer,
            "response_serializer": h.response_serializer,
        }
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, h.unary_unary, self._admission), **serde
            )
        if h.unary_stream is not None:
            # grpc.aio tells write-style streaming handlers (coroutines calling
            # context.write, like health Watch) from generators by their function kind.
            inner = h.unary_stream
            wrapped: Any = (
                _wrap_stream(method, inner, self._admission)
                if inspect.isasyncgenfunction(inner)
                else _wrap_unary(method, inner, self._admission)
            )
            return grpc.unary_stream_rpc_method_handler(wrapped, **serde)
        # Client-streaming handlers (server reflection) keep their own error handling.
        return handler
