"""Shared fixtures: a real chatd server on 127.0.0.1:0 and stubs connected to it over TCP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from chatd.v1 import chat_service_pb2_grpc
from server import app, logs
from server.config import Settings
from server.providers.gemini import GeminiProvider, GeminiSettings
from server.sessions.ports import ModelProvider, SessionStore, ToolRunner
from tests.fake_gemini import FakeGemini, fake_gemini_fixture

logs.configure("console", os.environ.get("CHATD_TEST_LOG_LEVEL", "warning"))


@dataclass
class Chatd:
    """A running in-process server and a client connected to it."""

    running: app.RunningServer
    channel: grpc.aio.Channel
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub
    health: health_pb2_grpc.HealthStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


StartChatd = Callable[..., Any]


@pytest.fixture
async def start_chatd(tmp_path: Path) -> AsyncIterator[StartChatd]:
    """Starts servers on demand (SQLite in tmp_path by default) and stops them all at the end."""
    started: list[Chatd] = []

    async def start(
        *,
        store: SessionStore | None = None,
        provider: ModelProvider | None = None,
        tools: ToolRunner | None = None,
        tool_modules: str = "",
        **overrides: Any,
    ) -> Chatd:
        """`tools` replaces the registry; `tool_modules` is the setting CHATD_TOOLS."""
        options: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "database_url": f"sqlite:///{tmp_path}/chatd-{len(started)}.db",
            "grace_period": 1.0,
            # Every test server serves metrics, on a port of its own.
            "metrics_listen": "127.0.0.1:0",
            "tools": tool_modules,
        }
        options.update(overrides)
        running = await app.start(Settings(**options), store=store, provider=provider, tools=tools)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        chatd = Chatd(
            running,
            channel,
            chat_service_pb2_grpc.ChatServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )
        started.append(chatd)
        return chatd

    yield start
    for chatd in started:
        await chatd.channel.close()
        await chatd.running.stop(grace=0)


@pytest.fixture
async def chatd(start_chatd: StartChatd) -> Chatd:
    """One server on SQLite with the echo provider."""
    server: Chatd = await start_chatd()
    return server


fake_gemini = pytest.fixture(fake_gemini_fixture)


def fast_gemini(fake: FakeGemini, **overrides: Any) -> GeminiProvider:
    """The gemini provider pointed at the fake, with retries fast enough for tests."""
    options: dict[str, Any] = {
        "api_key": "test-key",
        "base_url": fake.base_url,
        "retry_initial_delay": 0.01,
        "retry_max_delay": 0.02,
        "retry_jitter": 0.0,
        "timeout": 5.0,
    }
    options.update(overrides)
    return GeminiProvider(GeminiSettings(**options))


@pytest.fixture
async def gemini_chatd(start_chatd: StartChatd, fake_gemini: FakeGemini) -> Chatd:
    """A server whose model is the fake Gemini, reached through the real SDK over HTTP."""
    server: Chatd = await start_chatd(provider=fast_gemini(fake_gemini))
    return server
