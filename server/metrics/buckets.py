"""Histogram buckets, in seconds, for the durations chatd measures."""

from __future__ import annotations

# gRPC calls: a cached read takes about a millisecond, a long streamed turn up to a minute.
RPC = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Model calls: from a fast first token to the provider's timeout (120 s by default).
MODEL = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
# Server tools: pure functions take microseconds, I/O-bound ones up to their timeout.
TOOL = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Store operations: a cache hit is sub-millisecond, a contended database write seconds.
STORE = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
