"""The gRPC edge's servicer behind connectrpc's ChatService interface, and the admission
interceptor both share with the gRPC edge (server/rpc/interceptors.RpcCall)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import StreamType
from connectrpc.request import RequestContext

from chatd.v1 import chat_service_pb2
from chatd.v1.chat_service_connect import ChatService
from server.http.errors import connect_error, status_name
from server.metrics import NO_RPC_METRICS, RpcObserver
from server.rpc.guards import ByteBudget
from server.rpc.interceptors import REQUEST_ID_KEY, Admission, RpcCall, outcome, wire_error
from server.rpc.servicer import ChatServicer
from server.sessions.errors import InvalidArgument
from server.tracing import Tracing

SERVICE = chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"]
# "/chatd.v1.ChatService/StreamReply" -> its descriptor, for the server-streaming methods.
SERVER_STREAMING = {
    f"/{SERVICE.full_name}/{m.name}": m for m in SERVICE.methods if m.server_streaming
}


def snake(name: str) -> str:
    """A proto method name as connectrpc's generated Python names it: StreamReply ->
    stream_reply."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class CallContext:
    """What the servicers use of a call (server/rpc/calls.Context), from Connect's."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: RequestContext[Any, Any]) -> None:
        self._ctx = ctx

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (Connect-Timeout-Ms, grpc-timeout)."""
        remaining = self._ctx.timeout_ms
        return None if remaining is None else max(remaining / 1000, 0.0)


class ConnectChatService:
    """connectrpc's ChatService interface (snake_case methods taking a RequestContext) on
    the gRPC edge's ChatServicer: one servicer, so one codec and one domain call per RPC."""

    def __init__(self, servicer: ChatServicer) -> None:
        self._servicer = servicer
        self._methods: dict[str, Callable[..., Any]] = {}
        for method in SERVICE.methods:
            inner = getattr(servicer, method.name)
            self._methods[snake(method.name)] = _bound(inner)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        try:
            return self._methods[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_service(self) -> ChatService:
        """This object typed as the generated interface (its methods are made per RPC)."""
        return cast(ChatService, self)


def _bound(inner: Callable[..., Any]) -> Callable[..., Any]:
    def call(request: Any, ctx: RequestContext[Any, Any], /) -> Any:
        return inner(request, CallContext(ctx))

    return call


def protocol_of(content_type: str) -> str:
    """The log line's name for the protocol a Content-Type selects."""
    if content_type.startswith("application/grpc-web"):
        return "grpc-web"
    return "connect"


@dataclass(slots=True)
class HttpCall:
    """A call admitted on the HTTP listener: its RpcCall, and the bytes of its body held
    in the large-request budget until it ends (0 when it holds none)."""

    call: RpcCall
    budget: ByteBudget
    size: int = 0


def _content_length(headers: Mapping[str, str]) -> int:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else 0


class Admit:
    """connectrpc metadata interceptor: every call on the HTTP listener goes through the
    gRPC edge's RpcCall, before its request body is read. It takes the bearer key from the
    Authorization header, the request id from x-request-id (echoed as a response header),
    a body of CHATD_LARGE_REQUEST_BYTES or more (by its Content-Length) from the same
    CHATD_LARGE_REQUEST_BUDGET as gRPC's, and turns any error into the same code and
    google.rpc details as on gRPC."""

    def __init__(
        self,
        admission: Admission,
        metrics: RpcObserver = NO_RPC_METRICS,
        tracing: Tracing | None = None,
    ) -> None:
        self._admission = admission
        self._metrics = metrics
        self._tracing = tracing

    def begin(self, ctx: RequestContext[Any, Any], protocol: str) -> HttpCall:
        """Starts and admits a call; raises the ConnectError that refuses it."""
        method = ctx.method
        call = RpcCall(
            f"/{method.service_name}/{method.name}",
            self._admission,
            method.stream_type == StreamType.SERVER_STREAM,
            self._metrics,
            self._tracing,
            # rpc.system of the call's span: gRPC-Web is gRPC's status model.
            "grpc" if protocol == "grpc-web" else "connect_rpc",
            protocol=protocol,
        )
        headers: Mapping[str, str] = ctx.request_headers
        ctx.response_headers[REQUEST_ID_KEY] = call.identify(headers)
        budget = self._admission.memory
        try:
            call.admit(headers)
            size = _content_length(headers)
            if not budget.admits(size):
                raise budget.refusal(size)
        except Exception as exc:
            call.finish(outcome(exc), exc)
            raise connect_error(wire_error(exc)) from exc
        return HttpCall(call, budget, size)

    async def on_start(self, ctx: RequestContext[Any, Any]) -> HttpCall:
        return self.begin(ctx, protocol_of(ctx.request_headers.get("content-type", "")))

    async def on_end(
        self, call: HttpCall, ctx: RequestContext[Any, Any], error: Exception | None, /
    ) -> None:
        """Writes the call's log line and metrics; a chatd error leaves as its Connect
        error (raised here, which connectrpc sends in place of `error`)."""
        end(call, error)


def end(admitted: HttpCall, error: Exception | None) -> None:
    """Ends a call: gives back its budget, writes its log line and metrics; raises the
    ConnectError `error` is sent as."""
    admitted.budget.release(admitted.size)
    admitted.size = 0
    call = admitted.call
    if error is None:
        call.finish("OK")
        return
    if isinstance(error, ConnectError):
        cause = error.__cause__
        if not (error.code == Code.INVALID_ARGUMENT and error.message.startswith("unmarshal")):
            call.finish(status_name(error.code), error)
            return
        # connectrpc could not decode the body: INVALID_ARGUMENT naming the request, as
        # the gRPC edge answers bytes that are not the method's message.
        error = InvalidArgument(
            "request",
            f"is not a valid message for this method ({str(cause or error)[:200]})",
            reason="REQUEST_MALFORMED",
        )
    call.finish(outcome(error), error)
    raise connect_error(wire_error(error)) from error
