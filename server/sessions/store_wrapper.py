"""StoreWrapper: a SessionStore that forwards every operation to another one inside a
context manager named after the operation (the base of the metrics and tracing decorators,
and of the session cache for what it does not cache)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

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


class StoreWrapper:
    """Forwards each SessionStore method to `inner` inside `self._around(operation)`, where
    `operation` is the method's name ("commit_turn", "close"...). Subclasses give
    `_around`; what the operation raises passes through unchanged."""

    def __init__(self, inner: SessionStore) -> None:
        self._inner = inner

    def _around(self, operation: str) -> AbstractContextManager[object]:
        raise NotImplementedError

    async def create_session(
        self,
        session: Session,
        messages: Sequence[Message] = (),
        request: RequestRecord | None = None,
        *,
        now: float | None = None,
        max_sessions: int = 0,
    ) -> None:
        with self._around("create_session"):
            await self._inner.create_session(
                session, messages, request, now=now, max_sessions=max_sessions
            )

    async def get_session(self, tenant: str, session_id: str) -> Session:
        with self._around("get_session"):
            return await self._inner.get_session(tenant, session_id)

    async def count_sessions(self, tenant: str) -> int:
        with self._around("count_sessions"):
            return await self._inner.count_sessions(tenant)

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        with self._around("list_sessions"):
            return await self._inner.list_sessions(tenant, query)

    async def delete_session(self, tenant: str, session_id: str, uid: str | None = None) -> None:
        with self._around("delete_session"):
            await self._inner.delete_session(tenant, session_id, uid)

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        with self._around("recent_messages"):
            return await self._inner.recent_messages(tenant, session_id, limit)

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        with self._around("list_messages"):
            return await self._inner.list_messages(tenant, session_id, after_seq, limit)

    async def commit_turn(
        self,
        session: Session,
        messages: Sequence[Message],
        expected_version: int,
        request: RequestRecord | None = None,
        reply: ReplyWrite | None = None,
    ) -> None:
        with self._around("commit_turn"):
            await self._inner.commit_turn(session, messages, expected_version, request, reply)

    async def clear_history(self, session: Session, expected_version: int) -> None:
        with self._around("clear_history"):
            await self._inner.clear_history(session, expected_version)

    async def delete_expired(self, now: float, limit: int) -> int:
        with self._around("delete_expired"):
            return await self._inner.delete_expired(now, limit)

    async def put_request(self, request: RequestRecord) -> None:
        with self._around("put_request"):
            await self._inner.put_request(request)

    async def get_request(self, tenant: str, request_id: str) -> RequestRecord | None:
        with self._around("get_request"):
            return await self._inner.get_request(tenant, request_id)

    async def delete_requests_before(self, time: float, limit: int) -> int:
        with self._around("delete_requests_before"):
            return await self._inner.delete_requests_before(time, limit)

    async def put_reply(self, write: ReplyWrite) -> bool:
        with self._around("put_reply"):
            return await self._inner.put_reply(write)

    async def get_reply(self, tenant: str, reply_id: str) -> ReplyRecord | None:
        with self._around("get_reply"):
            return await self._inner.get_reply(tenant, reply_id)

    async def list_replies(
        self, tenant: str, session_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[ReplyRecord]:
        with self._around("list_replies"):
            return await self._inner.list_replies(tenant, session_id, limit, before)

    async def reply_events(self, tenant: str, reply_id: str, after_seq: int) -> list[ReplyEvents]:
        with self._around("reply_events"):
            return await self._inner.reply_events(tenant, reply_id, after_seq)

    async def renew_replies(self, owner: str, lease_expire_time: float) -> int:
        with self._around("renew_replies"):
            return await self._inner.renew_replies(owner, lease_expire_time)

    async def fail_stale_replies(
        self, now: float, error: ReplyError, limit: int, *, expired_by: float | None = None
    ) -> int:
        with self._around("fail_stale_replies"):
            return await self._inner.fail_stale_replies(now, error, limit, expired_by=expired_by)

    async def delete_replies_before(self, time: float, limit: int) -> int:
        with self._around("delete_replies_before"):
            return await self._inner.delete_replies_before(time, limit)

    async def close(self) -> None:
        with self._around("close"):
            await self._inner.close()


if TYPE_CHECKING:  # mypy checks that the wrapper still implements the port
    _implements: type[SessionStore] = StoreWrapper
