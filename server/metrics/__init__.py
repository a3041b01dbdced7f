"""Prometheus metrics: the registry, decorators over the domain's ports, and GET /metrics."""

from server.metrics.cache import CacheCollector, CacheStatsLike, CacheStatsSource
from server.metrics.context_caches import ContextCacheCounts
from server.metrics.core import NO_RPC_METRICS, Metrics, NoRpcMetrics, RpcObserver
from server.metrics.http import MetricsServer, start_metrics_server
from server.metrics.labels import OTHER, BoundedLabel
from server.metrics.provider import InstrumentedProvider
from server.metrics.store import InstrumentedStore
from server.metrics.tools import InstrumentedTools

__all__ = [
    "NO_RPC_METRICS",
    "OTHER",
    "BoundedLabel",
    "CacheCollector",
    "CacheStatsLike",
    "CacheStatsSource",
    "ContextCacheCounts",
    "InstrumentedProvider",
    "InstrumentedStore",
    "InstrumentedTools",
    "Metrics",
    "MetricsServer",
    "NoRpcMetrics",
    "RpcObserver",
    "start_metrics_server",
]
