"""The sweeper: deletes expired sessions, forgotten request ids and old replies, in bounded
batches, and tells the model provider which sessions expired."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from server.sessions.ports import SessionResources, SessionStore

log = structlog.get_logger("chatd.sweeper")

BATCH = 500


class Sweeper:
    """Every `interval` seconds: expired sessions go, request records older than
    `request_window` (so retries after that run again), and replies that ended more than
    `reply_window` ago. `resources` (the model provider, when it keeps anything per
    session) lets go of what it keeps for sessions that expired."""

    def __init__(
        self,
        store: SessionStore,
        *,
        interval: float,
        request_window: float,
        reply_window: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
        resources: SessionResources | None = None,
    ) -> None:
        self._store = store
        self._resources = resources
        self._interval = interval
        self._request_window = request_window
        self._reply_window = reply_window
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> tuple[int, int, int]:
        """One pass; (sessions, request records, replies) deleted. Batches keep each
        transaction small."""
        now = self._clock()
        sessions = requests = 0
        while (n := await self._store.delete_expired(now, BATCH)) > 0:
            sessions += n
            if n < BATCH:
                break
        if self._resources is not None:
            self._resources.release_expired(now)
        cutoff = now - self._request_window
        while (n := await self._store.delete_requests_before(cutoff, BATCH)) > 0:
            requests += n
            if n < BATCH:
                break
        replies = 0
        cutoff = now - self._reply_window
        while (n := await self._store.delete_replies_before(cutoff, BATCH)) > 0:
            replies += n
            if n < BATCH:
                break
        if sessions or requests or replies:
            log.info("swept", expired_sessions=sessions, request_records=requests, replies=replies)
        return sessions, requests, replies

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatd-sweeper")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception:  # a failed pass is retried on the next tick
                log.exception("sweep failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
