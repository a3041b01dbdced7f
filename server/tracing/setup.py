"""Tracing: a TracerProvider built from the standard OpenTelemetry environment variables.

Variables (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/
and https://opentelemetry.io/docs/specs/otel/protocol/exporter/):
- OTEL_SDK_DISABLED=true turns tracing off whatever else is set. As the specification's
  boolean rule says, only "true" (any case) is true; any other value is false, and one that
  is neither "false" nor empty is logged as a warning saying so.
- Tracing is on when OTEL_TRACES_EXPORTER names an exporter, or when it is unset and
  OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set. chatd exports
  OTLP over HTTP with protobuf (`otlp`); `none` turns tracing off.
- OTEL_EXPORTER_OTLP_PROTOCOL / OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, when set, must be
  `http/protobuf`. The exporter reads its own variables (endpoint, headers, timeout,
  compression, certificates); the batch processor its OTEL_BSP_* ones.
- OTEL_SERVICE_NAME (default "chatd") and OTEL_RESOURCE_ATTRIBUTES describe the process.
- OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choose the sampler (default: parent-based,
  always on). OTEL_PROPAGATORS chooses how incoming trace context is read (default W3C
  `traceparent`/`tracestate` and baggage).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from server.version import chatd_version

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from server.sessions.ports import ModelProvider, SessionStore, ToolRunner
    from server.tracing.rpc import RpcSpan

DEFAULT_SERVICE_NAME = "chatd"


class TracingError(ValueError):
    """An OTEL_* setting chatd cannot honour: `variable` is its name, the message says why
    and what to set instead."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.reason = message


def sdk_disabled(env: Mapping[str, str]) -> bool:
    """Whether OTEL_SDK_DISABLED is true. The specification's boolean rule
    (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/#boolean-value):
    only the case-insensitive string "true" is true; everything else, unset and empty
    included, is false, and a value other than "false" or empty is warned about."""
    value = env.get("OTEL_SDK_DISABLED", "").strip()
    if value.lower() == "true":
        return True
    if value and value.lower() != "false":
        logging.getLogger("chatd.tracing").warning(
            "OTEL_SDK_DISABLED=%s is not true or false: read as false (tracing is not "
            "disabled by it); set it to true to disable",
            value,
        )
    return False


def _enabled(env: Mapping[str, str]) -> bool:
    if sdk_disabled(env):
        return False
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if exporters:
        if exporters == ["none"]:
            return False
        unknown = [e for e in exporters if e != "otlp"]
        if unknown:
            raise TracingError(
                "OTEL_TRACES_EXPORTER",
                f"{','.join(exporters)} is not an exporter chatd ships: it exports traces "
                "with `otlp` (OTLP over HTTP) only; set it to otlp or none",
            )
        return True
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _check_protocol(env: Mapping[str, str]) -> None:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name, "").strip()
        if value:
            if value != "http/protobuf":
                raise TracingError(
                    name,
                    f"{value} is not supported: chatd exports OTLP over HTTP with protobuf; "
                    "set it to http/protobuf (or leave it unset)",
                )
            return


class Tracing:
    """chatd's tracer: `tracer` makes the spans; shutdown() flushes and stops the exporter.

    Its TracerProvider is its own, not the process-global one, so servers started in one
    process (tests) do not share exporters.
    """

    def __init__(self, provider: TracerProvider) -> None:
        from server.tracing.rpc import RpcSpan

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("chatd", chatd_version())
        self._rpc_span = RpcSpan.start

    def rpc_span(self, method: str, headers: Mapping[str, str], system: str = "grpc") -> RpcSpan:
        """The server span of one RPC, started and current; see server.tracing.rpc.RpcSpan.

        `method` is "/package.Service/Method"; `headers` the request's metadata or HTTP
        headers (lower-case names) holding the caller's `traceparent`; `system` is
        rpc.system ("grpc", or "connect_rpc" on a Connect edge). End it with .end(code).
        """
        return self._rpc_span(self, method, headers, system)

    def wrap_store(self, store: SessionStore, db_system: str) -> SessionStore:
        """`store` with a span per operation (one transaction each); `db_system` is
        db.system.name. Wrap the database's store, beneath any cache."""
        from server.tracing.store import TracedStore

        return TracedStore(store, self, db_system)

    def wrap_calls(
        self, provider: ModelProvider, tools: ToolRunner, genai_provider: tuple[str, str]
    ) -> tuple[ModelProvider, ToolRunner]:
        """The provider and tools with a span per model call and per tool call;
        `genai_provider` is (gen_ai.provider.name, gen_ai.system)."""
        from server.tracing.provider import TracedProvider
        from server.tracing.tools import TracedTools

        return TracedProvider(provider, self, *genai_provider), TracedTools(tools, self)

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> Tracing | None:
        """The configured tracing, or None when the OTEL_* variables in `env` (default
        os.environ) leave it off. The exporter, resource and sampler read os.environ.

        Raises TracingError for an exporter or protocol chatd does not ship.
        """
        env = os.environ if env is None else env
        if not _enabled(env):
            return None
        _check_protocol(env)
        # Imported only when tracing is on: a server without it loads no OpenTelemetry.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; a service
        # name from neither is the SDK's "unknown_service", replaced by chatd's default.
        resource = Resource.create({"service.version": chatd_version()})
        if not env.get("OTEL_SERVICE_NAME") and str(
            resource.attributes.get(SERVICE_NAME, "")
        ).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def shutdown(self) -> None:
        """Exports what is buffered, then stops (blocks: call it off the event loop)."""
        self.provider.shutdown()
