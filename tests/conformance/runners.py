"""The ToolRunner implementations the tool-runner suite runs against, each serving the same
three tools under the same names (those of tests/mcp_server.py, as MCP server "t" serves
them): `t__add` (a + b, as text), `t__fail` (fails with "failed: <reason>") and `t__stall`
(never returns, with a timeout of STALL_TIMEOUT seconds).

A new implementation is one entry in RUNNERS: a function of the pytest request that
returns the runner (it may ask for other fixtures through request.getfixturevalue).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from server.sessions.ports import ToolRunner
from server.tools import Tool, ToolError, ToolRegistry, tool
from server.tools.mcp_servers import ServerConfig
from server.tracing.setup import Tracing
from server.tracing.tools import TracedTools

ROOT = Path(__file__).resolve().parents[2]
# What t__stall is given before its call is abandoned: it never returns, so any value
# gives the same outcome; a small one keeps the suite quick.
STALL_TIMEOUT = 0.2
ADD, FAIL, STALL = "t__add", "t__fail", "t__stall"


def python_tools() -> list[Tool]:
    @tool(name=ADD)
    async def add(a: int, b: int) -> str:
        """Adds two integers."""
        return str(a + b)

    @tool(name=FAIL)
    def fail(reason: str) -> str:
        """Always fails with the reason."""
        raise ToolError(f"failed: {reason}")

    @tool(name=STALL, timeout=STALL_TIMEOUT)
    async def stall() -> str:
        """Never returns: a call to it ends only by its timeout."""
        await asyncio.Event().wait()
        return "never"

    return [add, fail, stall]


def mcp_stdio_config() -> ServerConfig:
    """tests/mcp_server.py over stdio as MCP server "t", serving the suite's three tools."""
    return ServerConfig(
        name="t",
        command=sys.executable,
        args=("-m", "tests.mcp_server", "stdio"),
        cwd=str(ROOT),
        include_tools=frozenset({"add", "fail", "stall"}),
        timeout=60.0,
    )


def _python(request: pytest.FixtureRequest) -> ToolRunner:
    return ToolRegistry(python_tools())


def _python_traced(request: pytest.FixtureRequest) -> ToolRunner:
    """The registry as a server with tracing on serves it."""
    return TracedTools(ToolRegistry(python_tools()), Tracing(TracerProvider()))


def _mcp_stdio(request: pytest.FixtureRequest) -> ToolRunner:
    return ToolRegistry(request.getfixturevalue("mcp_stdio_tools"))


RUNNERS: dict[str, Callable[[pytest.FixtureRequest], ToolRunner]] = {
    "python": _python,
    "python-traced": _python_traced,
    "mcp-stdio": _mcp_stdio,
}
