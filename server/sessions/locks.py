"""Per-key asyncio locks that exist only while someone holds or waits for them, and the
session lock built on them."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class KeyedLocks:
    """Serializes work per key (a session) without keeping a lock per idle key."""

    def __init__(self) -> None:
        self._slots: dict[Hashable, _Slot] = {}

    def hold(self, key: Hashable) -> _Held:
        """`async with locks.hold(key):` runs the block while holding key's lock."""
        return _Held(self._slots, key)

    def __len__(self) -> int:
        return len(self._slots)


class SessionLocks:
    """One lock per session (tenant, session id): whatever changes a session's history
    or deletes it (a turn, the history operations, DeleteSession) holds it, so those
    changes run one at a time per session in this process. Across processes the
    store's optimistic versions decide (SessionStore.commit_turn)."""

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    def hold(self, tenant: str, session_id: str) -> _Held:
        """`async with locks.hold(tenant, session_id):` runs the block holding the
        session's lock (waiting, cancellably, for whoever holds it)."""
        return self._locks.hold((tenant, session_id))


class _Held:
    """A class rather than @asynccontextmanager: it is on every turn's path and costs a
    third as much."""

    __slots__ = ("_key", "_slot", "_slots")

    def __init__(self, slots: dict[Hashable, _Slot], key: Hashable) -> None:
        self._slots, self._key = slots, key

    async def __aenter__(self) -> None:
        slot = self._slots.get(self._key)
        if slot is None:
            slot = self._slots[self._key] = _Slot()
        slot.users += 1
        self._slot = slot
        try:
            await slot.lock.acquire()
        except BaseException:  # cancelled while waiting
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._slot.lock.release()
        self._leave()

    def _leave(self) -> None:
        self._slot.users -= 1
        if not self._slot.users:
            del self._slots[self._key]
