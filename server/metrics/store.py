"""InstrumentedStore: a SessionStore that times every operation by its outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from server.metrics.core import Metrics
from server.sessions.errors import AlreadyExists, Conflict, DuplicateRequest, NotFound
from server.sessions.model import Message, Session
from server.sessions.ports import (
    ReplyError,
    ReplyEvents,
    ReplyRecord,
    ReplyWrite,
    RequestRecord,
    SessionQuery,
    SessionStore,
)


def store_outcome(exc: BaseException | None) -> str:
    """ok, the store contract's answers (not_found, conflict, duplicate), cancelled or error."""
    if exc is None:
        return "ok"
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, Conflict):
        return "conflict"
    if isinstance(exc, AlreadyExists | DuplicateRequest):
        return "duplicate"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


class _Timed:
    """Times one operation; never swallows what the operation raised."""

    __slots__ = ("_metrics", "_operation", "_start")

    def __init__(self, metrics: Metrics, operation: str) -> None:
        self._metrics = metrics
        self._operation = operation
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        seconds = time.perf_counter() - self._start
        self._metrics.record_store_operation(self._operation, store_outcome(exc), seconds)


class InstrumentedStore:
    """Wraps `inner` transparently, recording each method under its own name."""

    def __init__(self, inner: SessionStore, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def _timed(self, operation: str) -> _Timed:
        return _Timed(self._metrics, operation)

    async def create_session(
        self,
        session: Session,
        messages: Sequence[Message] = (),
        request: RequestRecord | None = None,
        *,
        now: float | None = None,
        max_sessions: int = 0,
    ) -> None:
        with self._timed("create_session"):
            await self._inner.create_session(
                session, messages, request, now=now, max_sessions=max_sessions
            )

    async def get_session(self, tenant: str, session_id: str) -> Session:
        with self._timed("get_session"):
            return await self._inner.get_session(tenant, session_id)

    async def count_sessions(self, tenant: str) -> int:
        with self._timed("count_sessions"):
            return await self._inner.count_sessions(tenant)

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        with self._timed("list_sessions"):
            return await self._inner.list_sessions(tenant, query)

    async def delete_session(self, tenant: str, session_id: str, uid: str | None = None) -> None:
        with self._timed("delete_session"):
            await self._inner.delete_session(tenant, session_id, uid)

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        with self._timed("recent_messages"):
            return await self._inner.recent_messages(tenant, session_id, limit)

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        with self._timed("list_messages"):
            return await self._inner.list_messages(tenant, session_id, after_seq, limit)

    async def commit_turn(
        self,
        session: Session,
        messages: Sequence[Message],
        expected_version: int,
        request: RequestRecord | None = None,
        reply: ReplyWrite | None = None,
    ) -> None:
        with self._timed("commit_turn"):
            await self._inner.commit_turn(session, messages, expected_version, request, reply)

    async def clear_history(self, session: Session, expected_version: int) -> None:
        with self._timed("clear_history"):
            await self._inner.clear_history(session, expected_version)

    async def delete_expired(self, now: float, limit: int) -> int:
        with self._timed("delete_expired"):
            return await self._inner.delete_expired(now, limit)

    async def put_request(self, request: RequestRecord) -> None:
        with self._timed("put_request"):
            await self._inner.put_request(request)

    async def get_request(self, tenant: str, request_id: str) -> RequestRecord | None:
        with self._timed("get_request"):
            return await self._inner.get_request(tenant, request_id)

    async def delete_requests_before(self, time: float, limit: int) -> int:
        with self._timed("delete_requests_before"):
            return await self._inner.delete_requests_before(time, limit)

    async def put_reply(self, write: ReplyWrite) -> bool:
        with self._timed("put_reply"):
            return await self._inner.put_reply(write)

    async def get_reply(self, tenant: str, reply_id: str) -> ReplyRecord | None:
        with self._timed("get_reply"):
            return await self._inner.get_reply(tenant, reply_id)

    async def list_replies(
        self, tenant: str, session_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[ReplyRecord]:
        with self._timed("list_replies"):
            return await self._inner.list_replies(tenant, session_id, limit, before)

    async def reply_events(self, tenant: str, reply_id: str, after_seq: int) -> list[ReplyEvents]:
        with self._timed("reply_events"):
            return await self._inner.reply_events(tenant, reply_id, after_seq)

    async def renew_replies(self, owner: str, lease_expire_time: float) -> int:
        with self._timed("renew_replies"):
            return await self._inner.renew_replies(owner, lease_expire_time)

    async def fail_stale_replies(
        self, now: float, error: ReplyError, limit: int, *, expired_by: float | None = None
    ) -> int:
        with self._timed("fail_stale_replies"):
            return await self._inner.fail_stale_replies(now, error, limit, expired_by=expired_by)

    async def delete_replies_before(self, time: float, limit: int) -> int:
        with self._timed("delete_replies_before"):
            return await self._inner.delete_replies_before(time, limit)

    async def close(self) -> None:
        with self._timed("close"):
            await self._inner.close()


if TYPE_CHECKING:  # mypy checks that the decorator still implements the port
    _implements: type[SessionStore] = InstrumentedStore
