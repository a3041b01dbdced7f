"""MemoryStore: the reference SessionStore, kept in dicts for tests and development."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.sessions.model import Message, Session
from server.sessions.ports import SessionOrder, SessionQuery
from server.store import rules


@dataclass(slots=True)
class _Record:
    session: Session
    messages: list[Message] = field(default_factory=list)  # ordered by seq


def _seq(message: Message) -> int:
    return message.seq


class MemoryStore:
    """SessionStore in process memory. Values are frozen, so nothing is copied.

    Each method runs without awaiting, so it is atomic on the event loop.
    """

    def __init__(self) -> None:
        self._tenants: dict[str, dict[str, _Record]] = {}

    def _record(self, tenant: str, session_id: str) -> _Record:
        record = self._tenants.get(tenant, {}).get(session_id)
        if record is None:
            raise rules.not_found(session_id)
        return record

    async def create_session(self, session: Session) -> None:
        sessions = self._tenants.setdefault(session.tenant, {})
        if session.session_id in sessions:
            raise rules.already_exists(session.session_id)
        sessions[session.session_id] = _Record(rules.quantize_session(session))

    async def get_session(self, tenant: str, session_id: str) -> Session:
        return self._record(tenant, session_id).session

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        if query.limit <= 0:
            return []
        by_create = query.order is SessionOrder.CREATE_TIME

        def key(s: Session) -> tuple[float, str]:
            return (s.create_time if by_create else s.update_time, s.session_id)

        labels = query.labels.items()
        candidates = [
            r.session
            for r in self._tenants.get(tenant, {}).values()
            if all(r.session.settings.labels.get(k) == v for k, v in labels)
        ]
        if (after := query.after) is not None:
            cursor = (rules.quantize_time(after.time), after.session_id)
            if query.descending:
                candidates = [s for s in candidates if key(s) < cursor]
            else:
                candidates = [s for s in candidates if key(s) > cursor]
        pick = heapq.nlargest if query.descending else heapq.nsmallest
        return pick(query.limit, candidates, key=key)

    async def delete_session(self, tenant: str, session_id: str) -> None:
        self._record(tenant, session_id)
        del self._tenants[tenant][session_id]

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        messages = self._record(tenant, session_id).messages
        if limit is None:
            return list(messages)
        return messages[-limit:] if limit > 0 else []

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        messages = self._record(tenant, session_id).messages
        start = bisect_right(messages, after_seq, key=_seq)
        return messages[start : start + max(limit, 0)]

    async def commit_turn(
        self, session: Session, messages: Sequence[Message], expected_version: int
    ) -> None:
        rules.check_turn(session, messages, expected_version)
        record = self._record(session.tenant, session.session_id)
        stored = record.session
        if stored.version != expected_version:
            raise rules.conflict(session.session_id, stored.version, expected_version)
        if stored.next_seq > rules.first_new_seq(session, messages):
            raise rules.seq_reused(stored.next_seq)
        record.session = rules.quantize_session(session)
        record.messages.extend(rules.quantize_message(m) for m in messages)

    async def close(self) -> None:
        self._tenants.clear()
