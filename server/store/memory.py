"""MemoryStore: the reference SessionStore, kept in dicts for tests and development."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.sessions.model import Message, Session
from server.sessions.ports import RequestRecord, SessionOrder, SessionQuery
from server.store import rules


@dataclass(slots=True)
class _Record:
    session: Session
    messages: list[Message] = field(default_factory=list)  # ordered by seq


def _seq(message: Message) -> int:
    return message.seq


class MemoryStore:
    """SessionStore in process memory. Values are frozen, so nothing is copied.

    Each method runs without awaiting, so it is atomic on the event loop. Every check
    comes before the first change, so a refused write changes nothing.
    """

    def __init__(self) -> None:
        self._tenants: dict[str, dict[str, _Record]] = {}
        self._requests: dict[tuple[str, str], RequestRecord] = {}

    def _record(self, tenant: str, session_id: str) -> _Record:
        record = self._tenants.get(tenant, {}).get(session_id)
        if record is None:
            raise rules.not_found(session_id)
        return record

    def _check_request(self, request: RequestRecord | None) -> None:
        # Checked before anything else, like the SQL stores' first insert: the retry of
        # a write that did apply must be told so, not get Conflict or AlreadyExists.
        if request is not None and (request.tenant, request.request_id) in self._requests:
            raise rules.duplicate_request(request.request_id)

    def _keep_request(self, request: RequestRecord | None) -> None:
        if request is not None:
            self._requests[request.tenant, request.request_id] = rules.quantize_request(request)

    async def create_session(
        self,
        session: Session,
        messages: Sequence[Message] = (),
        request: RequestRecord | None = None,
        *,
        now: float | None = None,
        max_sessions: int = 0,
    ) -> None:
        rules.check_seqs(session, messages)
        rules.check_request(session, request)
        self._check_request(request)
        sessions = self._tenants.get(session.tenant, {})
        at = None if now is None else rules.to_micros(now)
        existing = sessions.get(session.session_id)
        if existing is not None and (at is None or _alive(existing.session, at)):
            raise rules.already_exists(session.session_id)
        if max_sessions > 0:
            others = (
                r
                for sid, r in sessions.items()
                if sid != session.session_id and (at is None or _alive(r.session, at))
            )
            if sum(1 for _ in others) >= max_sessions:
                raise rules.quota_exceeded(max_sessions)
        history = [rules.quantize_message(m) for m in messages]
        record = _Record(rules.quantize_session(session), history)
        self._tenants.setdefault(session.tenant, {})[session.session_id] = record
        self._keep_request(request)

    async def get_session(self, tenant: str, session_id: str) -> Session:
        return self._record(tenant, session_id).session

    async def count_sessions(self, tenant: str) -> int:
        return len(self._tenants.get(tenant, {}))

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        if query.limit <= 0:
            return []
        by_create = query.order is SessionOrder.CREATE_TIME

        def key(s: Session) -> tuple[float, str]:
            return (s.create_time if by_create else s.update_time, s.session_id)

        labels = query.labels.items()
        alive = None if query.alive_at is None else rules.to_micros(query.alive_at)
        candidates = [
            r.session
            for r in self._tenants.get(tenant, {}).values()
            if all(r.session.settings.labels.get(k) == v for k, v in labels)
            and (alive is None or _alive(r.session, alive))
        ]
        if (after := query.after) is not None:
            cursor = (rules.quantize_time(after.time), after.session_id)
            if query.descending:
                candidates = [s for s in candidates if key(s) < cursor]
            else:
                candidates = [s for s in candidates if key(s) > cursor]
        pick = heapq.nlargest if query.descending else heapq.nsmallest
        return pick(query.limit, candidates, key=key)

    async def delete_session(self, tenant: str, session_id: str, uid: str | None = None) -> None:
        record = self._record(tenant, session_id)
        if uid is not None and record.session.uid != uid:
            raise rules.not_found(session_id)
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

    def _guarded(self, session: Session, expected_version: int, first_new_seq: int) -> _Record:
        """The stored record, if `session` may replace it (else Conflict/NotFound)."""
        record = self._tenants.get(session.tenant, {}).get(session.session_id)
        if (
            record is None
            or record.session.uid != session.uid
            or rules.expired(rules.expire_micros(record.session), session.update_time)
        ):
            raise rules.not_found(session.session_id)
        stored = record.session
        if stored.version != expected_version:
            raise rules.conflict(session.session_id, stored.version, expected_version)
        if stored.next_seq > first_new_seq:
            raise rules.seq_reused(stored.next_seq)
        return record

    async def commit_turn(
        self,
        session: Session,
        messages: Sequence[Message],
        expected_version: int,
        request: RequestRecord | None = None,
    ) -> None:
        rules.check_turn(session, messages, expected_version)
        rules.check_request(session, request)
        self._check_request(request)
        first = rules.first_new_seq(session, messages)
        record = self._guarded(session, expected_version, first)
        record.session = rules.quantize_session(session)
        record.messages.extend(rules.quantize_message(m) for m in messages)
        self._keep_request(request)

    async def clear_history(self, session: Session, expected_version: int) -> None:
        rules.check_version(session, expected_version)
        record = self._guarded(session, expected_version, session.next_seq)
        record.session = rules.quantize_session(session)
        record.messages = []

    async def delete_expired(self, now: float, limit: int) -> int:
        cutoff = rules.to_micros(now)
        expired = (
            (expire, tenant, session_id)
            for tenant, sessions in self._tenants.items()
            for session_id, record in sessions.items()
            if (expire := rules.expire_micros(record.session)) is not None and expire <= cutoff
        )
        # Soonest expired first, as the SQL stores walk their expire_time index.
        doomed = heapq.nsmallest(max(limit, 0), expired)
        for _, tenant, session_id in doomed:
            del self._tenants[tenant][session_id]
        return len(doomed)

    async def put_request(self, request: RequestRecord) -> None:
        self._check_request(request)
        self._keep_request(request)

    async def get_request(self, tenant: str, request_id: str) -> RequestRecord | None:
        return self._requests.get((tenant, request_id))

    async def delete_requests_before(self, time: float, limit: int) -> int:
        cutoff = rules.to_micros(time)
        old = (
            (rules.to_micros(r.create_time), key)
            for key, r in self._requests.items()
            if rules.to_micros(r.create_time) < cutoff
        )
        doomed = heapq.nsmallest(max(limit, 0), old)
        for _, key in doomed:
            del self._requests[key]
        return len(doomed)

    async def close(self) -> None:
        self._tenants.clear()
        self._requests.clear()


def _alive(session: Session, at_micros: int) -> bool:
    expire = rules.expire_micros(session)
    return expire is None or expire > at_micros
