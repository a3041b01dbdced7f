"""CacheCollector: the session cache's counters, read from a `stats` callable at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import structlog
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

log = structlog.get_logger("chatd.metrics")


class CacheStatsLike(Protocol):
    """What the collector reads (server.store.CacheStats has these)."""

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...

    @property
    def evictions(self) -> int: ...

    @property
    def entries(self) -> int: ...

    @property
    def bytes(self) -> int: ...


CacheStatsSource = Callable[[], CacheStatsLike]

_COUNTERS = (
    ("chatd_cache_hits", "Session cache lookups answered from memory.", "hits"),
    ("chatd_cache_misses", "Session cache lookups that went to the store.", "misses"),
    (
        "chatd_cache_evictions",
        "Sessions evicted from the cache to stay within its size.",
        "evictions",
    ),
)
_GAUGES = (
    ("chatd_cache_entries", "Sessions held in the cache.", "entries"),
    ("chatd_cache_bytes", "Estimated bytes held in the cache.", "bytes"),
)


class CacheCollector:
    """Yields the cache families when a source is set; costs nothing between scrapes."""

    def __init__(self) -> None:
        self._source: CacheStatsSource | None = None

    def watch(self, source: CacheStatsSource | None) -> None:
        """Reads `source()` at every scrape from now on (None stops)."""
        self._source = source

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so the registry knows their names."""
        for name, doc, _ in _COUNTERS:
            yield CounterMetricFamily(name, doc)
        for name, doc, _ in _GAUGES:
            yield GaugeMetricFamily(name, doc)

    def collect(self) -> Iterator[Metric]:
        """Called from the scraping thread; a failing source leaves the cache families out."""
        source = self._source
        if source is None:
            return
        try:
            stats = source()
            values = {attr: int(getattr(stats, attr)) for _, _, attr in (*_COUNTERS, *_GAUGES)}
        except Exception:
            log.warning("cache stats unavailable", exc_info=True)
            return
        for name, doc, attr in _COUNTERS:
            yield CounterMetricFamily(name, doc, value=values[attr])
        for name, doc, attr in _GAUGES:
            yield GaugeMetricFamily(name, doc, value=values[attr])
