"""MCP over HTTP: a call that may have reached its server is never sent again, and a server's
own errors and one oversized result leave its connection alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mcp_types
import pytest

from server.tools.definition import ToolError
from server.tools.mcp_servers import McpServers, ServerConfig

ROOT = Path(__file__).resolve().parent.parent


def _spawn(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.mcp_json_server", str(port_file), *flags], cwd=ROOT
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return process, f"http://127.0.0.1:{int(port_file.read_text())}/mcp"


@pytest.fixture(params=["modern", "legacy", "modern-sse"])
def json_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    flags = ["--legacy"] if "legacy" in request.param else []
    flags += ["--sse"] if "sse" in request.param else []
    process, url = _spawn(tmp_path, *flags)
    yield url
    process.kill()
    process.wait()


def _logged(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _lines(path: Path, n: int, within: float = 5.0) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        lines = _logged(path)
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.02)


async def test_a_call_in_flight_is_not_run_twice_when_another_call_drops_the_connection(
    json_server: str, tmp_path: Path
) -> None:
    """Call A runs on the server; call B on the same server fails with the server's own
    JSON-RPC error -32000. A is neither woken nor sent again: the tool runs once."""
    servers = McpServers(
        [ServerConfig(name="j", url=json_server, timeout=30, exclude_tools=frozenset({"coded"}))]
    )
    await servers.start(connect_timeout=10)
    [srv] = servers.servers
    log, release = tmp_path / "log", tmp_path / "release"
    os.mkfifo(release)
    try:
        a = asyncio.create_task(srv.call("counted", {"log": str(log), "release": str(release)}))
        assert len(await _lines(log, 1)) == 1  # A runs on the server
        with pytest.raises(ToolError):
            await srv.call("busy", {})
        lines = await _lines(log, 2, within=3.0)
        assert len(lines) == 1, f"the call ran {len(lines)} times on the server"
    finally:
        a.cancel()
        await asyncio.gather(a, return_exceptions=True)
        await servers.close()


async def test_a_call_in_flight_is_not_run_twice_when_a_relisting_fails(
    json_server: str, tmp_path: Path
) -> None:
    """Call A runs on the server; the server says its tools changed and then fails one
    tools/list (mid-reload). The connection stays, and A is not sent again."""
    servers = McpServers(
        [ServerConfig(name="j", url=json_server, timeout=30, exclude_tools=frozenset({"coded"}))]
    )
    await servers.start(connect_timeout=10)
    [srv] = servers.servers
    log, release = tmp_path / "log", tmp_path / "release"
    os.mkfifo(release)
    try:
        a = asyncio.create_task(srv.call("counted", {"log": str(log), "release": str(release)}))
        assert len(await _lines(log, 1)) == 1  # A runs on the server
        [said] = (await srv.call("break_listing", {})).content
        assert isinstance(said, mcp_types.TextContent) and said.text == "broken"
        lines = await _lines(log, 2, within=3.0)
        assert len(lines) == 1, f"the call ran {len(lines)} times on the server"
    finally:
        a.cancel()
        await asyncio.gather(a, return_exceptions=True)
        await servers.close()


@pytest.fixture
def sse_server(tmp_path: Path) -> Iterator[str]:
    process, url = _spawn(tmp_path, "--sse")
    yield url
    process.kill()
    process.wait()


async def test_a_servers_own_error_minus_32000_is_its_message_not_a_lost_connection(
    sse_server: str,
) -> None:
    """JSON-RPC 2.0 reserves -32000..-32099 for servers' own errors, and the SDK's
    CONNECTION_CLOSED is -32000 too: the server's answer reaches the model as its message,
    and the connection stays."""
    servers = McpServers(
        [ServerConfig(name="j", url=sse_server, timeout=30, exclude_tools=frozenset({"coded"}))]
    )
    await servers.start(connect_timeout=10)
    [srv] = servers.servers
    try:
        with pytest.raises(ToolError) as failed:
            await srv.call("busy", {})
        assert "server busy, try later" in str(failed.value)
        await asyncio.sleep(0.3)
        assert srv.restarts == 0, "a healthy connection was torn down and made again"
    finally:
        await servers.close()


@pytest.fixture
def legacy_sse_server(tmp_path: Path) -> Iterator[str]:
    process, url = _spawn(tmp_path, "--sse", "--legacy")
    yield url
    process.kill()
    process.wait()


async def test_one_oversized_result_does_not_drop_the_connection(legacy_sse_server: str) -> None:
    """A result above the SSE event limit is a tool error naming it; the connection stays."""
    servers = McpServers(
        [
            ServerConfig(
                name="j", url=legacy_sse_server, timeout=30, exclude_tools=frozenset({"coded"})
            )
        ],
        max_result_bytes=1000,  # events up to 4*1000 + 64 KiB
    )
    await servers.start(connect_timeout=10)
    [srv] = servers.servers
    try:
        with pytest.raises(ToolError, match="larger than chatd takes"):
            await srv.call("big", {"size": 200_000})
        await asyncio.sleep(0.3)
        assert srv.restarts == 0, "a healthy connection was torn down and made again"
    finally:
        await servers.close()
