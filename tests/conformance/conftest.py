"""The implementations each conformance suite runs against, as fixture params: a new
ModelProvider is one entry in providers.PROVIDERS, a new ToolRunner one in
runners.RUNNERS."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from server.sessions.ports import ToolRunner
from server.tools import Tool
from server.tools.mcp_servers import McpServers

from .providers import PROVIDERS, ProviderCase
from .runners import RUNNERS, STALL, STALL_TIMEOUT, mcp_stdio_config


@pytest.fixture(params=list(PROVIDERS))
async def case(request: pytest.FixtureRequest) -> AsyncIterator[ProviderCase]:
    made = PROVIDERS[request.param](request)
    yield made
    await made.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mcp_stdio_tools() -> AsyncIterator[list[Tool]]:
    """The tools of tests/mcp_server.py over stdio, its server started once per module;
    t__stall with the suite's short timeout, the others with the server's."""
    servers = McpServers([mcp_stdio_config()])
    found = await servers.start()
    yield [
        dataclasses.replace(t, timeout=STALL_TIMEOUT) if t.name == STALL else t for t, _ in found
    ]
    await servers.close()


@pytest.fixture(params=list(RUNNERS))
def runner(request: pytest.FixtureRequest) -> ToolRunner:
    return RUNNERS[request.param](request)
