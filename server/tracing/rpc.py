"""RpcSpan: the server span of one RPC, for any edge that serves chatd's RPCs.

Protocol-neutral: it takes the full method path, the request's headers or metadata as
lower-case names to string values (for the W3C `traceparent` / `tracestate` of the
caller), and the status code by its gRPC name. The gRPC edge (server.rpc.interceptors)
and an HTTP edge serving the same service (Connect, gRPC-Web) call it alike:

    span = tracing.rpc_span("/chatd.v1.ChatService/CreateSession", headers, "connect_rpc")
    try:
        ...   # the handler runs with the span current: model, tool and store spans nest
    finally:
        span.end("NOT_FOUND", error)   # the gRPC code name the call ended with

`tracing` is RunningServer.tracing (None when tracing is off: then skip both calls).
start and end must run in the same task, since the span is current through contextvars.

Attributes follow the RPC semantic conventions (v1.37.0, rpc-spans.md: span name
"{rpc.service}/{rpc.method}", kind SERVER, rpc.system, rpc.service, rpc.method,
rpc.grpc.status_code for gRPC and rpc.connect_rpc.error_code for Connect), and a server
span's status is ERROR only for the codes that mean a server fault (UNKNOWN,
DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).

Why not opentelemetry-instrumentation-grpc's aio server interceptor
(`opentelemetry/instrumentation/grpc/_aio_server.py`, 0.66b): it does not fit chatd's
interceptor chain. Its streaming wrapper iterates every server-streaming handler with
`async for`, which fails for grpc.aio's write-style streaming handlers (coroutines calling
context.write, such as grpc_health's Watch) that chatd's wrapper tells apart; it learns a
call's status only from context.abort()/set_code() through a wrapt proxy put around every
call's context, so a call that ends without either (a stream the client cancelled) gets
no status code on its span; and it serves the gRPC edge only.
This hook is one method call per RPC inside chatd's existing wrapper (server.rpc.
interceptors, where the final status is decided), and an HTTP edge calls it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import Token

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from server.tracing.setup import Tracing

# The numeric gRPC status codes by name (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
GRPC_CODES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}
SERVER_ERRORS = frozenset(
    ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS")
)


class RpcSpan:
    """One RPC's server span, current (in the contextvars context) from start() to end()."""

    __slots__ = ("_span", "_system", "_token")

    def __init__(self, span: trace.Span, token: Token[Context], system: str) -> None:
        self._span, self._token, self._system = span, token, system

    @classmethod
    def start(
        cls,
        tracing: Tracing,
        method: str,
        headers: Mapping[str, str],
        system: str = "grpc",
    ) -> RpcSpan:
        """Starts the span of `method` ("/package.Service/Method") as a child of the trace
        context in `headers` (none there: a new trace), and makes it current.

        `system` is rpc.system: "grpc" for gRPC and gRPC-Web, "connect_rpc" for Connect.
        """
        service, _, name = method.lstrip("/").rpartition("/")
        parent = propagate.extract(headers)
        span = tracing.tracer.start_span(
            f"{service}/{name}",
            parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": system, "rpc.service": service, "rpc.method": name},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        return cls(span, token, system)

    @property
    def trace_id(self) -> str:
        """The trace's id as 32 hex digits (for log lines)."""
        return format(self._span.get_span_context().trace_id, "032x")

    def end(self, code: str, error: BaseException | None = None) -> None:
        """Ends the span with the gRPC status code name the call ended with ("OK",
        "NOT_FOUND"...), and `error` as an exception event when it was a server fault.
        Call it in the same task (and context) as start()."""
        span = self._span
        if self._system == "connect_rpc":
            if code != "OK":
                span.set_attribute("rpc.connect_rpc.error_code", code.lower())
        else:
            span.set_attribute("rpc.grpc.status_code", GRPC_CODES.get(code, 2))
        if code in SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code))
            if error is not None:
                span.record_exception(error)
        span.end()
        context.detach(self._token)
