"""One CachedStore entry: a session, the tail of its history, and their size."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.sessions.model import Message, Session
from server.store.sizes import message_size, session_size


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int


def _seq(message: Message) -> int:
    return message.seq


@dataclass(slots=True)
class Entry:
    session: Session
    # The newest messages, oldest first, with nothing missing between them and the end.
    tail: list[Message] = field(default_factory=list)
    complete: bool = False  # the tail is the whole history
    # Kept up to date incrementally: re-estimating a long tail on every turn would cost
    # more than the cache saves.
    session_bytes: int = 0
    tail_bytes: int = 0
    # Shared mode: get_session just found `session` equal to the stored row, so the
    # next history read may be answered from the tail (see CachedStore).
    validated: bool = False

    @classmethod
    def of(cls, session: Session, tail: Sequence[Message] = (), complete: bool = False) -> Entry:
        entry = cls(session, list(tail), complete, session_size(session))
        entry.tail_bytes = sum(message_size(m) for m in entry.tail)
        return entry

    @property
    def size(self) -> int:
        return self.session_bytes + self.tail_bytes

    def covers(self, limit: int | None) -> bool:
        return self.complete or (limit is not None and len(self.tail) >= limit)

    def covers_after(self, after_seq: int) -> bool:
        """Every message after `after_seq` is in the tail."""
        return self.complete or bool(self.tail and self.tail[0].seq <= after_seq)

    def last(self, limit: int | None) -> list[Message]:
        if limit is None:
            return list(self.tail)
        return self.tail[-limit:] if limit > 0 else []

    def after(self, after_seq: int, limit: int) -> list[Message]:
        start = bisect_right(self.tail, after_seq, key=_seq)
        return self.tail[start : start + max(limit, 0)]

    def advance(self, session: Session, added: Sequence[Message]) -> None:
        """Moves the entry on by a committed turn that appended `added`."""
        old = self.session
        # Settings rarely change between turns and are the costly part to size.
        if not (
            session.settings is old.settings
            and not session.pending_tool_calls
            and not old.pending_tool_calls
        ):
            self.session_bytes = session_size(session)
        self.session = session
        self.tail.extend(added)
        self.tail_bytes += sum(message_size(m) for m in added)

    def trim(self, max_messages: int, max_bytes: int) -> None:
        """Drops the oldest tail messages until both bounds hold (or the tail is empty)."""
        tail = self.tail
        drop = max(len(tail) - max_messages, 0)
        dropped = sum(message_size(m) for m in tail[:drop])
        while drop < len(tail) and self.size - dropped > max_bytes:
            dropped += message_size(tail[drop])
            drop += 1
        if drop:
            del tail[:drop]
            self.tail_bytes -= dropped
            self.complete = False
