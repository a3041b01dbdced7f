"""Typed settings from command-line flags and CHATD_* environment variables, validated once."""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from server.addresses import parse_host_port, require_host

PROVIDERS = ("auto", "echo", "gemini")
LOG_FORMATS = ("auto", "json", "console")
SYNCHRONOUS = ("FULL", "NORMAL")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A setting has a value chatd cannot use; the message names the flag and variable."""


@dataclass(frozen=True, slots=True)
class Declared:
    """How a setting is read and checked: its flag (None: environment only, as for
    credentials, which must not show in `ps`), its environment variables (the first one
    set wins), its --help text, and the bounds or choices its value must meet."""

    flag: str | None
    envs: tuple[str, ...]
    help: str
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    choices: tuple[str, ...] = ()
    # Choices compared ignoring case (the value is normalised where it is used).
    any_case: bool = False
    # A host:port listen address; `optional`: empty turns the listener off.
    address: bool = False
    optional: bool = False

    @property
    def source(self) -> str:
        """How an error names the setting: "CHATD_X/--x"."""
        return f"{self.envs[0]}/{self.flag}" if self.flag else self.envs[0]


_SETTING = "chatd.setting"


def setting(
    default: Any,
    help: str = "",
    *,
    env: str | tuple[str, ...] = "",
    flag: bool = True,
    secret: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    choices: tuple[str, ...] = (),
    any_case: bool = False,
    address: bool = False,
    optional: bool = False,
) -> Any:
    """A Settings field declared once: its default, help, variables and checks.

    The environment variable defaults to CHATD_<NAME> and the flag to --<name> (filled
    in from the field's name by `_declare`); `flag=False` reads the environment only;
    `secret` keeps the value out of repr. `minimum`/`maximum` are inclusive, `positive` means > 0,
    `choices` are exact unless `any_case`."""
    envs = ((env,) if env else ()) if isinstance(env, str) else env
    declared = Declared(
        "" if flag else None,
        envs,
        help,
        minimum,
        maximum,
        positive,
        choices,
        any_case,
        address,
        optional,
    )
    return field(default=default, repr=not secret, metadata={_SETTING: declared})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of `chatd serve`; each field's declaration (see `setting`) gives its
    flag, variables, help and checks, so a setting is declared in this one place."""

    listen: str = setting(
        "127.0.0.1:50051", "host:port to serve gRPC on (port 0 picks one)", address=True
    )
    # Not in repr: a URL may carry a password (print it through server.redact).
    database_url: str = setting(
        "sqlite:///var/chatd.db",
        "where sessions are stored: one of the URL forms below",
        secret=True,
    )
    provider: str = setting("auto", "auto | echo | gemini", choices=PROVIDERS)
    default_model: str = setting("", "model for sessions without one")
    grace_period: float = setting(10.0, "seconds RPCs get at stop", minimum=0)
    cache_max_bytes: int = setting(64 * 1024 * 1024, "cache cap (0=off)", minimum=0)
    sqlite_synchronous: str = setting("FULL", "FULL | NORMAL", choices=SYNCHRONOUS, any_case=True)
    postgres_schema: str = setting("", "schema for chatd's tables")
    postgres_max_connections: int = setting(10, "connection pool size per replica", minimum=1)
    echo_delay_ms: float = setting(0.0, "echo delay per delta", minimum=0)
    echo_words_per_chunk: int = setting(4, "words per echo delta", minimum=1)
    log_format: str = setting(
        "auto", "auto (JSON unless a TTY) | json | console", choices=LOG_FORMATS
    )
    log_level: str = setting(
        "info", "debug | info | warning | error", choices=LOG_LEVELS, any_case=True
    )
    max_message_bytes: int = setting(8 * 1024 * 1024, "largest request", minimum=1024)
    tools: str = setting("", "modules with @tool functions, comma-separated")
    # A JSON file of MCP servers ({"mcpServers": {...}}) whose tools are served.
    mcp_servers: str = setting("", "JSON file of MCP servers whose tools are served")
    max_tool_rounds: int = setting(8, "tool rounds per turn", minimum=1, maximum=100)
    sweep_interval: float = setting(60.0, "seconds between sweeps", positive=True)
    request_id_window: float = setting(
        24 * 3600.0, "seconds a request_id is remembered", positive=True
    )
    reply_window: float = setting(
        24 * 3600.0, "seconds an ended reply is kept (GetReply, resume)", positive=True
    )
    reply_lease: float = setting(
        10.0, "seconds before a dead replica's background replies fail", positive=True
    )
    reply_flush_interval: float = setting(
        0.2, "seconds between stores of a background reply's events", minimum=0
    )
    # Callers: API keys as "tenant:key" pairs and/or a file of "tenant key" lines.
    api_keys: str = setting("", env="CHATD_API_KEYS", flag=False, secret=True)
    api_keys_file: str = setting("", "file of 'tenant key' lines")
    insecure_no_auth: bool = setting(False, "serve without keys")
    tls_cert: str = setting("", "server certificate chain (PEM)")
    tls_key: str = setting("", "server private key (PEM)")
    tls_client_ca: str = setting("", "CA for client certs (mTLS)")
    # Limits.
    max_text_chars: int = setting(100_000, "characters per message", minimum=1)
    max_parts: int = setting(64, "parts per message", minimum=1)
    max_sessions_per_tenant: int = setting(
        100_000, "sessions a tenant may keep (0 = no cap)", minimum=0
    )
    max_streams: int = setting(1000, "concurrent streams (0 = no cap)", minimum=0)
    max_streams_per_tenant: int = setting(
        100, "concurrent streams of one tenant (0 = no cap)", minimum=0
    )
    # Requests of at least large_request_bytes share large_request_budget bytes in flight.
    large_request_bytes: int = setting(
        1024 * 1024, "size from which a request counts against the budget", minimum=0
    )
    large_request_budget: int = setting(
        32 * 1024 * 1024, "bytes of large requests decoded at once (0 = no budget)", minimum=0
    )
    rate_limit: float = setting(500.0, "requests/s per tenant (0 = off)", minimum=0)
    rate_burst: float = setting(1000.0, "requests a tenant may burst", minimum=0)
    keepalive_time: float = setting(60.0, "seconds between pings", minimum=0)
    keepalive_timeout: float = setting(20.0, "ping timeout", minimum=0)
    max_connection_age: float = setting(
        1800.0, "seconds before a connection is recycled (0 = never)", minimum=0
    )
    max_connection_age_grace: float = setting(
        300.0, "seconds calls get to finish on a recycled connection", minimum=0
    )
    metrics_listen: str = setting(
        "127.0.0.1:9464",
        "host:port for Prometheus GET /metrics (empty = off)",
        address=True,
        optional=True,
    )
    http_listen: str = setting(
        "",
        "host:port for Connect, gRPC-Web and HTTP/JSON (empty = off)",
        address=True,
        optional=True,
    )
    http_body_timeout: float = setting(
        30.0,
        "seconds an HTTP request body may send nothing, and its headers may take (0 = none)",
        minimum=0,
    )
    # Gemini: an API key, or Vertex AI with a project (and location); environment only.
    gemini_api_key: str = setting(
        "", env=("GEMINI_API_KEY", "GOOGLE_API_KEY"), flag=False, secret=True
    )
    gemini_vertexai: bool = setting(False, env="GOOGLE_GENAI_USE_VERTEXAI", flag=False)
    gemini_project: str = setting("", env="GOOGLE_CLOUD_PROJECT", flag=False)
    gemini_location: str = setting("", env="GOOGLE_CLOUD_LOCATION", flag=False)
    gemini_base_url: str = setting(
        "",
        "Gemini API base URL",
        env=("CHATD_GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"),
        secret=True,
    )
    gemini_timeout: float = setting(120.0, "seconds per model call", positive=True)
    gemini_retry_attempts: int = setting(
        3, "tries per model call, first included", minimum=1, maximum=10
    )
    gemini_forward_labels: bool = setting(
        False, "send session labels to Vertex AI as request labels"
    )
    # Explicit context caches: a session's stable prefix of at least this many tokens is
    # cached (0 = off; never below the model's minimum), for this many seconds at a time. A
    # cache that lives less than a minute costs its creation for little use.
    gemini_context_cache_tokens: int = setting(
        0,
        "cache a session's stable prefix explicitly once it reaches this many tokens "
        "(0 = off; never below the model's minimum)",
        minimum=0,
    )
    gemini_context_cache_ttl: float = setting(
        3600.0,
        "seconds an explicit context cache lives after it is made or last extended",
        minimum=60,
    )

    @property
    def tool_modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.tools.split(",") if m.strip())

    @property
    def gemini_configured(self) -> bool:
        """Credentials for the Gemini API or Vertex AI are present."""
        return bool(self.gemini_api_key) or (self.gemini_vertexai and bool(self.gemini_project))


class Option(NamedTuple):
    """A setting as the command line and environment see it."""

    name: str
    flag: str | None
    envs: tuple[str, ...]
    help: str
    declared: Declared


def _declare() -> tuple[Option, ...]:
    options = []
    for f in fields(Settings):
        declared: Declared = f.metadata[_SETTING]
        flag = None if declared.flag is None else "--" + f.name.replace("_", "-")
        envs = declared.envs or ("CHATD_" + f.name.upper(),)
        declared = replace(declared, flag=flag, envs=envs)
        options.append(Option(f.name, flag, envs, declared.help, declared))
    return tuple(options)


# Every setting, in declaration order.
OPTIONS: tuple[Option, ...] = _declare()

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
    for name, flag, envs, help_, _ in OPTIONS:
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
    for name, flag, envs, _, declared in OPTIONS:
        raw = getattr(args, name, None)
        source = flag or ""
        if raw is None:
            # An empty variable counts as unset, except for an optional listener's
            # address, where set and empty turns the listener off.
            env = next(
                (e for e in envs if environ.get(e) or (declared.optional and e in environ)),
                None,
            )
            if env is not None:
                raw, source = environ[env], env
        if raw is not None:
            values[name] = _convert(name, raw, source)
    return Settings(**values)  # type: ignore[arg-type]


def variable_names() -> tuple[str, ...]:
    """Every CHATD_* environment variable chatd reads."""
    return tuple(e for o in OPTIONS for e in o.envs if e.startswith("CHATD_"))


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


def _check_declared(settings: Settings, option: Option) -> None:
    value = getattr(settings, option.name)
    rule = option.declared
    source = rule.source
    if rule.address and (value or not rule.optional):
        try:
            require_host(value)
        except ValueError:
            off = ", or empty to turn it off" if rule.optional else ""
            raise SettingsError(f"{source}={value!r}: expected host:port{off}") from None
    fold = str.lower if rule.any_case else str
    if rule.choices and fold(value) not in {fold(c) for c in rule.choices}:
        raise SettingsError(f"{source}={value!r}: expected one of {', '.join(rule.choices)}")
    if rule.positive and value <= 0:
        raise SettingsError(f"{source}={value!r}: must be greater than 0")
    if rule.minimum is not None and value < rule.minimum:
        raise SettingsError(f"{source}={value!r}: must be at least {rule.minimum:g}")
    if rule.maximum is not None and value > rule.maximum:
        raise SettingsError(f"{source}={value!r}: must be at most {rule.maximum:g}")


def validate(settings: Settings) -> None:
    """Raises SettingsError, naming the variable and flag, for the first setting that
    breaks its declared checks (see `setting`) or a rule between settings."""
    for option in OPTIONS:
        _check_declared(settings, option)
    has_keys = bool(settings.api_keys or settings.api_keys_file)
    for address in (settings.listen, settings.http_listen):
        if not address or has_keys or settings.insecure_no_auth:
            continue
        if not _loopback(parse_host_port(address).host):
            raise SettingsError(
                f"refusing to listen on {address} without API keys: anyone who can reach "
                "it could read and write every session. Set CHATD_API_KEYS or "
                "CHATD_API_KEYS_FILE, or pass --insecure-no-auth if the network is trusted"
            )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SettingsError("CHATD_TLS_CERT and CHATD_TLS_KEY go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise SettingsError("CHATD_TLS_CLIENT_CA (mutual TLS) needs CHATD_TLS_CERT and KEY")
    if not math.isfinite(settings.gemini_context_cache_ttl):
        # Gemini takes the TTL as a protobuf Duration: a number of seconds.
        raise SettingsError(
            "CHATD_GEMINI_CONTEXT_CACHE_TTL/--gemini-context-cache-ttl="
            f"{settings.gemini_context_cache_ttl!r}: must be a finite number of seconds"
        )
    if settings.provider == "gemini" and not settings.gemini_configured:
        raise SettingsError(
            "CHATD_PROVIDER=gemini needs GEMINI_API_KEY (or GOOGLE_API_KEY), or "
            "GOOGLE_GENAI_USE_VERTEXAI=true with GOOGLE_CLOUD_PROJECT"
        )
