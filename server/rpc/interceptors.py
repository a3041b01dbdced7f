"""Wraps every RPC handler: domain errors become statuses, and one log line records each call."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from server.rpc.errors import code_for, rich_status, trailing_metadata
from server.sessions.errors import ChatdError

log = structlog.get_logger("chatd.rpc")

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    Handler = grpc.RpcMethodHandler
INTERNAL_MESSAGE = "internal error: the server logged the details"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    """Ends the RPC with the status `exc` maps to. Always raises."""
    if isinstance(exc, ChatdError):
        code, message, detail = code_for(exc), exc.message, exc
    else:
        log.error("unhandled exception", exc_info=exc)
        code, message, detail = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, None
    status = rich_status(code, message, detail)
    await context.abort(code, message, trailing_metadata(status))


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode(code).name if isinstance(code, tuple) else str(code)


def _finish(method: str, start: float, code: str) -> None:
    log.info(
        "rpc", method=method, code=code, duration_ms=round((time.perf_counter() - start) * 1e3, 3)
    )


def _wrap_unary(
    method: str, inner: Callable[[Any, Any], Awaitable[Any]]
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        structlog.contextvars.clear_contextvars()
        start = time.perf_counter()
        code = "UNKNOWN"
        try:
            result = await inner(request, context)
            code = _code_name(context)
            return result
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = _code_name(context)
            raise
        except Exception as exc:
            code = code_for(exc).name if isinstance(exc, ChatdError) else "INTERNAL"
            await _abort(context, exc)
        finally:
            _finish(method, start, code)

    return handler


def _wrap_stream(
    method: str, inner: Callable[[Any, Any], AsyncIterator[Any]]
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        structlog.contextvars.clear_contextvars()
        start = time.perf_counter()
        code = "UNKNOWN"
        try:
            async for response in inner(request, context):
                yield response
            code = _code_name(context)
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = _code_name(context)
            raise
        except Exception as exc:
            code = code_for(exc).name if isinstance(exc, ChatdError) else "INTERNAL"
            await _abort(context, exc)
        finally:
            _finish(method, start, code)

    return handler


class ErrorsAndLogging(grpc.aio.ServerInterceptor):
    """Applies the error table and the per-RPC log line to every handler, once per method."""

    def __init__(self) -> None:
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

    @staticmethod
    def _wrap(method: str, handler: Handler) -> Handler:
        h: Any = handler
        serde = {
            "request_deserializer": h.request_deserializer,
            "response_serializer": h.response_serializer,
        }
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(method, h.unary_unary), **serde)
        if h.unary_stream is not None:
            # grpc.aio tells write-style streaming handlers (coroutines calling
            # context.write, like health Watch) from generators by their function kind.
            inner = h.unary_stream
            wrap = _wrap_stream if inspect.isasyncgenfunction(inner) else _wrap_unary
            return grpc.unary_stream_rpc_method_handler(wrap(method, inner), **serde)
        # Client-streaming handlers (server reflection) keep their own error handling.
        return handler
