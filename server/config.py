"""Typed settings from command-line flags and CHATD_* environment variables, validated once."""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PROVIDERS = ("auto", "echo", "gemini")
LOG_FORMATS = ("auto", "json", "console")
SYNCHRONOUS = ("FULL", "NORMAL")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A setting has a value chatd cannot use; the message names the flag and variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    # Not in repr: a URL may carry a password (print it through server.redact).
    database_url: str = field(default="sqlite:///var/chatd.db", repr=False)
    provider: str = "auto"
    default_model: str = ""
    grace_period: float = 10.0
    cache_max_bytes: int = 64 * 1024 * 1024
    sqlite_synchronous: str = "FULL"
    postgres_schema: str = ""
    postgres_max_connections: int = 10
    echo_delay_ms: float = 0.0
    echo_words_per_chunk: int = 4
    log_format: str = "auto"
    log_level: str = "info"
    max_message_bytes: int = 8 * 1024 * 1024
    # Python modules whose @tool functions are served, comma-separated.
    tools: str = ""
    # A JSON file of MCP servers ({"mcpServers": {...}}) whose tools are served; "" = none.
    mcp_servers: str = ""
    max_tool_rounds: int = 8
    sweep_interval: float = 60.0
    request_id_window: float = 24 * 3600.0
    # Replies: kept this long after they end; a running background reply's lease.
    reply_window: float = 24 * 3600.0
    reply_lease: float = 10.0
    reply_flush_interval: float = 0.2
    # Callers: API keys as "tenant:key" pairs and/or a file of "tenant key" lines.
    api_keys: str = field(default="", repr=False)
    api_keys_file: str = ""
    insecure_no_auth: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Limits.
    max_text_chars: int = 100_000
    max_parts: int = 64
    max_sessions_per_tenant: int = 100_000
    max_streams: int = 1000
    max_streams_per_tenant: int = 100
    # Requests of at least large_request_bytes share large_request_budget bytes in flight.
    large_request_bytes: int = 1024 * 1024
    large_request_budget: int = 32 * 1024 * 1024
    rate_limit: float = 500.0
    rate_burst: float = 1000.0
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    max_connection_age: float = 1800.0
    max_connection_age_grace: float = 300.0
    # Prometheus GET /metrics, on its own port; empty turns it off.
    metrics_listen: str = "127.0.0.1:9464"
    # Connect, gRPC-Web and HTTP/JSON (server/http), on its own port; empty (default) = off.
    http_listen: str = ""
    # Seconds the HTTP listener waits for the next bytes of a request body, and for a
    # request's line and headers in all (0 = forever).
    http_body_timeout: float = 30.0
    # Gemini: an API key, or Vertex AI with a project (and location).
    gemini_api_key: str = field(default="", repr=False)
    gemini_vertexai: bool = False
    gemini_project: str = ""
    gemini_location: str = ""
    gemini_base_url: str = field(default="", repr=False)
    gemini_timeout: float = 120.0
    gemini_retry_attempts: int = 3
    # Send session labels upstream as Vertex AI request labels.
    gemini_forward_labels: bool = False

    @property
    def tool_modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.tools.split(",") if m.strip())

    @property
    def gemini_configured(self) -> bool:
        """Credentials for the Gemini API or Vertex AI are present."""
        return bool(self.gemini_api_key) or (self.gemini_vertexai and bool(self.gemini_project))


# (field, flag, environment variables (the first one set wins), help)
_OPTIONS: tuple[tuple[str, str | None, tuple[str, ...], str], ...] = (
    ("listen", "--listen", ("CHATD_LISTEN",), "host:port to serve gRPC on (port 0 picks one)"),
    (
        "database_url",
        "--database-url",
        ("CHATD_DATABASE_URL",),
        "where sessions are stored: one of the URL forms below",
    ),
    ("provider", "--provider", ("CHATD_PROVIDER",), "auto | echo | gemini"),
    (
        "default_model",
        "--default-model",
        ("CHATD_DEFAULT_MODEL",),
        "model for sessions without one",
    ),
    ("grace_period", "--grace-period", ("CHATD_GRACE_PERIOD",), "seconds RPCs get at stop"),
    ("cache_max_bytes", "--cache-max-bytes", ("CHATD_CACHE_MAX_BYTES",), "cache cap (0=off)"),
    ("sqlite_synchronous", "--sqlite-synchronous", ("CHATD_SQLITE_SYNCHRONOUS",), "FULL | NORMAL"),
    (
        "postgres_schema",
        "--postgres-schema",
        ("CHATD_POSTGRES_SCHEMA",),
        "schema for chatd's tables",
    ),
    (
        "postgres_max_connections",
        "--postgres-max-connections",
        ("CHATD_POSTGRES_MAX_CONNECTIONS",),
        "connection pool size per replica",
    ),
    ("echo_delay_ms", "--echo-delay-ms", ("CHATD_ECHO_DELAY_MS",), "echo delay per delta"),
    (
        "echo_words_per_chunk",
        "--echo-words-per-chunk",
        ("CHATD_ECHO_WORDS_PER_CHUNK",),
        "words per echo delta",
    ),
    (
        "log_format",
        "--log-format",
        ("CHATD_LOG_FORMAT",),
        "auto (JSON unless a TTY) | json | console",
    ),
    ("log_level", "--log-level", ("CHATD_LOG_LEVEL",), "debug | info | warning | error"),
    ("max_message_bytes", "--max-message-bytes", ("CHATD_MAX_MESSAGE_BYTES",), "largest request"),
    ("tools", "--tools", ("CHATD_TOOLS",), "modules with @tool functions, comma-separated"),
    (
        "mcp_servers",
        "--mcp-servers",
        ("CHATD_MCP_SERVERS",),
        "JSON file of MCP servers whose tools are served",
    ),
    ("max_tool_rounds", "--max-tool-rounds", ("CHATD_MAX_TOOL_ROUNDS",), "tool rounds per turn"),
    ("sweep_interval", "--sweep-interval", ("CHATD_SWEEP_INTERVAL",), "seconds between sweeps"),
    (
        "request_id_window",
        "--request-id-window",
        ("CHATD_REQUEST_ID_WINDOW",),
        "seconds a request_id is remembered",
    ),
    (
        "reply_window",
        "--reply-window",
        ("CHATD_REPLY_WINDOW",),
        "seconds an ended reply is kept (GetReply, resume)",
    ),
    (
        "reply_lease",
        "--reply-lease",
        ("CHATD_REPLY_LEASE",),
        "seconds before a dead replica's background replies fail",
    ),
    (
        "reply_flush_interval",
        "--reply-flush-interval",
        ("CHATD_REPLY_FLUSH_INTERVAL",),
        "seconds between stores of a background reply's events",
    ),
    ("api_keys_file", "--api-keys-file", ("CHATD_API_KEYS_FILE",), "file of 'tenant key' lines"),
    ("insecure_no_auth", "--insecure-no-auth", ("CHATD_INSECURE_NO_AUTH",), "serve without keys"),
    ("tls_cert", "--tls-cert", ("CHATD_TLS_CERT",), "server certificate chain (PEM)"),
    ("tls_key", "--tls-key", ("CHATD_TLS_KEY",), "server private key (PEM)"),
    ("tls_client_ca", "--tls-client-ca", ("CHATD_TLS_CLIENT_CA",), "CA for client certs (mTLS)"),
    ("max_text_chars", "--max-text-chars", ("CHATD_MAX_TEXT_CHARS",), "characters per message"),
    ("max_parts", "--max-parts", ("CHATD_MAX_PARTS",), "parts per message"),
    (
        "max_sessions_per_tenant",
        "--max-sessions-per-tenant",
        ("CHATD_MAX_SESSIONS_PER_TENANT",),
        "sessions a tenant may keep (0 = no cap)",
    ),
    ("max_streams", "--max-streams", ("CHATD_MAX_STREAMS",), "concurrent streams (0 = no cap)"),
    (
        "max_streams_per_tenant",
        "--max-streams-per-tenant",
        ("CHATD_MAX_STREAMS_PER_TENANT",),
        "concurrent streams of one tenant (0 = no cap)",
    ),
    (
        "large_request_bytes",
        "--large-request-bytes",
        ("CHATD_LARGE_REQUEST_BYTES",),
        "size from which a request counts against the budget",
    ),
    (
        "large_request_budget",
        "--large-request-budget",
        ("CHATD_LARGE_REQUEST_BUDGET",),
        "bytes of large requests decoded at once (0 = no budget)",
    ),
    ("rate_limit", "--rate-limit", ("CHATD_RATE_LIMIT",), "requests/s per tenant (0 = off)"),
    ("rate_burst", "--rate-burst", ("CHATD_RATE_BURST",), "requests a tenant may burst"),
    ("keepalive_time", "--keepalive-time", ("CHATD_KEEPALIVE_TIME",), "seconds between pings"),
    ("keepalive_timeout", "--keepalive-timeout", ("CHATD_KEEPALIVE_TIMEOUT",), "ping timeout"),
    (
        "max_connection_age",
        "--max-connection-age",
        ("CHATD_MAX_CONNECTION_AGE",),
        "seconds before a connection is recycled (0 = never)",
    ),
    (
        "max_connection_age_grace",
        "--max-connection-age-grace",
        ("CHATD_MAX_CONNECTION_AGE_GRACE",),
        "seconds calls get to finish on a recycled connection",
    ),
    (
        "metrics_listen",
        "--metrics-listen",
        ("CHATD_METRICS_LISTEN",),
        "host:port for Prometheus GET /metrics (empty = off)",
    ),
    (
        "http_listen",
        "--http-listen",
        ("CHATD_HTTP_LISTEN",),
        "host:port for Connect, gRPC-Web and HTTP/JSON (empty = off)",
    ),
    (
        "http_body_timeout",
        "--http-body-timeout",
        ("CHATD_HTTP_BODY_TIMEOUT",),
        "seconds an HTTP request body may send nothing, and its headers may take (0 = none)",
    ),
    # Credentials come from the environment only, never from flags visible in `ps`.
    ("api_keys", None, ("CHATD_API_KEYS",), ""),
    ("gemini_api_key", None, ("GEMINI_API_KEY", "GOOGLE_API_KEY"), ""),
    ("gemini_vertexai", None, ("GOOGLE_GENAI_USE_VERTEXAI",), ""),
    ("gemini_project", None, ("GOOGLE_CLOUD_PROJECT",), ""),
    ("gemini_location", None, ("GOOGLE_CLOUD_LOCATION",), ""),
    (
        "gemini_base_url",
        "--gemini-base-url",
        ("CHATD_GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"),
        "Gemini API base URL",
    ),
    ("gemini_timeout", "--gemini-timeout", ("CHATD_GEMINI_TIMEOUT",), "seconds per model call"),
    (
        "gemini_retry_attempts",
        "--gemini-retry-attempts",
        ("CHATD_GEMINI_RETRY_ATTEMPTS",),
        "tries per model call, first included",
    ),
    (
        "gemini_forward_labels",
        "--gemini-forward-labels",
        ("CHATD_GEMINI_FORWARD_LABELS",),
        "send session labels to Vertex AI as request labels",
    ),
)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _convert(name: str, raw: str, source: str) -> object:
    kind = type(getattr(Settings(), name))
    if kind is bool:
        if raw.strip().lower() not in _TRUE + _FALSE:
            raise SettingsError(f"{source}={raw!r}: expected true or false")
        return raw.strip().lower() in _TRUE
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{source}={raw!r}: expected a {kind.__name__}") from None


# The store URLs server.store.open_store accepts (tests/test_cli.py opens each form).
DATABASE_URL_FORMS: tuple[tuple[str, str], ...] = (
    ("memory://", "in process memory: gone when chatd stops"),
    (
        "sqlite:///var/chatd.db",
        "a SQLite file relative to the working directory; its directory must exist",
    ),
    ("sqlite:////var/lib/chatd/chatd.db", "an absolute SQLite path (four slashes)"),
    (
        "postgresql://user:password@host:5432/dbname",
        "PostgreSQL (postgres:// too), shared by replicas; tables in CHATD_POSTGRES_SCHEMA",
    ),
)

# Variables of chatd's own test suite and benchmarks: not settings, never warned about.
_NOT_SETTINGS_PREFIXES = ("CHATD_TEST_", "CHATD_BENCH_")
# Variables the client examples and packages read (client_examples/, clients/, generated/)
# and the test suite's own: a shell that runs both a client and chatd holds them, so they are
# not the server's typos.
_NOT_SETTINGS = (
    "CHATD_ADDRESS",
    "CHATD_API_KEY",
    "CHATD_CA_CERT",
    "CHATD_FUZZ_SEED",
    "CHATD_PROBE_TRACEMALLOC",
)


def _shown_default(name: str) -> str:
    value = getattr(Settings(), name)
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "empty"
    return str(value)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per setting to `parser` (each with its default and variable) and the
    database URL forms to its epilog; flags left out parse as None, so that
    `from_arguments` can tell them from values given."""
    for name, flag, envs, help_ in _OPTIONS:
        if flag is None:
            continue
        described = f"{help_} (default: {_shown_default(name)}; env {envs[0]})"
        if isinstance(getattr(Settings(), name), bool):
            parser.add_argument(flag, dest=name, action="store_const", const="true", help=described)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar="VALUE", help=described)
    forms = "\n".join(f"  {url}\n      {what}" for url, what in DATABASE_URL_FORMS)
    parser.epilog = (
        f"database URLs (--database-url, CHATD_DATABASE_URL):\n{forms}\n\n"
        "Every flag can also be set by its CHATD_* environment variable; a flag wins over\n"
        "its variable. Credentials (CHATD_API_KEYS, GEMINI_API_KEY or GOOGLE_API_KEY,\n"
        "GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_CLOUD_PROJECT, GOOGLE_CLOUD_LOCATION) are read\n"
        "from the environment only."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def serve_parser(prog: str = "chatd serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run the chatd gRPC server.")
    add_serve_arguments(parser)
    return parser


def load(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    return from_arguments(serve_parser().parse_args(list(argv)), environ)


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from flags parsed by a parser `add_serve_arguments` built, then `environ`,
    then defaults, validated; raises SettingsError naming the flag or variable of a bad
    value."""
    settings = read(args, environ)
    validate(settings)
    return settings


def read(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
    """As `from_arguments`, without `validate`: for tools that only read some settings of a
    server (`chatd health`), where a refusal about another setting would be beside the point.
    Raises SettingsError for a value of the wrong type."""
    values: dict[str, object] = {}
    for name, flag, envs, _ in _OPTIONS:
        raw = getattr(args, name, None)
        source = flag or ""
        if raw is None:
            env = next((e for e in envs if environ.get(e)), None)
            if env is not None:
                raw, source = environ[env], env
        if raw is not None:
            values[name] = _convert(name, raw, source)
    if getattr(args, "metrics_listen", None) is None and environ.get("CHATD_METRICS_LISTEN") == "":
        values["metrics_listen"] = ""  # set, and empty: metrics off
    return Settings(**values)  # type: ignore[arg-type]


def variable_names() -> tuple[str, ...]:
    """Every CHATD_* environment variable chatd reads."""
    return tuple(e for _, _, envs, _ in _OPTIONS for e in envs if e.startswith("CHATD_"))


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The CHATD_* variables in `environ` that are no setting (a typo is otherwise silently
    ignored), each with the closest real name (difflib's ratio of at least 0.6) or None."""
    known = variable_names()
    return [
        (name, next(iter(difflib.get_close_matches(name, known, n=1)), None))
        for name in sorted(environ)
        if name.startswith("CHATD_")
        and name not in known
        and name not in _NOT_SETTINGS
        and not name.startswith(_NOT_SETTINGS_PREFIXES)
    ]


def _loopback(host: str) -> bool:
    """Whether a listen host is loopback only: exactly "localhost", or a loopback IP
    (127.0.0.0/8, ::1, bracketed or not)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(settings: Settings) -> None:
    host, sep, port = settings.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"CHATD_LISTEN/--listen={settings.listen!r}: expected host:port")
    if settings.metrics_listen:
        m_host, m_sep, m_port = settings.metrics_listen.rpartition(":")
        if not m_sep or not m_host or not m_port.isdigit() or int(m_port) > 65535:
            raise SettingsError(
                f"CHATD_METRICS_LISTEN/--metrics-listen={settings.metrics_listen!r}: "
                "expected host:port, or empty to turn metrics off"
            )
    if settings.http_listen:
        h_host, h_sep, h_port = settings.http_listen.rpartition(":")
        if not h_sep or not h_host or not h_port.isdigit() or int(h_port) > 65535:
            raise SettingsError(
                f"CHATD_HTTP_LISTEN/--http-listen={settings.http_listen!r}: "
                "expected host:port, or empty to turn the HTTP listener off"
            )
    has_keys = bool(settings.api_keys or settings.api_keys_file)
    for address in (settings.listen, settings.http_listen):
        if not address or has_keys or settings.insecure_no_auth:
            continue
        if not _loopback(address.rpartition(":")[0]):
            raise SettingsError(
                f"refusing to listen on {address} without API keys: anyone who can reach "
                "it could read and write every session. Set CHATD_API_KEYS or "
                "CHATD_API_KEYS_FILE, or pass --insecure-no-auth if the network is trusted"
            )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SettingsError("CHATD_TLS_CERT and CHATD_TLS_KEY go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise SettingsError("CHATD_TLS_CLIENT_CA (mutual TLS) needs CHATD_TLS_CERT and KEY")
    for name in (
        "max_text_chars",
        "max_parts",
        "max_sessions_per_tenant",
        "max_streams",
        "max_streams_per_tenant",
        "large_request_bytes",
        "large_request_budget",
        "rate_limit",
        "rate_burst",
        "keepalive_time",
        "keepalive_timeout",
        "max_connection_age",
        "max_connection_age_grace",
    ):
        if getattr(settings, name) < 0:
            raise SettingsError(f"{name} must not be negative")
    if settings.max_text_chars < 1 or settings.max_parts < 1:
        raise SettingsError("CHATD_MAX_TEXT_CHARS and CHATD_MAX_PARTS must be at least 1")
    if settings.provider not in PROVIDERS:
        raise SettingsError(f"CHATD_PROVIDER={settings.provider!r}: expected one of {PROVIDERS}")
    if settings.log_format not in LOG_FORMATS:
        raise SettingsError(f"CHATD_LOG_FORMAT={settings.log_format!r}: one of {LOG_FORMATS}")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise SettingsError(f"CHATD_LOG_LEVEL={settings.log_level!r}: one of {LOG_LEVELS}")
    if settings.sqlite_synchronous.upper() not in SYNCHRONOUS:
        raise SettingsError(
            f"CHATD_SQLITE_SYNCHRONOUS={settings.sqlite_synchronous!r}: one of {SYNCHRONOUS}"
        )
    for name in ("grace_period", "cache_max_bytes", "echo_delay_ms", "http_body_timeout"):
        if getattr(settings, name) < 0:
            raise SettingsError(f"{name} must not be negative")
    if settings.echo_words_per_chunk < 1:
        raise SettingsError("CHATD_ECHO_WORDS_PER_CHUNK must be at least 1")
    if settings.postgres_max_connections < 1:
        raise SettingsError("CHATD_POSTGRES_MAX_CONNECTIONS must be at least 1")
    if settings.sweep_interval <= 0 or settings.request_id_window <= 0:
        raise SettingsError("CHATD_SWEEP_INTERVAL and CHATD_REQUEST_ID_WINDOW must be positive")
    if settings.reply_window <= 0 or settings.reply_lease <= 0:
        raise SettingsError("CHATD_REPLY_WINDOW and CHATD_REPLY_LEASE must be positive")
    if settings.reply_flush_interval < 0:
        raise SettingsError("CHATD_REPLY_FLUSH_INTERVAL must not be negative")
    if not 1 <= settings.max_tool_rounds <= 100:
        raise SettingsError("CHATD_MAX_TOOL_ROUNDS must be between 1 and 100")
    if settings.gemini_timeout <= 0:
        raise SettingsError("CHATD_GEMINI_TIMEOUT must be positive")
    if not 1 <= settings.gemini_retry_attempts <= 10:
        raise SettingsError("CHATD_GEMINI_RETRY_ATTEMPTS must be between 1 and 10")
    if settings.provider == "gemini" and not settings.gemini_configured:
        raise SettingsError(
            "CHATD_PROVIDER=gemini needs GEMINI_API_KEY (or GOOGLE_API_KEY), or "
            "GOOGLE_GENAI_USE_VERTEXAI=true with GOOGLE_CLOUD_PROJECT"
        )
    if settings.max_message_bytes < 1024:
        raise SettingsError("CHATD_MAX_MESSAGE_BYTES must be at least 1024")
