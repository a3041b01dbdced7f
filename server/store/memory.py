"""MemoryStore: the reference SessionStore, kept in dicts for tests and development."""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from server.sessions.model import Message, Session
from server.sessions.ports import (
    ReplyError,
    ReplyEvents,
    ReplyRecord,
    ReplyState,
    ReplyWrite,
    RequestRecord,
    SessionOrder,
    SessionQuery,
)
from server.store import rules


@dataclass(slots=True)
class _Record:
    session: Session
    messages: list[Message] = field(default_factory=list)  # ordered by seq


@dataclass(slots=True)
class _Reply:
    record: ReplyRecord
    events: list[ReplyEvents] = field(default_factory=list)  # ordered by first_seq


def _seq(message: Message) -> int:
    return message.seq


def _first_seq(events: ReplyEvents) -> int:
    return events.first_seq


class MemoryStore:
    """SessionStore in process memory. Values are frozen, so nothing is copied.

    Each method runs without awaiting, so it is atomic on the event loop. Every check
    comes before the first change, so a refused write changes nothing.
    """

    def __init__(self) -> None:
        self._tenants: dict[str, dict[str, _Record]] = {}
        self._requests: dict[tuple[str, str], RequestRecord] = {}
        self._replies: dict[tuple[str, str], _Reply] = {}  # by (tenant, reply_id)
        # Each session's reply ids, by (tenant, session_id), stored or not.
        self._session_replies: dict[tuple[str, str], set[str]] = {}

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

    def _write_reply(self, write: ReplyWrite) -> None:
        """Stores the record and its events, replacing a chunk that starts at the same seq."""
        record = rules.quantize_reply(write.record)
        key = (record.tenant, record.reply_id)
        stored = self._replies.get(key)
        if stored is None:
            stored = self._replies[key] = _Reply(record)
        elif stored.record.session_id != record.session_id:
            self._unindex(stored.record)
        stored.record = record
        self._session_replies.setdefault((record.tenant, record.session_id), set()).add(
            record.reply_id
        )
        if (events := write.events) is not None:
            chunks = stored.events
            at = bisect_left(chunks, events.first_seq, key=_first_seq)
            if at < len(chunks) and chunks[at].first_seq == events.first_seq:
                chunks[at] = events
            else:
                chunks.insert(at, events)

    def _unindex(self, record: ReplyRecord) -> None:
        key = (record.tenant, record.session_id)
        ids = self._session_replies[key]
        ids.discard(record.reply_id)
        if not ids:
            del self._session_replies[key]

    def _forget_session(self, tenant: str, session_id: str) -> None:
        """Deletes a stored session with its history and replies."""
        del self._tenants[tenant][session_id]
        for reply_id in self._session_replies.pop((tenant, session_id), ()):
            del self._replies[tenant, reply_id]

    async def create_session(
        self,
        session: Session,
        messages: Sequence[Message] = (),
        request: RequestRecord | None = None,
        *,
        now: float | None = None,
        max_sessions: int = 0,
    ) -> None:
        rules.check_create(session, messages, request)
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
        if existing is not None:  # expired: gone with its replies
            self._forget_session(session.tenant, session.session_id)
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
        self._forget_session(tenant, session_id)

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
        reply: ReplyWrite | None = None,
    ) -> None:
        rules.check_commit(session, messages, expected_version, request, reply)
        self._check_request(request)
        first = rules.first_new_seq(session, messages)
        record = self._guarded(session, expected_version, first)
        record.session = rules.quantize_session(session)
        record.messages.extend(rules.quantize_message(m) for m in messages)
        self._keep_request(request)
        if reply is not None:
            self._write_reply(reply)

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
            self._forget_session(tenant, session_id)
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

    async def put_reply(self, write: ReplyWrite) -> bool:
        rules.check_reply(write)
        stored = self._replies.get((write.record.tenant, write.record.reply_id))
        if stored is not None and (
            stored.record.state is not ReplyState.RUNNING
            or stored.record.last_seq != rules.stored_last_seq(write)
        ):
            return rules.reply_refused((stored.record.state.value, stored.record.last_seq), write)
        self._write_reply(write)
        return True

    async def get_reply(self, tenant: str, reply_id: str) -> ReplyRecord | None:
        stored = self._replies.get((tenant, reply_id))
        return None if stored is None else stored.record

    async def list_replies(
        self, tenant: str, session_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[ReplyRecord]:
        ids = self._session_replies.get((tenant, session_id), ())
        found: Iterable[tuple[int, str, ReplyRecord]] = (
            (rules.to_micros(r.create_time), r.reply_id, r)
            for r in (self._replies[tenant, reply_id].record for reply_id in ids)
        )
        if before is not None:
            cursor = rules.reply_cursor(before)
            found = (f for f in found if f[:2] < cursor)
        return [f[2] for f in heapq.nlargest(max(limit, 0), found, key=_listing_key)]

    async def reply_events(self, tenant: str, reply_id: str, after_seq: int) -> list[ReplyEvents]:
        stored = self._replies.get((tenant, reply_id))
        return [] if stored is None else [c for c in stored.events if c.last_seq > after_seq]

    async def renew_replies(self, owner: str, lease_expire_time: float) -> int:
        lease = rules.quantize_time(lease_expire_time)
        renewed = 0
        for stored in self._replies.values():
            record = stored.record
            if record.owner == owner and record.state is ReplyState.RUNNING:
                stored.record = replace(record, lease_expire_time=lease)
                renewed += 1
        return renewed

    async def fail_stale_replies(
        self, now: float, error: ReplyError, limit: int, *, expired_by: float | None = None
    ) -> int:
        cutoff = rules.to_micros(now if expired_by is None else expired_by)
        stale = (
            (lease, key)
            for key, stored in self._replies.items()
            if stored.record.state is ReplyState.RUNNING
            and stored.record.lease_expire_time is not None
            and (lease := rules.to_micros(stored.record.lease_expire_time)) <= cutoff
        )
        # Longest expired first, as the SQL stores walk their lease index.
        doomed = heapq.nsmallest(max(limit, 0), stale)
        update_time = rules.quantize_time(now)
        for _, key in doomed:
            stored = self._replies[key]
            stored.record = replace(
                stored.record,
                state=ReplyState.FAILED,
                update_time=update_time,
                owner="",
                lease_expire_time=None,
                error=error,
            )
        return len(doomed)

    async def delete_replies_before(self, time: float, limit: int) -> int:
        cutoff = rules.to_micros(time)
        old = (
            (updated, key)
            for key, stored in self._replies.items()
            if stored.record.state is not ReplyState.RUNNING
            and (updated := rules.to_micros(stored.record.update_time)) < cutoff
        )
        doomed = heapq.nsmallest(max(limit, 0), old)
        for _, key in doomed:
            self._unindex(self._replies.pop(key).record)
        return len(doomed)

    async def close(self) -> None:
        self._tenants.clear()
        self._requests.clear()
        self._replies.clear()
        self._session_replies.clear()


def _listing_key(found: tuple[int, str, ReplyRecord]) -> tuple[int, str]:
    return found[0], found[1]


def _alive(session: Session, at_micros: int) -> bool:
    expire = rules.expire_micros(session)
    return expire is None or expire > at_micros
