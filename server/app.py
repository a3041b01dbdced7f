"""Composition root: builds store, provider and gRPC server from Settings; shuts down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from chatd.v1 import chat_service_pb2, chat_service_pb2_grpc
from server.addresses import require_host
from server.config import Settings
from server.http.listener import HttpApp, HttpListener, bind
from server.malloc import Trimmer, freeze_start_up
from server.metrics import (
    ContextCacheCounts,
    InstrumentedProvider,
    InstrumentedStore,
    InstrumentedTools,
    Metrics,
    MetricsServer,
    start_metrics_server,
)
from server.providers.echo import NOTICE, EchoProvider
from server.redact import redact_url
from server.rpc import reflection
from server.rpc.guards import ApiKeys, ByteBudget, RateLimiter, StreamSlots, parse_keys
from server.rpc.health import DrainingHealth
from server.rpc.interceptors import Admission, ErrorsAndLogging
from server.rpc.reply_codec import encode_events
from server.rpc.servicer import ChatServicer
from server.sessions.errors import ChatdError
from server.sessions.ports import (
    ModelProvider,
    ReplyBus,
    SessionResources,
    SessionStore,
    ToolRunner,
)
from server.sessions.service import ChatSessions
from server.sessions.validation import MessageLimits
from server.startup import StartupError, bind_error
from server.store import CachedStore, SchemaTooNew, open_bus, open_store, shared_url
from server.sweeper import Sweeper
from server.tools import ToolRegistry, load_tools
from server.tools.mcp_servers import McpConfigError, McpServerError, McpServers, load_config
from server.tracing import Tracing, TracingError

log = structlog.get_logger("chatd")

SERVICE_NAME = chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name


def build_provider(settings: Settings) -> ModelProvider:
    """The configured provider; `auto` is gemini when credentials exist, echo otherwise."""
    if settings.provider == "gemini" or (
        settings.provider == "auto" and settings.gemini_configured
    ):
        # Imported here so that echo-only deployments never load the SDK.
        from server.providers.gemini import DEFAULT_MODEL, GeminiProvider, GeminiSettings
        from server.providers.gemini.context_cache import CacheSettings

        backend = "Vertex AI" if settings.gemini_vertexai else "the Gemini API"
        log.info(
            "provider selected",
            provider="gemini",
            why=f"CHATD_PROVIDER={settings.provider} and credentials for {backend} are set",
            base_url=redact_url(settings.gemini_base_url) or "default",
        )
        return GeminiProvider(
            GeminiSettings(
                api_key=settings.gemini_api_key or None,
                vertexai=settings.gemini_vertexai,
                project=settings.gemini_project or None,
                location=settings.gemini_location or None,
                base_url=settings.gemini_base_url or None,
                default_model=settings.default_model or DEFAULT_MODEL,
                timeout=settings.gemini_timeout,
                retry_attempts=settings.gemini_retry_attempts,
                forward_labels=settings.gemini_forward_labels,
                context_cache=CacheSettings(
                    trigger_tokens=settings.gemini_context_cache_tokens,
                    ttl=settings.gemini_context_cache_ttl,
                ),
            )
        )
    why = (
        "CHATD_PROVIDER=echo"
        if settings.provider == "echo"
        else "CHATD_PROVIDER=auto and no GEMINI_API_KEY, GOOGLE_API_KEY or Vertex AI project"
    )
    log.warning(
        "provider selected",
        provider="echo",
        why=why,
        notice=f"replies repeat your message {NOTICE}",
    )
    return EchoProvider(
        default_model=settings.default_model or "echo",
        delay=settings.echo_delay_ms / 1000,
        words_per_chunk=settings.echo_words_per_chunk,
    )


def db_system(database_url: str) -> str:
    """db.system.name of the store (OpenTelemetry database conventions): "sqlite",
    "postgresql", or "other_sql" for the in-memory store."""
    scheme = database_url.partition(":")[0].lower()
    if scheme.startswith("postgres"):
        return "postgresql"
    return "sqlite" if scheme == "sqlite" else "other_sql"


def genai_provider(provider: ModelProvider, settings: Settings) -> tuple[str, str]:
    """(gen_ai.provider.name, gen_ai.system) of the provider (GenAI conventions v1.37.0):
    Gemini on the Gemini API is "gcp.gemini"/"gemini", on Vertex AI "gcp.vertex_ai"/
    "vertex_ai"; any other provider is named after itself ("chatd.echo"/"echo")."""
    if provider.name == "gemini":
        if settings.gemini_vertexai:
            return "gcp.vertex_ai", "vertex_ai"
        return "gcp.gemini", "gemini"
    return f"chatd.{provider.name}", provider.name


def build_tools(settings: Settings, mcp: McpServers | None = None) -> ToolRegistry:
    """The built-in tools, those of CHATD_TOOLS modules and of `chatd.tools` entry points,
    and those `mcp` (already started) serves."""
    try:
        registry = load_tools(
            settings.tool_modules,
            extra=mcp.tools if mcp is not None else (),
            max_result_bytes=settings.max_message_bytes,
        )
    except (ImportError, ValueError) as exc:
        raise StartupError(
            ",".join(settings.tool_modules) or settings.mcp_servers or "chatd.tools entry points",
            f"cannot load tools: {exc}",
            "fix or remove the tool module (CHATD_TOOLS) or MCP server (CHATD_MCP_SERVERS)",
        ) from exc
    log.info("tools loaded", tools=sorted(registry.names()))
    return registry


async def start_mcp(settings: Settings) -> McpServers | None:
    """The MCP servers of CHATD_MCP_SERVERS, connected and their tools listed; None when
    the setting is empty. A StartupError names the file and the server that cannot start."""
    if not settings.mcp_servers:
        return None
    try:
        mcp = McpServers(
            load_config(settings.mcp_servers), max_result_bytes=settings.max_message_bytes
        )
        await mcp.start()
    except McpConfigError as exc:
        raise StartupError(
            settings.mcp_servers,
            f"cannot use the MCP servers file: {exc}",
            "fix the file (CHATD_MCP_SERVERS); see the README's MCP tools section",
        ) from exc
    except McpServerError as exc:
        raise StartupError(
            settings.mcp_servers,
            str(exc),
            "fix or remove the server in CHATD_MCP_SERVERS",
        ) from exc
    return mcp


def build_admission(settings: Settings) -> Admission:
    """API keys (from CHATD_API_KEYS and CHATD_API_KEYS_FILE), rate limits, stream slots,
    and the byte budget of large requests (memory handed back once they are done)."""
    keys: dict[str, str] = {}
    try:
        if settings.api_keys:
            keys.update(parse_keys(settings.api_keys.split(","), "CHATD_API_KEYS"))
        if settings.api_keys_file:
            with open(settings.api_keys_file) as file:
                keys.update(parse_keys(file, settings.api_keys_file))
    except (OSError, ValueError) as exc:
        raise StartupError(
            settings.api_keys_file or "CHATD_API_KEYS",
            f"cannot load API keys: {exc}",
            "give one `tenant key` pair per line (CHATD_API_KEYS: tenant:key,...)",
        ) from exc
    tenants = sorted(set(keys.values()))
    if keys:
        log.info("authentication on", tenants=tenants)
    else:
        log.warning("authentication off: every caller is tenant 'default'")
    return Admission(
        ApiKeys(keys),
        RateLimiter(settings.rate_limit, max(settings.rate_burst, 1.0)),
        # With authentication off every caller is one tenant: a per-tenant cap would only
        # be a second, lower global one.
        StreamSlots(settings.max_streams, settings.max_streams_per_tenant if keys else 0),
        ByteBudget(
            settings.large_request_bytes,
            settings.large_request_budget,
            on_drained=Trimmer().request,
        ),
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from PEM files; with a client CA, clients must present a certificate (mTLS)."""
    if not settings.tls_cert:
        return None
    try:
        with open(settings.tls_key, "rb") as key, open(settings.tls_cert, "rb") as cert:
            pair = (key.read(), cert.read())
        client_ca = None
        if settings.tls_client_ca:
            with open(settings.tls_client_ca, "rb") as ca:
                client_ca = ca.read()
    except OSError as exc:
        raise StartupError(
            exc.filename or settings.tls_cert,
            f"cannot read TLS files: {exc.strerror}",
            "check CHATD_TLS_CERT, CHATD_TLS_KEY and CHATD_TLS_CLIENT_CA",
        ) from exc
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def server_options(settings: Settings) -> list[tuple[str, int]]:
    limit = settings.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    if settings.max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace * 1000)),
        ]
    return options


@dataclass
class RunningServer:
    """A started chatd: its bound port and what must be closed at shutdown."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    store: SessionStore
    provider: ModelProvider
    sweeper: Sweeper
    port: int
    grace_period: float
    chats: ChatSessions
    bus: ReplyBus | None = None
    metrics: Metrics | None = None
    metrics_server: MetricsServer | None = None
    # The HTTP listener (CHATD_HTTP_LISTEN); None when it is off.
    http: HttpListener | None = None
    tracing: Tracing | None = None
    # The MCP servers (CHATD_MCP_SERVERS); None when there are none.
    mcp: McpServers | None = None

    @property
    def http_port(self) -> int:
        """The HTTP listener's bound port; 0 when it is off."""
        return self.http.port if self.http is not None else 0

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING; running RPCs and background replies get the grace period
        to finish (background replies still running then fail UNAVAILABLE, retryable,
        with nothing of them stored, except one whose commit had begun: that write ends
        and the turn is stored); then everything closes."""
        grace = self.grace_period if grace is None else grace
        await self.health.enter_graceful_shutdown()
        stopping = [self.server.stop(grace), self.chats.drain(grace)]
        if self.http is not None:
            stopping.append(self.http.stop(grace))
        await asyncio.gather(*stopping)
        await self.sweeper.stop()
        if self.bus is not None:
            await self.bus.close()
        await self.store.close()
        await self.provider.close()
        if self.mcp is not None:
            await self.mcp.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        log.info("stopped")


async def start(
    settings: Settings,
    *,
    store: SessionStore | None = None,
    provider: ModelProvider | None = None,
    tools: ToolRunner | None = None,
) -> RunningServer:
    """Starts serving; `store`, `provider` and `tools` replace the configured ones.

    The store opens first: when it cannot, its StartupError is the only line logged.
    """
    try:
        tracing = Tracing.from_environ()
    except TracingError as exc:
        raise StartupError(
            exc.variable, f"cannot export traces: {exc.reason}", "fix or unset the variable"
        ) from exc
    given_store = store
    if store is None:
        try:
            store = await open_store(
                settings.database_url,
                cache_max_bytes=settings.cache_max_bytes,
                sqlite_synchronous=settings.sqlite_synchronous.upper(),
                postgres_max_connections=settings.postgres_max_connections,
                postgres_schema=settings.postgres_schema or None,
                wrap=None
                if tracing is None
                else lambda inner: tracing.wrap_store(inner, db_system(settings.database_url)),
            )
        except (ValueError, ChatdError, SchemaTooNew) as exc:
            # Named by its setting: a PostgreSQL URL may hold a password.
            raise StartupError(
                "CHATD_DATABASE_URL",
                f"cannot open the store: {exc}",
                "check the URL and that its database is reachable",
            ) from exc
    # What a failed start has opened is closed again, newest first; on success the
    # RunningServer owns it all.
    async with contextlib.AsyncExitStack() as undo:
        undo.push_async_callback(store.close)
        # What may still refuse to start comes before the MCP servers start.
        provider = provider or build_provider(settings)
        admission = build_admission(settings)
        mcp: McpServers | None = None
        registry: ToolRegistry | None = None
        if not tools:
            mcp = await start_mcp(settings)
            if mcp is not None:
                undo.push_async_callback(mcp.close)
            tools = registry = build_tools(settings, mcp)
        metrics = Metrics() if settings.metrics_listen else None
        if mcp is not None and registry is not None:
            # From now on a server's new tool list changes what the registry serves.
            mcp.attach(
                registry, on_skipped=None if metrics is None else metrics.record_mcp_tool_skipped
            )
        if metrics is not None:
            if isinstance(store, CachedStore):
                cached = store
                metrics.watch_cache(lambda: cached.stats)
            store = InstrumentedStore(store, metrics)
            if isinstance(provider, ContextCacheCounts):
                metrics.watch_context_caches(provider.context_cache_counts)
            provider = InstrumentedProvider(provider, metrics)
            tools = InstrumentedTools(tools, metrics)
        if tracing is not None:
            if given_store is not None:
                store = tracing.wrap_store(store, "other_sql")
            provider, tools = tracing.wrap_calls(
                provider, tools, genai_provider(provider, settings)
            )
            log.info("tracing on", service_name=os.environ.get("OTEL_SERVICE_NAME") or "chatd")
        # A store chosen by URL may be shared by replicas (PostgreSQL): they talk over the
        # database; a store handed in, or of one process, needs no bus.
        bus: ReplyBus | None = None
        if given_store is None and shared_url(settings.database_url):
            bus = open_bus(settings.database_url, settings.postgres_schema or None)
            undo.push_async_callback(bus.close)
        chats = ChatSessions(
            store,
            provider,
            tools,
            event_encoder=encode_events,
            bus=bus,
            single_process=bus is None,
            reply_lease=settings.reply_lease,
            reply_flush_interval=settings.reply_flush_interval,
            # A background reply is a stream nobody holds open: the same caps, counted apart.
            max_background=settings.max_streams,
            max_background_per_tenant=admission.streams.per_tenant,
            max_tool_rounds=settings.max_tool_rounds,
            limits=MessageLimits(settings.max_text_chars, settings.max_parts),
            max_sessions_per_tenant=settings.max_sessions_per_tenant,
            on_compaction=(
                None
                if metrics is None
                else lambda outcome: metrics.compactions.labels(outcome).inc()
            ),
        )

        server = grpc.aio.server(
            interceptors=[ErrorsAndLogging(admission, metrics, tracing)],
            options=server_options(settings),
        )
        servicer = ChatServicer(chats)
        chat_service_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)
        health_servicer = DrainingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable(server, (SERVICE_NAME, health.SERVICE_NAME))
        try:
            credentials = server_credentials(settings)
            if credentials is None:
                port = server.add_insecure_port(settings.listen)
            else:
                port = server.add_secure_port(settings.listen, credentials)
        except (RuntimeError, OSError) as exc:
            raise bind_error(settings.listen, "CHATD_LISTEN", "--listen", exc) from exc
        undo.push_async_callback(server.stop, None)
        http: HttpListener | None = None
        if settings.http_listen:
            http = HttpListener(
                HttpApp(
                    servicer,
                    admission,
                    metrics,
                    tracing,
                    read_max_bytes=settings.max_message_bytes,
                    body_timeout=settings.http_body_timeout,
                ),
                bind(settings.http_listen),
                grace_period=settings.grace_period,
                header_timeout=settings.http_body_timeout,
                tls=(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
                if settings.tls_cert
                else None,
            )
            undo.push_async_callback(http.stop, 0)
        metrics_server = None
        if metrics is not None:
            try:
                metrics_server = await start_metrics_server(
                    metrics, *require_host(settings.metrics_listen)
                )
            except OSError as exc:
                raise bind_error(
                    settings.metrics_listen,
                    "CHATD_METRICS_LISTEN",
                    "--metrics-listen",
                    exc,
                    off="an empty value turns metrics off",
                ) from exc
            undo.push_async_callback(metrics_server.close)
            metrics_host = settings.metrics_listen.rpartition(":")[0]
            log.info("metrics serving", url=f"http://{metrics_host}:{metrics_server.port}/metrics")
        try:
            if bus is not None:
                await bus.start()
            await chats.start()
        except ChatdError as exc:
            raise StartupError(
                "CHATD_DATABASE_URL",
                f"cannot reach the other replicas through the database: {exc}",
                "check that the database is reachable",
            ) from exc
        undo.pop_all()
    await server.start()
    if http is not None:
        await http.start()
        http_host = settings.http_listen.rpartition(":")[0]
        scheme = "https" if settings.tls_cert else "http"
        log.info("http serving", url=f"{scheme}://{http_host}:{http.port}", port=http.port)
    sweeper = Sweeper(
        store,
        interval=settings.sweep_interval,
        request_window=settings.request_id_window,
        reply_window=settings.reply_window,
        resources=provider if isinstance(provider, SessionResources) else None,
    )
    sweeper.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = settings.listen.rpartition(":")[0]
    log.info(
        "serving",
        address=f"{host}:{port}",
        port=port,
        http_port=http.port if http is not None else 0,
        database=redact_url(settings.database_url),
    )
    return RunningServer(
        server,
        health_servicer,
        store,
        provider,
        sweeper,
        port,
        settings.grace_period,
        chats,
        bus,
        metrics,
        metrics_server,
        http,
        tracing,
        mcp,
    )


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
    # Handled from before "serving" is logged: a signal sent as soon as it is seen (or
    # during start-up) is a graceful stop, not the default death.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    running = await start(settings)
    freeze_start_up()
    await stopping.wait()
    log.info("shutting down", grace_period=settings.grace_period)
    await running.stop()
