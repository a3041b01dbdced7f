"""Settings: flags over environment over defaults, provider choice, refusals naming the setting."""

from __future__ import annotations

import asyncio
import sys

import pytest

from server import app
from server.config import Settings, SettingsError, load
from server.providers.echo import EchoProvider
from server.providers.gemini import GeminiProvider
from tests.process import ROOT


def test_flags_win_over_environment_over_defaults() -> None:
    settings = load(
        ["--listen", "127.0.0.1:7000"],
        {"CHATD_LISTEN": "127.0.0.1:6000", "CHATD_GRACE_PERIOD": "3.5"},
    )
    assert settings.listen == "127.0.0.1:7000"
    assert settings.grace_period == 3.5
    assert settings.database_url == Settings().database_url


def test_gemini_credentials_come_from_either_key_variable_and_stay_out_of_repr() -> None:
    for env in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        settings = load([], {env: "secret-key"})
        assert settings.gemini_configured
        assert "secret-key" not in repr(settings)
    vertex = load([], {"GOOGLE_GENAI_USE_VERTEXAI": "true", "GOOGLE_CLOUD_PROJECT": "p"})
    assert vertex.gemini_configured
    assert not load([], {"GOOGLE_GENAI_USE_VERTEXAI": "true"}).gemini_configured


async def test_auto_picks_gemini_with_credentials_and_echo_without() -> None:
    with_key = app.build_provider(load([], {"GEMINI_API_KEY": "k"}))
    try:
        assert isinstance(with_key, GeminiProvider)
    finally:
        await with_key.close()
    assert isinstance(app.build_provider(load([], {})), EchoProvider)
    assert isinstance(
        app.build_provider(load([], {"CHATD_PROVIDER": "echo", "GEMINI_API_KEY": "k"})),
        EchoProvider,
    )


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {"CHATD_PROVIDER": "gemini"}, "GEMINI_API_KEY"),
        ([], {"CHATD_PROVIDER": "openai"}, "CHATD_PROVIDER"),
        (["--listen", "nowhere"], {}, "--listen"),
        ([], {"CHATD_GRACE_PERIOD": "soon"}, "CHATD_GRACE_PERIOD"),
        ([], {"CHATD_LOG_LEVEL": "loud"}, "CHATD_LOG_LEVEL"),
        ([], {"GOOGLE_GENAI_USE_VERTEXAI": "maybe"}, "GOOGLE_GENAI_USE_VERTEXAI"),
        ([], {"CHATD_GEMINI_RETRY_ATTEMPTS": "50"}, "CHATD_GEMINI_RETRY_ATTEMPTS"),
        # Choices are exact where the code compares them exactly.
        ([], {"CHATD_PROVIDER": "GEMINI", "GEMINI_API_KEY": "k"}, "CHATD_PROVIDER"),
        ([], {"CHATD_LOG_FORMAT": "JSON"}, "CHATD_LOG_FORMAT"),
        # What passes the checks is what the listeners are given: no stray whitespace.
        ([], {"CHATD_METRICS_LISTEN": "127.0.0.1:9464 "}, "CHATD_METRICS_LISTEN"),
        ([], {"CHATD_LISTEN": "::1:50051"}, "CHATD_LISTEN"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    argv: list[str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        load(argv, env)


def test_log_level_and_sqlite_synchronous_take_any_case() -> None:
    settings = load([], {"CHATD_LOG_LEVEL": "DEBUG", "CHATD_SQLITE_SYNCHRONOUS": "normal"})
    assert (settings.log_level, settings.sqlite_synchronous) == ("DEBUG", "normal")


async def test_server_refuses_to_start_with_a_clear_message() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "CHATD_PROVIDER": "gemini"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    assert b"CHATD_PROVIDER=gemini needs GEMINI_API_KEY" in err
