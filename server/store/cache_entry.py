"""One CachedStore entry: a session, the tail of its history, and their size.

The tail is kept in two parts, oldest first: `packed`, older messages as the bytes of
`codec.pack_messages` (decoded on read), then `hot`, the newest messages as `Message`
objects. A read served from `hot` returns the same objects every time, and a committed
turn appends its own; a read that needs more decodes it from `packed` and moves it to
`hot` (promotion). `hot` is kept to about the most any read asked for (`window`), and
the cache moves all of it into `packed` (demotion) when the decoded part of the cache
outgrows its share.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.sessions.model import Message, Session
from server.store import codec
from server.store.sizes import (
    ENTRY_OVERHEAD,
    message_size,
    packed_size,
    session_size,
    with_headroom,
)

# Messages `hot` may hold beyond the window before the excess is packed, and packed
# messages dropped at once: a batch at a time instead of every turn's two messages.
SPILL_SLACK = 32
# Packing more decoded bytes than this at once would hold the event loop for
# milliseconds: such a batch, and what is packed before it, leaves the cache instead
# (history reads then go to the store, which paces big loads).
MAX_PACK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    # Of `entries` and `bytes`: entries holding decoded messages, and those messages'
    # estimated size.
    decoded_entries: int = 0
    decoded_bytes: int = 0


def _seq(message: Message) -> int:
    return message.seq


def _nth_newline_from_end(data: bytes, n: int) -> int:
    """The offset of the n-th b"\\n" from the end (n ≥ 1), or -1 if there are fewer."""
    pos = len(data)
    for _ in range(n):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return -1
    return pos


@dataclass(slots=True)
class Entry:
    session: Session
    # The newest messages, decoded, oldest first; with `packed` before them, nothing is
    # missing between the tail's first message and the end of the history.
    hot: list[Message] = field(default_factory=list)
    packed: bytes = b""
    packed_count: int = 0
    complete: bool = False  # the tail is the whole history
    # Kept up to date incrementally: re-estimating a long tail on every turn would cost
    # more than the cache saves.
    session_bytes: int = 0
    hot_bytes: int = 0
    # The most messages a read asked for since the entry was last demoted (None: all).
    window: int | None = 0
    # Shared mode: get_session just found `session` equal to the stored row, so the
    # next history read may be answered from the tail (see CachedStore).
    validated: bool = False

    @classmethod
    def of(cls, session: Session, tail: Sequence[Message] = (), complete: bool = False) -> Entry:
        entry = cls(session, list(tail), complete=complete, session_bytes=session_size(session))
        entry.hot_bytes = sum(message_size(m) for m in entry.hot)
        return entry

    @property
    def size(self) -> int:
        """Estimated bytes of process memory the entry holds (sizes.with_headroom)."""
        return with_headroom(
            ENTRY_OVERHEAD + self.session_bytes + self.hot_bytes + packed_size(self.packed)
        )

    @property
    def count(self) -> int:
        """How many messages the tail holds."""
        return self.packed_count + len(self.hot)

    def _first_seq(self) -> int:
        if self.packed:
            return int(self.packed[1 : self.packed.index(b",")])
        return self.hot[0].seq

    def covers(self, limit: int | None) -> bool:
        return self.complete or (limit is not None and self.count >= limit)

    def covers_after(self, after_seq: int) -> bool:
        """Every message after `after_seq` is in the tail."""
        return self.complete or bool(self.count and self._first_seq() <= after_seq)

    def hot_covers(self, limit: int | None) -> bool:
        """last(limit) needs no decoding and changes no size."""
        hot = len(self.hot)
        return hot >= (self.count if limit is None else limit) or not self.packed_count

    def last(self, limit: int | None) -> list[Message]:
        """The newest `limit` messages (all for None), decoding any that are packed.

        Decoded messages stay in `hot`, so the next read returns the same objects.
        """
        if limit is None:
            self.window = None
        elif self.window is not None and limit > self.window:
            self.window = limit
        want = self.count if limit is None else min(max(limit, 0), self.count)
        if want > len(self.hot):
            self._promote(want - len(self.hot))
        hot = self.hot
        return hot[len(hot) - want :] if want else []

    def after(self, after_seq: int, limit: int) -> list[Message]:
        """Up to `limit` messages after `after_seq`; packed ones are decoded, not kept."""
        limit = max(limit, 0)
        hot = self.hot
        if not self.packed_count or (hot and hot[0].seq <= after_seq + 1) or not limit:
            start = bisect_right(hot, after_seq, key=_seq)
            return hot[start : start + limit]
        lines = self.packed.split(b"\n")
        seqs = [int(line[1 : line.index(b",")]) for line in lines]
        start = bisect_right(seqs, after_seq)
        out = codec.unpack_messages(b"\n".join(lines[start : start + limit]))
        if len(out) < limit:
            out.extend(hot[: limit - len(out)])
        return out

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
        self.hot.extend(added)
        self.hot_bytes += sum(message_size(m) for m in added)
        if self.window is not None and len(self.hot) > self.window + SPILL_SLACK:
            self.spill(self.window)

    def spill(self, keep: int) -> None:
        """Packs all but the newest `keep` hot messages."""
        hot = self.hot
        moved = len(hot) - keep
        if moved <= 0:
            return
        batch = hot[:moved]
        del hot[:moved]
        before = self.hot_bytes
        if keep < moved:  # whichever part is shorter to size
            self.hot_bytes = sum(message_size(m) for m in hot)
        else:
            self.hot_bytes -= sum(message_size(m) for m in batch)
        if before - self.hot_bytes > MAX_PACK_BYTES:
            self.packed, self.packed_count, self.complete = b"", 0, False
            return
        data = codec.pack_messages(batch)
        self.packed = self.packed + b"\n" + data if self.packed else data
        self.packed_count += moved

    def demote(self) -> None:
        """Packs every hot message; the next read decodes what it needs again."""
        self.spill(0)
        self.hot = []
        self.hot_bytes = 0
        self.window = 0

    def _promote(self, n: int) -> None:
        """Decodes the newest `n` packed messages into the front of `hot`."""
        packed = self.packed
        if n >= self.packed_count:
            n, cut = self.packed_count, -1
        else:
            cut = _nth_newline_from_end(packed, n)
        decoded = codec.unpack_messages(packed[cut + 1 :])
        self.packed = packed[:cut] if cut > 0 else b""
        self.packed_count -= n
        self.hot[:0] = decoded
        self.hot_bytes += sum(message_size(m) for m in decoded)

    def _drop_packed(self, n: int) -> None:
        """Drops the oldest `n` packed messages."""
        if n >= self.packed_count:
            self.packed, self.packed_count = b"", 0
            return
        pos = 0
        for _ in range(n):
            pos = self.packed.index(b"\n", pos) + 1
        self.packed = self.packed[pos:]
        self.packed_count -= n

    def trim(self, max_messages: int, max_bytes: int) -> None:
        """Drops the oldest tail messages until both bounds hold (or the tail is empty)."""
        count = self.count
        drop = max(count - max_messages, 0)
        if drop and self.packed_count:
            # A batch at a time: each drop copies what packed keeps.
            n = min(max(drop, SPILL_SLACK), self.packed_count)
            self._drop_packed(n)
            drop = max(drop - n, 0)
            self.complete = False
        if self.packed_count and (size := self.size) > max_bytes:
            # Drop packed messages, oldest first, until the bytes dropped are enough.
            excess, pos, n, packed = size - max_bytes, 0, 0, self.packed
            while n < self.packed_count and pos < excess:
                nl = packed.find(b"\n", pos)
                pos = len(packed) if nl < 0 else nl + 1
                n += 1
            self._drop_packed(n)
            self.complete = False
        hot = self.hot
        if not drop and (not hot or self.size <= max_bytes):
            return
        dropped = sum(message_size(m) for m in hot[:drop])
        while drop < len(hot) and self.size - with_headroom(dropped) > max_bytes:
            dropped += message_size(hot[drop])
            drop += 1
        if drop:
            del hot[:drop]
            self.hot_bytes -= dropped
            self.complete = False
