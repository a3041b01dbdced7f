"""Typed settings from command-line flags and CHATD_* environment variables, validated once."""

from __future__ import annotations

import argparse
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
    database_url: str = "sqlite:///var/chatd.db"
    provider: str = "auto"
    default_model: str = ""
    grace_period: float = 10.0
    cache_max_bytes: int = 64 * 1024 * 1024
    sqlite_synchronous: str = "FULL"
    postgres_schema: str = ""
    postgres_max_connections: int = 10
    echo_delay_ms: float = 0.0
    log_format: str = "auto"
    log_level: str = "info"
    max_message_bytes: int = 8 * 1024 * 1024
    # Python modules whose @tool functions are served, comma-separated.
    tools: str = ""
    max_tool_rounds: int = 8
    sweep_interval: float = 60.0
    request_id_window: float = 24 * 3600.0
    # Gemini: an API key, or Vertex AI with a project (and location).
    gemini_api_key: str = field(default="", repr=False)
    gemini_vertexai: bool = False
    gemini_project: str = ""
    gemini_location: str = ""
    gemini_base_url: str = ""
    gemini_timeout: float = 120.0
    gemini_retry_attempts: int = 3

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
    ("database_url", "--database-url", ("CHATD_DATABASE_URL",), "sqlite:///path.db or memory://"),
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
        "log_format",
        "--log-format",
        ("CHATD_LOG_FORMAT",),
        "auto (JSON unless a TTY) | json | console",
    ),
    ("log_level", "--log-level", ("CHATD_LOG_LEVEL",), "debug | info | warning | error"),
    ("max_message_bytes", "--max-message-bytes", ("CHATD_MAX_MESSAGE_BYTES",), "largest request"),
    ("tools", "--tools", ("CHATD_TOOLS",), "modules with @tool functions, comma-separated"),
    ("max_tool_rounds", "--max-tool-rounds", ("CHATD_MAX_TOOL_ROUNDS",), "tool rounds per turn"),
    ("sweep_interval", "--sweep-interval", ("CHATD_SWEEP_INTERVAL",), "seconds between sweeps"),
    (
        "request_id_window",
        "--request-id-window",
        ("CHATD_REQUEST_ID_WINDOW",),
        "seconds a request_id is remembered",
    ),
    # Credentials come from the environment only, never from flags visible in `ps`.
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


def load(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    parser = argparse.ArgumentParser(prog="chatd serve", description="Run the chatd gRPC server.")
    for name, flag, envs, help_ in _OPTIONS:
        if flag is not None:
            parser.add_argument(flag, dest=name, default=None, help=f"{help_} [env {envs[0]}]")
    args = parser.parse_args(list(argv))
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
    settings = Settings(**values)  # type: ignore[arg-type]
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    host, sep, port = settings.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"CHATD_LISTEN/--listen={settings.listen!r}: expected host:port")
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
    for name in ("grace_period", "cache_max_bytes", "echo_delay_ms"):
        if getattr(settings, name) < 0:
            raise SettingsError(f"{name} must not be negative")
    if settings.postgres_max_connections < 1:
        raise SettingsError("CHATD_POSTGRES_MAX_CONNECTIONS must be at least 1")
    if settings.sweep_interval <= 0 or settings.request_id_window <= 0:
        raise SettingsError("CHATD_SWEEP_INTERVAL and CHATD_REQUEST_ID_WINDOW must be positive")
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
