"""Passwords in URLs never reach chatd's output: log lines and settings dumps."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from server.config import Settings
from server.redact import redact_url
from tests.process import ChatdProcess


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql://user:secret@host:5432/db?sslmode=require",
            "postgresql://user:***@host:5432/db?sslmode=require",
        ),
        ("postgresql://user:se/cr@et@host/db", "postgresql://user:***@host/db"),
        ("postgresql://:secret@host/db", "postgresql://:***@host/db"),
        ("postgresql://host/db?user=u&password=secret", "postgresql://host/db?user=u&password=***"),
        ("postgresql://host/db?sslpassword=secret&x=1", "postgresql://host/db?sslpassword=***&x=1"),
        ("https://example.test/v1?key=secret", "https://example.test/v1?key=***"),
        ("host=db user=u password=secret", "host=db user=u password=***"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:///var/chatd.db", "sqlite:///var/chatd.db"),
        ("memory://", "memory://"),
        ("", ""),
    ],
)
def test_redact_url_masks_passwords_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url)


def test_settings_repr_never_shows_urls() -> None:
    settings = Settings(
        database_url="postgresql://user:secret@host/db",
        gemini_base_url="https://u:secret@example.test",
        gemini_api_key="secret",
    )
    assert "secret" not in repr(settings)


def _postgres_with_password() -> str | None:
    """The test PostgreSQL's URL with a password added (trust authentication ignores it)."""
    dsn = os.environ.get("CHATD_TEST_POSTGRES_DSN")
    if not dsn or "@" not in dsn:
        return None
    scheme, _, rest = dsn.partition("://")
    userinfo, _, host = rest.partition("@")
    return f"{scheme}://{userinfo.split(':')[0]}:secret@{host}"


async def test_start_up_log_lines_redact_database_and_base_url(tmp_path: Path) -> None:
    """The `serving` and `provider selected` lines show the URLs without their secrets
    (PostgreSQL with a password when CHATD_TEST_POSTGRES_DSN is set, else SQLite, which has
    none: a SQLite URL with a query is refused, see tests/store/test_open_store.py)."""
    database = _postgres_with_password() or f"sqlite:///{tmp_path}/chatd.db"
    process = ChatdProcess(
        "--database-url",
        database,
        env={
            "CHATD_LOG_LEVEL": "info",
            "GEMINI_API_KEY": "test-key",
            "CHATD_GEMINI_BASE_URL": "http://user:secret@127.0.0.1:9/?key=secret",
        },
    )
    await process.start()
    try:
        serving = next(e for e in process.log if e.get("event") == "serving")
        selected = next(e for e in process.log if e.get("event") == "provider selected")
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
    if database.startswith("postgres"):
        assert "***" in serving["database"]
    assert serving["database"] == redact_url(database)
    assert selected["base_url"] == "http://user:***@127.0.0.1:9/?key=***"
    assert "secret" not in json.dumps(process.log)
