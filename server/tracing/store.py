"""TracedStore: a SessionStore whose every operation (one transaction each) is a span.

Database client spans after the semantic conventions v1.37.0
(https://github.com/open-telemetry/semantic-conventions/blob/v1.37.0/docs/database/database-spans.md):
kind CLIENT, db.system.name ("sqlite", "postgresql", or "other_sql" for the in-memory
store) and the older db.system, and db.operation.name, the store port's method
("commit_turn", "get_session"...). A store method is one transaction of several
statements over several tables, so it has no single target (collection); the span is
named after the operation, which says more in a trace than the convention's fallback
(db.system.name alone). Failures are recorded as the span's error status and exception
event by the SDK; NotFound and the other answers of the store contract are errors to the
span as well. It wraps the database's store beneath the session cache
(server.store.open_store's `wrap`), so cache hits, which are no transaction, have no span.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind

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
from server.tracing.setup import Tracing


class TracedStore:
    """Wraps `inner` transparently; each operation is a span named after it."""

    def __init__(self, inner: SessionStore, tracing: Tracing, db_system: str) -> None:
        self._inner = inner
        self._tracer = tracing.tracer
        self._system = db_system

    def _timed(self, operation: str) -> AbstractContextManager[object]:
        # Store work with no trace around it (the sweeper's) would be a root trace per
        # sweep: it is not traced.
        if not trace.get_current_span().get_span_context().is_valid:
            return nullcontext()
        return self._tracer.start_as_current_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": self._system,
                "db.system": self._system,
                "db.operation.name": operation,
            },
        )

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
        await self._inner.close()


if TYPE_CHECKING:  # mypy checks that the decorator still implements the port
    _implements: type[SessionStore] = TracedStore
