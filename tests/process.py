"""Runs chatd as a real subprocess (`python -m server serve`) for restart and signal tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from chatd.v1 import chat_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


class ChatdProcess:
    """A chatd server process; `start()` returns once it logs that it is serving."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.cwd = cwd
        self.args = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *args]
        self.env = {**os.environ, "CHATD_LOG_FORMAT": "json", **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.log: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 20) -> ChatdProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "serve",
            *self.args,
            cwd=self.cwd,
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
        )
        serving: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_log(serving))
        self.port = await asyncio.wait_for(serving, timeout)
        return self

    async def _read_log(self, serving: asyncio.Future[int]) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"event": line.decode(errors="replace").rstrip()}
            self.log.append(entry)
            if entry.get("event") == "serving" and not serving.done():
                serving.set_result(int(entry["port"]))
        if not serving.done():
            serving.set_exception(RuntimeError(f"chatd exited before serving: {self.log[-5:]}"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)

    def stubs(
        self, channel: grpc.aio.Channel
    ) -> tuple[chat_service_pb2_grpc.ChatServiceAsyncStub, health_pb2_grpc.HealthStub]:
        return chat_service_pb2_grpc.ChatServiceStub(channel), health_pb2_grpc.HealthStub(channel)

    def send_signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.wait()
