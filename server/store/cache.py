"""CachedStore: a bounded write-through LRU of sessions and the tail of their history."""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.sessions.locks import KeyedLocks
from server.sessions.model import Message, Session
from server.sessions.ports import SessionQuery, SessionStore
from server.store import rules
from server.store.sizes import message_size, session_size

_Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int


@dataclass(slots=True)
class _Entry:
    session: Session
    # The newest messages, oldest first, with nothing missing between them and the end.
    tail: list[Message] = field(default_factory=list)
    complete: bool = False  # the tail is the whole history
    # Kept up to date incrementally: re-estimating a long tail on every turn would cost
    # more than the cache saves.
    session_bytes: int = 0
    tail_bytes: int = 0

    @classmethod
    def of(cls, session: Session, tail: Sequence[Message] = (), complete: bool = False) -> _Entry:
        entry = cls(session, list(tail), complete, session_size(session))
        entry.tail_bytes = sum(message_size(m) for m in entry.tail)
        return entry

    @property
    def size(self) -> int:
        return self.session_bytes + self.tail_bytes

    def covers(self, limit: int | None) -> bool:
        return self.complete or (limit is not None and len(self.tail) >= limit)


def _seq(message: Message) -> int:
    return message.seq


class CachedStore:
    """Write-through cache over `inner`, bounded by an estimate of its bytes.

    Hits are answered without awaiting. Every call that reaches `inner` for a session
    holds that session's lock and refills the entry while holding it, so a slow load can
    never overwrite what a newer write put in the cache. Assumes it is the only writer
    of `inner` (one process per database).
    """

    def __init__(self, inner: SessionStore, max_bytes: int, *, max_tail_messages: int = 1000):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self._inner = inner
        self._max_bytes = max_bytes
        self._max_tail = max_tail_messages
        # One session may take at most a quarter, so a huge one cannot flush all others.
        self._max_entry_bytes = max_bytes // 4
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._locks = KeyedLocks()
        self._bytes = self._hits = self._misses = self._evictions = 0

    @property
    def stats(self) -> CacheStats:
        return CacheStats(
            self._hits, self._misses, self._evictions, len(self._entries), self._bytes
        )

    # ------------------------------------------------------------------ bookkeeping

    def _hit(self, key: _Key) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def _take(self, key: _Key) -> _Entry | None:
        """Removes the entry from the cache (and its accounting) to change or drop it."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
        return entry

    def _put(self, key: _Key, entry: _Entry) -> None:
        """Inserts a taken or new entry as most recent, trimming it and evicting to fit."""
        tail = entry.tail
        drop = max(len(tail) - self._max_tail, 0)
        dropped = sum(message_size(m) for m in tail[:drop])
        while drop < len(tail) and entry.size - dropped > self._max_entry_bytes:
            dropped += message_size(tail[drop])
            drop += 1
        if drop:
            del tail[:drop]
            entry.tail_bytes -= dropped
            entry.complete = False
        if entry.size > self._max_entry_bytes:
            return  # even the bare session is too big to be worth caching
        self._entries[key] = entry
        self._bytes += entry.size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self._evictions += 1

    # ------------------------------------------------------------------ SessionStore

    async def create_session(self, session: Session) -> None:
        key = (session.tenant, session.session_id)
        async with self._locks.hold(key):
            await self._inner.create_session(session)
            # A new session has no messages, so the empty tail is its whole history.
            self._take(key)
            self._put(key, _Entry.of(rules.quantize_session(session), complete=True))

    async def get_session(self, tenant: str, session_id: str) -> Session:
        key = (tenant, session_id)
        if (entry := self._hit(key)) is not None:
            self._hits += 1
            return entry.session
        self._misses += 1
        async with self._locks.hold(key):
            if (entry := self._entries.get(key)) is not None:  # filled while we waited
                return entry.session
            session = await self._inner.get_session(tenant, session_id)
            self._put(key, _Entry.of(session))
            return session

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        return await self._inner.list_sessions(tenant, query)

    async def delete_session(self, tenant: str, session_id: str) -> None:
        key = (tenant, session_id)
        async with self._locks.hold(key):
            try:
                await self._inner.delete_session(tenant, session_id)
            finally:
                self._take(key)  # gone, or in an unknown state: either way not cached

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        key = (tenant, session_id)
        if (entry := self._hit(key)) is not None and entry.covers(limit):
            self._hits += 1
            return _last(entry.tail, limit)
        self._misses += 1
        async with self._locks.hold(key):
            if (entry := self._entries.get(key)) is not None and entry.covers(limit):
                return _last(entry.tail, limit)
            messages = await self._inner.recent_messages(tenant, session_id, limit)
            # Fill only an entry that survived the await; without its session (not loaded
            # here, to keep a miss one call) there is nothing to attach the tail to.
            entry = self._entries.get(key)
            whole = limit is None or len(messages) < limit
            if entry is not None and (whole or len(messages) > len(entry.tail)):
                self._take(key)
                self._put(key, _Entry.of(entry.session, messages, whole))
            return messages

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        entry = self._hit((tenant, session_id))
        # Served when every message after `after_seq` is in the tail.
        if entry is not None and (
            entry.complete or (entry.tail and entry.tail[0].seq <= after_seq)
        ):
            self._hits += 1
            start = bisect_right(entry.tail, after_seq, key=_seq)
            return entry.tail[start : start + max(limit, 0)]
        self._misses += 1
        return await self._inner.list_messages(tenant, session_id, after_seq, limit)

    async def commit_turn(
        self, session: Session, messages: Sequence[Message], expected_version: int
    ) -> None:
        key = (session.tenant, session.session_id)
        async with self._locks.hold(key):
            try:
                await self._inner.commit_turn(session, messages, expected_version)
            except BaseException:
                # Conflict/NotFound mean the entry is stale; anything else (cancellation
                # included) leaves the outcome unknown. Reload from inner next time.
                self._take(key)
                raise
            session = rules.quantize_session(session)
            added = [rules.quantize_message(m) for m in messages]
            entry = self._take(key)
            if entry is None:
                # The new messages are the newest, so they alone are a valid tail.
                entry = _Entry.of(session, added)
            else:
                old = entry.session
                # Settings rarely change between turns and are the costly part to size.
                if not (
                    session.settings is old.settings
                    and not session.pending_tool_calls
                    and not old.pending_tool_calls
                ):
                    entry.session_bytes = session_size(session)
                entry.session = session
                entry.tail.extend(added)
                entry.tail_bytes += sum(message_size(m) for m in added)
            self._put(key, entry)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0
        await self._inner.close()


def _last(tail: list[Message], limit: int | None) -> list[Message]:
    if limit is None:
        return list(tail)
    return tail[-limit:] if limit > 0 else []
