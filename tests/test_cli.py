"""The operator's first minutes, through real `chatd` processes: the command line, `chatd
health`, and start-up refusals that name the setting to change."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.config import DATABASE_URL_FORMS, OPTIONS, Settings
from server.store import open_store, shared_url
from tests.certs import make_pki
from tests.conftest import StartChatd
from tests.process import ROOT, ChatdProcess

CHATD = Path(sys.executable).parent / "chatd"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


async def run(
    *argv: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[int, str, str]:
    """Runs the installed `chatd` script to its end: exit code, stdout, stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    proc = await asyncio.create_subprocess_exec(
        str(CHATD),
        *argv,
        cwd=cwd,
        env={**base, "CHATD_LOG_FORMAT": "json", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def records(stderr: str) -> list[dict[str, Any]]:
    """The JSON log records among stderr's lines."""
    found = []
    for line in stderr.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def cannot_start(stderr: str) -> dict[str, Any]:
    (record,) = [r for r in records(stderr) if r.get("event") == "cannot start"]
    assert record["level"] == "error"
    return record


# The command line.


async def test_help_lists_the_commands_and_exits_0() -> None:
    code, out, _ = await run("--help")
    assert code == 0
    for command in ("serve", "health", "version"):
        assert f"    {command} " in out, out
    assert "--version" in out


async def test_version_flag_and_command_print_the_package_version() -> None:
    for argv in (("--version",), ("version",)):
        code, out, _ = await run(*argv)
        assert (code, out.strip()) == (0, f"chatd {VERSION}")


async def test_no_command_is_a_usage_error() -> None:
    code, _, err = await run()
    assert code == 2
    assert "usage: chatd" in err


async def test_a_refused_setting_is_a_usage_error_naming_it() -> None:
    code, _, err = await run("serve", "--log-level", "nope", "--database-url", "memory://")
    assert code == 2
    assert err.startswith("chatd: CHATD_LOG_LEVEL")


async def test_serve_help_shows_every_flag_its_default_and_variable_and_every_url_form() -> None:
    code, out, _ = await run("serve", "--help")
    assert code == 0
    flat = " ".join(out.split())  # argparse wraps lines wherever it likes
    defaults = Settings()
    for name, flag, envs, _, _ in OPTIONS:
        if flag is None:
            assert envs[0] in flat  # credentials: named in the epilog, never flags
            continue
        value = getattr(defaults, name)
        shown = (
            ("on" if value else "off")
            if isinstance(value, bool)
            else (str(value) if value != "" else "empty")
        )
        assert f"{flag} " in flat, flag
        assert f"(default: {shown}; env {envs[0]})" in flat, (flag, shown)
    for url, _ in DATABASE_URL_FORMS:
        assert f"  {url}\n" in out, url


async def test_every_documented_url_form_opens_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forms `serve --help` shows are ones the store accepts (PostgreSQL: parsed only,
    its own tests open it)."""
    for url, _ in DATABASE_URL_FORMS:
        if url.startswith("postgresql://"):
            assert shared_url(url)  # read as PostgreSQL; tests/store opens real ones
            continue
        if url.startswith("sqlite:////"):
            url = f"sqlite:///{tmp_path}/absolute.db"
        else:
            (tmp_path / "var").mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path)  # sqlite:///var/chatd.db: relative to the working directory
        store = await open_store(url, cache_max_bytes=0)
        await store.close()
    assert (tmp_path / "var" / "chatd.db").exists()
    assert (tmp_path / "absolute.db").exists()


# `chatd health`.


async def test_health_exits_0_when_serving(start_chatd: StartChatd) -> None:
    chatd = await start_chatd()
    code, out, _ = await run("health", env={"CHATD_LISTEN": chatd.address})
    assert code == 0
    assert out.strip() == f"chatd health: {chatd.address}: chatd.v1.ChatService is SERVING"


async def test_health_asks_loopback_for_a_wildcard_listen_address(
    start_chatd: StartChatd,
) -> None:
    """In a container CHATD_LISTEN is 0.0.0.0:50051: the check dials 127.0.0.1."""
    chatd = await start_chatd()
    port = chatd.running.port
    code, out, _ = await run("health", env={"CHATD_LISTEN": f"0.0.0.0:{port}"})
    assert code == 0, out
    assert f"127.0.0.1:{port}" in out


async def test_health_exits_1_with_one_line_when_nothing_listens() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]  # bound, never listening: connections are refused
        code, out, err = await run("health", env={"CHATD_LISTEN": f"127.0.0.1:{port}"})
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"chatd health: 127.0.0.1:{port}: UNAVAILABLE"), err


async def test_health_exits_1_while_the_server_drains(start_chatd: StartChatd) -> None:
    chatd = await start_chatd()
    await chatd.running.health.enter_graceful_shutdown()
    code, _, err = await run("health", env={"CHATD_LISTEN": chatd.address})
    assert code == 1
    assert "chatd.v1.ChatService is NOT_SERVING" in err, err


async def test_health_names_an_unknown_service(start_chatd: StartChatd) -> None:
    chatd = await start_chatd()
    code, _, err = await run("health", "--service", "no.Such", env={"CHATD_LISTEN": chatd.address})
    assert code == 1
    assert "service 'no.Such' is unknown" in err, err


async def test_health_cannot_guess_a_port_chosen_at_start() -> None:
    code, _, err = await run("health", env={"CHATD_LISTEN": "127.0.0.1:0"})
    assert code == 1
    assert "pass --address" in err


async def test_health_speaks_tls_and_mutual_tls_from_the_servers_settings(
    start_chatd: StartChatd, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    tls_env = {"CHATD_TLS_CERT": str(pki.server.cert), "CHATD_TLS_KEY": str(pki.server.key)}
    tls = await start_chatd(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    code, out, err = await run("health", env={"CHATD_LISTEN": tls.address, **tls_env})
    assert code == 0, err
    assert "SERVING" in out
    # The same server asked in plaintext is not healthy: the check follows the settings.
    code, _, err = await run("health", env={"CHATD_LISTEN": tls.address})
    assert code == 1, err

    mtls = await start_chatd(
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        tls_client_ca=str(pki.ca.cert),
    )
    mtls_env = {"CHATD_LISTEN": mtls.address, **tls_env, "CHATD_TLS_CLIENT_CA": str(pki.ca.cert)}
    code, _, err = await run("health", env=mtls_env)
    assert code == 1
    assert "pass --client-cert and --client-key" in err
    client = ("--client-cert", str(pki.client.cert), "--client-key", str(pki.client.key))
    code, out, err = await run("health", *client, env=mtls_env)
    assert code == 0, err


# Start-up refusals that name the setting.


@pytest.fixture
def busy_port() -> Iterator[str]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield f"127.0.0.1:{taken.getsockname()[1]}"


async def test_a_busy_grpc_port_names_chatd_listen(busy_port: str) -> None:
    code, _, err = await run(
        "serve",
        "--listen",
        busy_port,
        "--metrics-listen",
        "127.0.0.1:0",
        "--database-url",
        "memory://",
    )
    assert code == 1
    record = cannot_start(err)
    assert record["path"] == busy_port
    assert record["cause"] == "the address is already in use by another process"
    assert "CHATD_LISTEN (or --listen)" in record["fix"]


async def test_a_busy_metrics_port_names_chatd_metrics_listen(busy_port: str) -> None:
    code, _, err = await run(
        "serve", "--listen", "127.0.0.1:0", "--database-url", "memory://",
        env={"CHATD_METRICS_LISTEN": busy_port},
    )  # fmt: skip
    assert code == 1
    record = cannot_start(err)
    assert record["path"] == busy_port
    assert record["cause"] == "the address is already in use by another process"
    assert "CHATD_METRICS_LISTEN (or --metrics-listen)" in record["fix"]
    assert "empty value turns metrics off" in record["fix"]


async def test_an_unknown_chatd_variable_gets_one_warning_naming_the_closest() -> None:
    server = await ChatdProcess(
        "--database-url",
        "memory://",
        env={
            "CHATD_LISTN": "127.0.0.1:1",
            "CHATD_PROVDER": "echo",
            "CHATD_ZZZZZ_QQQ": "1",
            # The client examples' variables, which a shell running both may hold.
            "CHATD_API_KEY": "k",
            "CHATD_ADDRESS": "127.0.0.1:1",
            "CHATD_CA_CERT": "ca.pem",
        },
    ).start()
    try:
        warnings = [r for r in server.log if r["event"] == "unknown setting ignored"]
    finally:
        await server.kill()
    hints = {r["variable"]: r["hint"] for r in warnings}
    assert hints["CHATD_LISTN"] == "did you mean CHATD_LISTEN?"
    assert hints["CHATD_PROVDER"] == "did you mean CHATD_PROVIDER?"
    assert hints["CHATD_ZZZZZ_QQQ"] == "see `chatd serve --help`"
    assert len(warnings) == len(hints), "one warning per variable"
    assert {r["level"] for r in warnings} == {"warning"}
    assert "CHATD_DATABASE_URL" not in hints  # real settings are not warned about
    assert not hints.keys() & {"CHATD_API_KEY", "CHATD_ADDRESS", "CHATD_CA_CERT"}


async def test_a_sqlite_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "volume" / "not-mounted"
    code, _, err = await run(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        env={"CHATD_DATABASE_URL": f"sqlite:///{missing}/chatd.db"},
    )
    assert code == 1
    record = cannot_start(err)
    assert record["cause"] == f"its directory {missing} does not exist"
    assert "CHATD_DATABASE_URL" in record["fix"]
    assert not missing.exists()
    assert not missing.parent.exists()


async def test_the_default_database_is_refused_where_var_is_missing(tmp_path: Path) -> None:
    """`sqlite:///var/chatd.db` from a directory without ./var (`make run` creates it)."""
    code, _, err = await run(
        "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "", cwd=tmp_path
    )
    assert code == 1
    assert cannot_start(err)["cause"] == f"its directory {tmp_path / 'var'} does not exist"
    assert not (tmp_path / "var").exists()
