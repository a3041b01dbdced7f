"""Typed settings from command-line flags and CHATD_* environment variables, validated once."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    echo_delay_ms: float = 0.0
    log_format: str = "auto"
    log_level: str = "info"
    max_message_bytes: int = 8 * 1024 * 1024


# (field, flag, environment variable, help)
_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("listen", "--listen", "CHATD_LISTEN", "host:port to serve gRPC on (port 0 picks one)"),
    ("database_url", "--database-url", "CHATD_DATABASE_URL", "sqlite:///path.db or memory://"),
    ("provider", "--provider", "CHATD_PROVIDER", "auto | echo | gemini"),
    ("default_model", "--default-model", "CHATD_DEFAULT_MODEL", "model for sessions without one"),
    ("grace_period", "--grace-period", "CHATD_GRACE_PERIOD", "seconds running RPCs get at stop"),
    ("cache_max_bytes", "--cache-max-bytes", "CHATD_CACHE_MAX_BYTES", "session cache cap (0=off)"),
    ("sqlite_synchronous", "--sqlite-synchronous", "CHATD_SQLITE_SYNCHRONOUS", "FULL | NORMAL"),
    ("echo_delay_ms", "--echo-delay-ms", "CHATD_ECHO_DELAY_MS", "echo provider delay per delta"),
    ("log_format", "--log-format", "CHATD_LOG_FORMAT", "auto (JSON unless a TTY) | json | console"),
    ("log_level", "--log-level", "CHATD_LOG_LEVEL", "debug | info | warning | error"),
    ("max_message_bytes", "--max-message-bytes", "CHATD_MAX_MESSAGE_BYTES", "largest request"),
)


def _convert(name: str, raw: str, source: str) -> object:
    kind = type(getattr(Settings(), name))
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{source}={raw!r}: expected a {kind.__name__}") from None


def load(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    parser = argparse.ArgumentParser(prog="chatd serve", description="Run the chatd gRPC server.")
    for name, flag, env, help_ in _OPTIONS:
        parser.add_argument(flag, dest=name, default=None, help=f"{help_} [env {env}]")
    args = parser.parse_args(list(argv))
    values: dict[str, object] = {}
    for name, flag, env, _ in _OPTIONS:
        raw = getattr(args, name)
        source = flag
        if raw is None and env in environ:
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
    if settings.max_message_bytes < 1024:
        raise SettingsError("CHATD_MAX_MESSAGE_BYTES must be at least 1024")
