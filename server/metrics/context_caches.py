"""ContextCacheCollector: a model provider's context cache outcomes, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, runtime_checkable

import structlog
from prometheus_client.metrics_core import CounterMetricFamily, Metric

log = structlog.get_logger("chatd.metrics")

NAME = "chatd_gemini_context_caches"
DOC = (
    "Explicit Gemini context caches (cachedContents) by outcome: created, reused, "
    "refreshed (TTL extended), deleted, expired (Gemini no longer had it: the call went "
    "without it), failed (a create, refresh or delete Gemini refused: the call went "
    "without a cache)."
)


@runtime_checkable
class ContextCacheCounts(Protocol):
    """A provider that counts what its context caches did (the gemini provider)."""

    def context_cache_counts(self) -> Mapping[str, int]:
        """How often each outcome happened since start; every outcome is a key."""
        ...


ContextCacheSource = Callable[[], Mapping[str, int]]


class ContextCacheCollector:
    """Yields chatd_gemini_context_caches_total{outcome} when a source is set; costs nothing
    between scrapes."""

    def __init__(self) -> None:
        self._source: ContextCacheSource | None = None

    def watch(self, source: ContextCacheSource | None) -> None:
        """Reads `source()` at every scrape from now on (None stops)."""
        self._source = source

    def describe(self) -> Iterator[Metric]:
        """The family without samples, so the registry knows its name."""
        yield CounterMetricFamily(NAME, DOC, labels=("outcome",))

    def collect(self) -> Iterator[Metric]:
        """Called from the scraping thread; a failing source leaves the family out."""
        source = self._source
        if source is None:
            return
        try:
            counts = dict(source())
        except Exception:
            log.warning("context cache counts unavailable", exc_info=True)
            return
        family = CounterMetricFamily(NAME, DOC, labels=("outcome",))
        for outcome in sorted(counts):
            family.add_metric((outcome,), counts[outcome])
        yield family
