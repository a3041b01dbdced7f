"""CachedStore: a bounded write-through LRU of sessions and the tail of their history."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

from server.sessions.errors import NotFound
from server.sessions.locks import KeyedLocks
from server.sessions.model import Message, Session
from server.sessions.ports import (
    ReplyWrite,
    RequestRecord,
    SessionQuery,
    SessionStore,
)
from server.sessions.store_wrapper import StoreWrapper
from server.store import codec, rules
from server.store.cache_entry import CacheStats, Entry

__all__ = ["CacheStats", "CachedStore"]

_Key = tuple[str, str]


def _compact_session(session: Session) -> Session:
    """The session with the default settings, a zero usage and its tenant shared.

    A store builds these anew for every session it loads; sharing them saves a few
    hundred bytes per cached session.
    """
    settings, usage, tenant = session.settings, session.usage, session.tenant
    if (
        (settings is codec.DEFAULT_SETTINGS or settings != codec.DEFAULT_SETTINGS)
        and (usage is codec.ZERO_USAGE or usage != codec.ZERO_USAGE)
        and sys.intern(tenant) is tenant
    ):
        return session
    return session.evolve(
        settings=codec.DEFAULT_SETTINGS if settings == codec.DEFAULT_SETTINGS else settings,
        usage=codec.ZERO_USAGE if usage == codec.ZERO_USAGE else usage,
        tenant=sys.intern(tenant),
    )


class CachedStore(StoreWrapper):
    """Write-through cache over `inner`, bounded by an estimate of its bytes.

    Every call that reaches `inner` for a session holds that session's lock and refills
    the entry while holding it, so a slow load can never overwrite what a newer write
    put in the cache.

    By default it assumes it is `inner`'s only writer (one process per database), and
    hits are answered without awaiting. With `shared=True` other processes write the
    same database, and the cache must never serve what they replaced:

    - get_session always reads the row from `inner`. The cached tail is kept only if
      the cached session equals that row (same version, times and next_seq), else it is
      dropped; either way the entry is then *validated*.
    - recent_messages and list_messages answer from the tail only for a validated entry,
      and each such answer uses the validation up. History read that way is as of the
      caller's preceding get_session: read the session first, then its history (the
      turn engine does). Any other history read goes to `inner`.
    - Writes through this cache update the entry but leave it unvalidated; a Conflict
      or any other failure drops it.

    Cached history is kept in two tiers (see `cache_entry`): the messages reads use,
    decoded, for the most recently used sessions, at most `max_decoded_bytes` of them
    (an eighth of `max_bytes` by default; the session last used is kept decoded even
    when it alone is bigger, unless it is 0), and everything else packed as bytes and
    decoded when read. A session read turn after turn gets the same `Message` objects
    every time, while it stays in the decoded tier. Sizes are estimates of the real
    bytes held (`sizes`), and the whole cache, both tiers, stays under `max_bytes`.

    A session's cached tail holds at most `max_tail_messages` messages and a quarter of
    `max_bytes`: a session that sends its whole history every turn (no window) is served
    from the cache up to that length, so its messages stay the same objects turn after
    turn (what a provider's per-message encoding relies on).
    """

    def __init__(
        self,
        inner: SessionStore,
        max_bytes: int,
        *,
        max_tail_messages: int = 10_000,
        shared: bool = False,
        max_decoded_bytes: int | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if max_decoded_bytes is not None and max_decoded_bytes < 0:
            raise ValueError("max_decoded_bytes must not be negative")
        super().__init__(inner)
        self._max_bytes = max_bytes
        self._max_tail = max_tail_messages
        self._shared = shared
        # One session may take at most a quarter, so a huge one cannot flush all others.
        self._max_entry_bytes = max_bytes // 4
        self._max_decoded = max_bytes // 8 if max_decoded_bytes is None else max_decoded_bytes
        self._entries: OrderedDict[_Key, Entry] = OrderedDict()
        # The entries with decoded messages, least recently used first.
        self._decoded: OrderedDict[_Key, Entry] = OrderedDict()
        self._locks = KeyedLocks()
        self._bytes = self._hits = self._misses = self._evictions = 0
        self._decoded_bytes = 0
        # delete_expired has deleted, or may be deleting, sessions expired by this time
        # (microseconds); such sessions are not cached, or a racing load could revive one.
        self._swept_until: int | None = None

    @property
    def shared(self) -> bool:
        return self._shared

    @property
    def stats(self) -> CacheStats:
        return CacheStats(
            self._hits,
            self._misses,
            self._evictions,
            len(self._entries),
            self._bytes,
            len(self._decoded),
            self._decoded_bytes,
        )

    # ------------------------------------------------------------------ bookkeeping

    def _hit(self, key: _Key) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def _use(self, entry: Entry) -> bool:
        """Whether the entry's history may answer a read now (always, unless shared)."""
        if self._shared and not entry.validated:
            return False
        entry.validated = False  # one read per validation
        return True

    def _take(self, key: _Key) -> Entry | None:
        """Removes the entry from the cache (and its accounting) to change or drop it."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
            if self._decoded.pop(key, None) is not None:
                self._decoded_bytes -= entry.hot_bytes
        return entry

    def _last(self, key: _Key, entry: Entry, limit: int | None) -> list[Message]:
        """The entry's newest `limit` messages, promoting packed ones to the decoded tier."""
        if entry.hot_covers(limit):
            messages = entry.last(limit)
            if entry.hot:
                self._decoded.move_to_end(key)
            return messages
        size, hot = entry.size, entry.hot_bytes
        messages = entry.last(limit)
        self._bytes += entry.size - size
        self._decoded_bytes += entry.hot_bytes - hot
        self._decoded[key] = entry
        self._decoded.move_to_end(key)
        self._shrink()
        return messages

    def _shrink(self) -> None:
        """Demotes the least recently used decoded entries to fit the decoded tier's
        share, then evicts the least recently used entries to fit the cap."""
        decoded = self._decoded
        while self._decoded_bytes > self._max_decoded and decoded:
            if len(decoded) == 1 and self._max_decoded:
                break  # the session in use stays decoded even when it alone is too big
            _, entry = decoded.popitem(last=False)
            size = entry.size
            self._decoded_bytes -= entry.hot_bytes
            entry.demote()
            self._bytes += entry.size - size
        while self._bytes > self._max_bytes:
            key, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            if decoded.pop(key, None) is not None:
                self._decoded_bytes -= evicted.hot_bytes
            self._evictions += 1

    def _swept(self, session: Session) -> bool:
        expire = rules.expire_micros(session)
        return expire is not None and self._swept_until is not None and expire <= self._swept_until

    def _put(self, key: _Key, entry: Entry) -> None:
        """Inserts a taken or new entry as most recent, trimming it and evicting to fit."""
        entry.trim(self._max_tail, self._max_entry_bytes)
        size = entry.size
        if size > self._max_entry_bytes or self._swept(entry.session):
            return  # too big to be worth caching, or perhaps deleted already
        # The session's own strings: the caller's copies of them may be kept elsewhere.
        key = (entry.session.tenant, entry.session.session_id)
        self._entries[key] = entry
        self._bytes += size
        if entry.hot:
            self._decoded[key] = entry
            self._decoded_bytes += entry.hot_bytes
        self._shrink()

    # ------------------------------------------------------------------ SessionStore

    async def create_session(
        self,
        session: Session,
        messages: Sequence[Message] = (),
        request: RequestRecord | None = None,
        *,
        now: float | None = None,
        max_sessions: int = 0,
    ) -> None:
        key = (session.tenant, session.session_id)
        async with self._locks.hold(key):
            try:
                await self._inner.create_session(
                    session, messages, request, now=now, max_sessions=max_sessions
                )
            except BaseException:
                self._take(key)  # the outcome may be unknown (cancelled): reload
                raise
            self._take(key)
            # The initial messages are the session's whole history; only its tail is kept
            # (a long imported history is not walked on the event loop just to be trimmed).
            tail = messages[-self._max_tail :] if self._max_tail else ()
            history = [rules.quantize_message(m) for m in tail]
            complete = len(tail) == len(messages)
            self._put(key, Entry.of(rules.quantize_session(session), history, complete=complete))

    async def get_session(self, tenant: str, session_id: str) -> Session:
        key = (tenant, session_id)
        if self._shared:
            return await self._validate(key)
        if (entry := self._hit(key)) is not None:
            self._hits += 1
            return entry.session
        self._misses += 1
        async with self._locks.hold(key):
            if (entry := self._entries.get(key)) is not None:  # filled while we waited
                return entry.session
            session = _compact_session(await self._inner.get_session(tenant, session_id))
            self._put(key, Entry.of(session))
            return session

    async def _validate(self, key: _Key) -> Session:
        """Shared mode's get_session: the stored row, with the tail kept if still current."""
        async with self._locks.hold(key):
            try:
                fresh = await self._inner.get_session(*key)
            except NotFound:
                self._take(key)
                raise
            except BaseException:
                if (entry := self._entries.get(key)) is not None:
                    entry.validated = False
                raise
            entry = self._take(key)
            # Equality, not just the version: a session deleted and created again
            # elsewhere restarts at version 1 with another history.
            if entry is not None and entry.session == fresh:
                self._hits += 1
            else:
                self._misses += 1
                entry = Entry.of(_compact_session(fresh))
            entry.validated = True
            self._put(key, entry)
            return fresh

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        return await self._inner.list_sessions(tenant, query)

    async def delete_session(self, tenant: str, session_id: str, uid: str | None = None) -> None:
        key = (tenant, session_id)
        async with self._locks.hold(key):
            try:
                await self._inner.delete_session(tenant, session_id, uid)
            finally:
                self._take(key)  # gone, or in an unknown state: either way not cached

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        key = (tenant, session_id)
        if (entry := self._hit(key)) is not None and entry.covers(limit) and self._use(entry):
            self._hits += 1
            return self._last(key, entry, limit)
        self._misses += 1
        async with self._locks.hold(key):
            entry = self._entries.get(key)
            if entry is not None and entry.covers(limit) and self._use(entry):
                return self._last(key, entry, limit)
            messages = await self._inner.recent_messages(tenant, session_id, limit)
            # Fill only an entry that survived the await; without its session (not loaded
            # here, to keep a miss one call) there is nothing to attach the tail to. In
            # shared mode the tail may be newer than the entry's session; the next
            # get_session then finds the row changed and drops it.
            entry = self._entries.get(key)
            whole = limit is None or len(messages) < limit
            if entry is not None and (whole or len(messages) > entry.count):
                self._take(key)
                filled = Entry.of(entry.session, messages, whole)
                filled.window = limit
                self._put(key, filled)
            return messages

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        entry = self._hit((tenant, session_id))
        if entry is not None and entry.covers_after(after_seq) and self._use(entry):
            self._hits += 1
            return entry.after(after_seq, limit)
        self._misses += 1
        return await self._inner.list_messages(tenant, session_id, after_seq, limit)

    async def commit_turn(
        self,
        session: Session,
        messages: Sequence[Message],
        expected_version: int,
        request: RequestRecord | None = None,
        reply: ReplyWrite | None = None,
    ) -> None:
        key = (session.tenant, session.session_id)
        async with self._locks.hold(key):
            try:
                await self._inner.commit_turn(session, messages, expected_version, request, reply)
            except BaseException:
                # Conflict/NotFound mean the entry is stale; anything else (cancellation
                # included) leaves the outcome unknown. Reload from inner next time.
                self._take(key)
                raise
            session = rules.quantize_session(session)
            added = [rules.quantize_message(m) for m in messages]
            entry = self._take(key)
            old = None if entry is None else entry.session
            if (
                entry is not None
                and old is not None
                and old.version == expected_version
                and old.uid == session.uid
            ):
                entry.advance(session, added)
                entry.validated = False
            else:
                # The tail may lack what happened between the cached version and
                # expected_version; the new messages are the newest, so they alone are
                # a valid tail.
                entry = Entry.of(session, added)
            self._put(key, entry)

    async def clear_history(self, session: Session, expected_version: int) -> None:
        key = (session.tenant, session.session_id)
        async with self._locks.hold(key):
            try:
                await self._inner.clear_history(session, expected_version)
            finally:
                self._take(key)
            self._put(key, Entry.of(rules.quantize_session(session), complete=True))

    async def delete_expired(self, now: float, limit: int) -> int:
        cutoff = rules.to_micros(now)
        if self._swept_until is None or cutoff > self._swept_until:
            self._swept_until = cutoff
        try:
            return await self._inner.delete_expired(now, limit)
        finally:
            # Not knowing which sessions inner deleted, forget every one it may have.
            for key in [k for k, e in self._entries.items() if self._swept(e.session)]:
                self._take(key)

    # The rest of the port (request ids, replies, counting) is forwarded as StoreWrapper
    # does: replies are not cached, each is read by its own stream, or rarely.

    def _around(self, operation: str) -> AbstractContextManager[object]:
        return nullcontext()

    async def close(self) -> None:
        self._entries.clear()
        self._decoded.clear()
        self._bytes = self._decoded_bytes = 0
        await self._inner.close()
