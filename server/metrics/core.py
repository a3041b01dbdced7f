"""Metrics: every chatd metric family, in a registry of its own, and how to record each."""

from __future__ import annotations

import platform
from typing import Generic, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

from server.metrics import buckets
from server.metrics.cache import CacheCollector, CacheStatsSource
from server.metrics.context_caches import ContextCacheCollector, ContextCacheSource
from server.sessions.model import Usage
from server.version import chatd_version

_M = TypeVar("_M", bound=MetricWrapperBase)

# No `_created` series: they double the series count of every counter and histogram and
# no dashboard reads them (https://prometheus.github.io/client_python/instrumenting/#disabling-_created-metrics).
# The switch is process-wide in prometheus_client; chatd owns its process.
disable_created_metrics()  # type: ignore[no-untyped-call]


def split_method(method: str) -> tuple[str, str]:
    """("chatd.v1.ChatService", "CreateSession") from "/chatd.v1.ChatService/CreateSession":
    the grpc_service and grpc_method labels of go-grpc-prometheus
    (https://github.com/grpc-ecosystem/go-grpc-prometheus#metrics)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class _Children(Generic[_M]):
    """A family's children by label values, looked up once: labels() locks and validates."""

    def __init__(self, family: _M) -> None:
        self._family = family
        self._cache: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._family.labels(*values)
        return child


class RpcObserver(Protocol):
    """What the RPC interceptor reports: each call's start and its end."""

    def rpc_started(self, method: str, streaming: bool) -> None: ...

    def rpc_finished(self, method: str, code: str, seconds: float, streaming: bool) -> None: ...


class NoRpcMetrics:
    """An RpcObserver that records nothing, for servers without metrics."""

    def rpc_started(self, method: str, streaming: bool) -> None:
        """Records nothing."""

    def rpc_finished(self, method: str, code: str, seconds: float, streaming: bool) -> None:
        """Records nothing."""


NO_RPC_METRICS = NoRpcMetrics()


class Metrics:
    """chatd's metric families, registered in `registry` (never the process-global one).

    Labels are bounded: methods come from the registered services, codes from gRPC, and
    models, tools and reasons are folded to "other" past a limit by their recorders.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        rpc = ("grpc_service", "grpc_method", "grpc_code")
        self.rpc_requests = Counter("chatd_rpc_requests", "RPCs handled.", rpc, registry=r)
        self.rpc_duration = Histogram(
            "chatd_rpc_duration_seconds",
            "RPC duration, from the handler's start to its status (whole stream included).",
            rpc,
            buckets=buckets.RPC,
            registry=r,
        )
        self.active_streams = Gauge(
            "chatd_active_streams",
            "Server-streaming RPCs in progress.",
            ("grpc_service", "grpc_method"),
            registry=r,
        )
        self.build_info = Gauge(
            "chatd_build_info",
            "Always 1; the labels say which chatd and Python run.",
            ("version", "python"),
            registry=r,
        )
        self.build_info.labels(chatd_version(), platform.python_version()).set(1)
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...
        # read from /proc at each scrape (Linux only; elsewhere the collector yields none).
        ProcessCollector(registry=r)
        self.model_call_duration = Histogram(
            "chatd_model_call_duration_seconds",
            "Model calls, from the call to the end of its stream.",
            ("provider", "model", "outcome"),
            buckets=buckets.MODEL,
            registry=r,
        )
        self.model_errors = Counter(
            "chatd_model_errors",
            "Failed model calls by the error's reason.",
            ("provider", "reason"),
            registry=r,
        )
        self.tokens = Counter(
            "chatd_tokens",
            "Tokens used by model calls as the provider reported them.",
            ("direction", "model"),
            registry=r,
        )
        self.compactions = Counter(
            "chatd_compactions",
            "Context compactions by outcome: ok, or failed (the window applied instead).",
            ("outcome",),
            registry=r,
        )
        self.tool_calls = Counter(
            "chatd_tool_calls", "Server tool calls.", ("tool", "outcome"), registry=r
        )
        self.tool_call_duration = Histogram(
            "chatd_tool_call_duration_seconds",
            "Server tool call duration.",
            ("tool",),
            buckets=buckets.TOOL,
            registry=r,
        )
        self.mcp_tools_skipped = Counter(
            "chatd_mcp_tools_skipped",
            "Tools an MCP server listed while chatd ran that are not served, by reason:"
            " conflict (another tool has the name) or invalid (a name or schema chatd"
            " cannot serve); counted once when each appears in a list.",
            ("server", "reason"),
            registry=r,
        )
        self.store_operation_duration = Histogram(
            "chatd_store_operation_duration_seconds",
            "Session store operations, cache included.",
            ("operation", "outcome"),
            buckets=buckets.STORE,
            registry=r,
        )
        self._cache = CacheCollector()
        r.register(self._cache)
        self._context_caches = ContextCacheCollector()
        r.register(self._context_caches)
        self._rpc = _Children(self.rpc_requests)
        self._rpc_seconds = _Children(self.rpc_duration)
        self._streams = _Children(self.active_streams)
        self._methods: dict[str, tuple[str, str]] = {}
        self._model_seconds = _Children(self.model_call_duration)
        self._model_errors = _Children(self.model_errors)
        self._tokens = _Children(self.tokens)
        self._tools = _Children(self.tool_calls)
        self._tool_seconds = _Children(self.tool_call_duration)
        self._store_seconds = _Children(self.store_operation_duration)

    # ------------------------------------------------------------------ RPCs

    def _split(self, method: str) -> tuple[str, str]:
        labels = self._methods.get(method)
        if labels is None:
            labels = self._methods[method] = split_method(method)
        return labels

    def rpc_started(self, method: str, streaming: bool) -> None:
        """Counts a server-streaming RPC as active until its rpc_finished; `method` is the
        full "/package.Service/Method" path, labelled as grpc_service and grpc_method."""
        if streaming:
            self._streams(*self._split(method)).inc()

    def rpc_finished(self, method: str, code: str, seconds: float, streaming: bool) -> None:
        """Counts the RPC under its status code name ("OK", "NOT_FOUND"...) and its duration."""
        service, name = self._split(method)
        self._rpc(service, name, code).inc()
        self._rpc_seconds(service, name, code).observe(seconds)
        if streaming:
            self._streams(service, name).dec()

    # ------------------------------------------------------------------ recorders

    def record_model_call(self, provider: str, model: str, outcome: str, seconds: float) -> None:
        """One model call; outcome is "ok", "error" or "cancelled"."""
        self._model_seconds(provider, model, outcome).observe(seconds)

    def record_model_error(self, provider: str, reason: str) -> None:
        self._model_errors(provider, reason).inc()

    def record_tokens(self, model: str, usage: Usage) -> None:
        """One call's final usage: prompt as input, candidates as output, thoughts."""
        for direction, count in (
            ("input", usage.prompt_tokens),
            ("output", usage.candidates_tokens),
            ("thoughts", usage.thoughts_tokens),
        ):
            self._tokens(direction, model).inc(max(count, 0))

    def record_tool_call(self, tool: str, is_error: bool, seconds: float) -> None:
        self._tools(tool, "error" if is_error else "ok").inc()
        self._tool_seconds(tool).observe(seconds)

    def record_mcp_tool_skipped(self, server: str, reason: str) -> None:
        """One tool of the named MCP server (from the servers file) left unserved; reason
        is "conflict" or "invalid"."""
        self.mcp_tools_skipped.labels(server, reason).inc()

    def record_store_operation(self, operation: str, outcome: str, seconds: float) -> None:
        self._store_seconds(operation, outcome).observe(seconds)

    # ------------------------------------------------------------------ cache, exposition

    def watch_cache(self, stats: CacheStatsSource | None) -> None:
        """Exposes chatd_cache_* read from `stats()` at each scrape (None stops)."""
        self._cache.watch(stats)

    def watch_context_caches(self, counts: ContextCacheSource | None) -> None:
        """Exposes chatd_gemini_context_caches_total{outcome} read from `counts()` at each
        scrape (None stops)."""
        self._context_caches.watch(counts)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, as GET /metrics serves it."""
        return generate_latest(self.registry)
