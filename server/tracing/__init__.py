"""OpenTelemetry traces, opt-in through the standard OTEL_* variables.

`Tracing.from_environ()` is None unless an exporter is configured, and then nothing here
runs: the RPC edges skip their hook and the decorators are not installed. Importing this
package imports no OpenTelemetry module; `from_environ` does, when tracing is on.
"""

from server.tracing.setup import Tracing, TracingError

__all__ = ["Tracing", "TracingError"]
