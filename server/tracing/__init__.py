"""OpenTelemetry traces, opt-in through the standard OTEL_* variables.

`Tracing.from_environ()` is None unless an exporter is configured, and then nothing here
runs: the RPC edges skip their hook and the decorators are not installed.
"""

from server.tracing.provider import TracedProvider
from server.tracing.rpc import RpcSpan
from server.tracing.setup import Tracing, TracingError
from server.tracing.store import TracedStore
from server.tracing.tools import TracedTools

__all__ = ["RpcSpan", "TracedProvider", "TracedStore", "TracedTools", "Tracing", "TracingError"]
