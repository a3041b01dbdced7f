"""A scripted model provider implementing the ModelProvider Protocol, for turn-engine tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.sessions.model import FinishReason, Part, Usage
from server.sessions.ports import ModelChunk, ModelRequest, TokenCount


@dataclass
class ScriptedProvider:
    """Streams `deltas` (with `delay` seconds before each), records every request it gets,
    and records whether the consumer cancelled it. `fail_after` raises `error` after that
    many deltas."""

    deltas: list[str] = field(default_factory=lambda: ["Hel", "lo", "!"])
    delay: float = 0.0
    error: BaseException | None = None
    fail_after: int | None = None
    requests: list[ModelRequest] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return "scripted"

    @property
    def default_model(self) -> str:
        return "scripted-model"

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.requests.append(request)
        self.started.set()
        try:
            for i, delta in enumerate(self.deltas):
                if self.fail_after is not None and i == self.fail_after:
                    assert self.error is not None
                    raise self.error
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield ModelChunk(parts=(Part(text=delta),))
            yield ModelChunk(
                usage=Usage(prompt_tokens=3, candidates_tokens=2, total_tokens=5),
                finish_reason=FinishReason.STOP,
            )
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        return TokenCount(len(request.contents), estimated=True)

    async def close(self) -> None:
        return None


class LatchStore:
    """A SessionStore that passes every call to `inner`, except that while `holding` is
    set each write (commit_turn, clear_history, delete_session, put_request) first reports itself in
    `entered` and then waits for `release`. `log` records, in order, each held write's
    start and end and every get_session, so a test can check what overlapped what."""

    _HELD = ("commit_turn", "clear_history", "delete_session", "put_request")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.holding = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.log: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name == "get_session":

            async def get_session(tenant: str, session_id: str) -> Any:
                self.log.append("get_session")
                return await method(tenant, session_id)

            return get_session
        if name not in self._HELD:
            return method

        async def held(*args: Any, **kwargs: Any) -> Any:
            if self.holding:
                self.log.append(f"{name} start")
                self.entered.set()
                await self.release.wait()
            try:
                return await method(*args, **kwargs)
            finally:
                if self.holding:
                    self.log.append(f"{name} end")

        return held


class GatedProvider:
    """Streams `deltas`, one each time the test lets one through (`release()`), so a test
    decides exactly how far a reply has got. Counts calls, and sets `cancelled` when the
    consumer stops a call (the upstream call would be closed)."""

    def __init__(self, deltas: list[str] | None = None) -> None:
        self.deltas = deltas if deltas is not None else ["one ", "two ", "three ", "four"]
        self.calls = 0
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self._gate: asyncio.Queue[None] = asyncio.Queue()

    @property
    def name(self) -> str:
        return "gated"

    @property
    def default_model(self) -> str:
        return "gated-model"

    def release(self, n: int = 1) -> None:
        """Lets `n` more deltas (the last one also ends the answer) through."""
        for _ in range(n):
            self._gate.put_nowait(None)

    @property
    def unreleased(self) -> int:
        """Deltas let through that the stream has not taken yet."""
        return self._gate.qsize()

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.calls += 1
        self.started.set()
        try:
            for delta in self.deltas:
                await self._gate.get()
                yield ModelChunk(parts=(Part(text=delta),))
            yield ModelChunk(
                usage=Usage(prompt_tokens=3, candidates_tokens=4, total_tokens=7),
                finish_reason=FinishReason.STOP,
            )
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        return TokenCount(len(request.contents), estimated=True)

    async def close(self) -> None:
        return None
