"""Never replay a WAL that is not this database's; keep the owner record in step with it.

SQLite replays whatever `<db>-wal` it finds next to the database, and a WAL header carries
no database identity: a WAL left from another database, or from the same database before
it was restored from a backup, is applied silently and the result is served. chatd checks
the WAL itself before SQLite opens the files:

- no WAL, an empty one, or one with no committed frame: nothing would be replayed (such a
  file is removed, so SQLite starts a new one);
- otherwise its header must be valid, its page size the database's, and its identity the
  one chatd recorded in the owner file (owner.py): the same checkpoint sequence and
  salts, or their successor (SQLite restarts a WAL with salt-1 plus one and the sequence
  plus one; chatd records the new header after the write that restarted it, so a crash in
  between leaves exactly one step to accept). A WAL started from nothing has sequence 0
  and random salts; chatd makes SQLite start it while opening the database, before any
  caller's write, and records it at once. Only when the record says chatd was opening the
  database is a WAL of sequence 0 accepted without its salts on record;
- and when the record holds a fingerprint of the database file (taken while chatd knew
  the file was not changing), the file must still match it: a database copied back from
  a backup under a WAL it never had is refused.

To know when the database file changes, chatd checkpoints itself (wal_autocheckpoint is
off on the writer): before a checkpoint it records that the file may change, after it the
new fingerprint. Everything else SQLite writes into the database file happens at open
(recovery, migrations) and close, which are bracketed the same way.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
from pathlib import Path

from server.startup import StartupError
from server.store.sqlite.owner import Fingerprint, OwnerLock, OwnerRecord, WalHeader

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_MAGICS = {0x377F0682: "<", 0x377F0683: ">"}  # checksums in little- or big-endian words
_VERSION = 3007000
CHECKPOINT_PAGES = 1000  # SQLite's own wal_autocheckpoint default

_MOVE_ASIDE = (
    "if the database was restored from a backup or copied without it, move {wal} aside"
    " (it is not applied then); if it really is this database's, apply it with"
    " `sqlite3 {db} 'PRAGMA wal_checkpoint'` and start chatd again"
)


def wal_path(database: Path) -> Path:
    return database.with_name(database.name + "-wal")


def _checksum(data: bytes, order: str) -> tuple[int, int]:
    s0 = s1 = 0
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def read_header(raw: bytes) -> tuple[WalHeader, int] | None:
    """(identity, page size) of a valid WAL header, None when it is not one."""
    if len(raw) < WAL_HEADER_SIZE:
        return None
    magic, version, page_size, checkpoint, salt1, salt2, c1, c2 = struct.unpack(
        ">8I", raw[:WAL_HEADER_SIZE]
    )
    order = _MAGICS.get(magic)
    if order is None or version != _VERSION or _checksum(raw[:24], order) != (c1, c2):
        return None
    return WalHeader(checkpoint, salt1, salt2), page_size


def current_header(database: Path) -> WalHeader | None:
    """The header of the WAL now next to `database`, None when there is none (or no valid one)."""
    try:
        with open(wal_path(database), "rb") as file:
            parsed = read_header(file.read(WAL_HEADER_SIZE))
    except FileNotFoundError:
        return None
    return None if parsed is None else parsed[0]


def _has_commit(file_size: int, fd: int, header: WalHeader, page_size: int) -> bool:
    """Whether any frame of the current header's salts closes a transaction (frame checksums
    are not verified: counting a frame SQLite would skip only makes the check stricter)."""
    offset = WAL_HEADER_SIZE
    while offset + FRAME_HEADER_SIZE + page_size <= file_size:
        _, db_size, salt1, salt2 = struct.unpack(">4I", os.pread(fd, 16, offset))
        if (salt1, salt2) != (header.salt1, header.salt2):
            return False  # frames past this one are from an earlier life of the WAL
        if db_size:
            return True
        offset += FRAME_HEADER_SIZE + page_size
    return False


def _database_page_size(database: Path) -> int | None:
    try:
        with open(database, "rb") as file:
            raw = file.read(18)
    except FileNotFoundError:
        return None
    if len(raw) < 18:
        return None
    size = int.from_bytes(raw[16:18], "big")
    return 65536 if size == 1 else size


def _refuse(database: Path, cause: str) -> StartupError:
    wal = wal_path(database)
    return StartupError(str(wal), cause, _MOVE_ASIDE.format(wal=wal, db=database))


def _belongs(found: WalHeader, record: OwnerRecord) -> bool:
    recorded = record.wal
    if recorded is None:
        return record.opening and found.checkpoint == 0
    successor = WalHeader(
        (recorded.checkpoint + 1) & 0xFFFFFFFF, (recorded.salt1 + 1) & 0xFFFFFFFF, found.salt2
    )
    return found in (recorded, successor)


def check_before_open(database: Path, record: OwnerRecord | None) -> WalHeader | None:
    """Refuses (StartupError) a WAL SQLite would replay that is not this database's, removes
    one with nothing to replay, and returns the header of the WAL that stays (or None)."""
    wal = wal_path(database)
    try:
        fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StartupError(
            str(wal), f"cannot read the WAL: {exc.strerror}", "give chatd read access to it"
        ) from exc
    try:
        size = os.fstat(fd).st_size
        parsed = read_header(os.pread(fd, WAL_HEADER_SIZE, 0)) if size else None
        if size and parsed is None:
            raise _refuse(database, "it is not a valid SQLite WAL (bad header)")
        replays = parsed is not None and _has_commit(size, fd, *parsed)
    finally:
        os.close(fd)
    if parsed is None or not replays:
        # SQLite would discard it; removing it means the WAL in use is one SQLite starts.
        with contextlib.suppress(FileNotFoundError):
            wal.unlink()
        return None
    header, page_size = parsed
    db_page_size = _database_page_size(database)
    if db_page_size is not None and page_size != db_page_size:
        raise _refuse(
            database,
            f"its page size {page_size} is not the database's {db_page_size}:"
            " it belongs to another database",
        )
    if record is None:
        raise _refuse(
            database,
            "it holds unapplied transactions but chatd has no record that it belongs to this"
            " database (the lock file is missing, or an older chatd or another program wrote it)",
        )
    if not _belongs(header, record):
        raise _refuse(
            database,
            "it holds unapplied transactions of another database"
            f" (salts {header.salt1:08x}/{header.salt2:08x}, sequence {header.checkpoint};"
            " not the WAL chatd last wrote here)",
        )
    if record.database is not None and Fingerprint.of(database) != record.database:
        raise _refuse(
            database,
            "the database file changed since chatd last wrote it (replaced or restored?),"
            " so the WAL's unapplied transactions no longer fit it",
        )
    return header


class WalKeeper:
    """Runs on the writer thread after each batch: checkpoints when the WAL has grown, and
    keeps the owner record in step with the WAL header and the database file.

    Checkpoints are TRUNCATE checkpoints, so the WAL's size says how much it holds, tried
    without waiting: when a read is under way the next batch tries again.
    """

    def __init__(self, lock: OwnerLock, database: Path, busy_timeout_ms: int) -> None:
        self._lock = lock
        self._database = database
        self._wal_path = wal_path(database)
        self._busy_timeout_ms = busy_timeout_ms
        self._wal: WalHeader | None = None
        self._watch = True  # a new WAL header may appear at the next write
        self._limit = self._next_at = 0

    def opened(self, conn: sqlite3.Connection) -> None:
        """After migrations: records the WAL now in use and the database file as it is."""
        page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        self._limit = self._next_at = WAL_HEADER_SIZE + CHECKPOINT_PAGES * (
            FRAME_HEADER_SIZE + page_size
        )
        self._wal = current_header(self._database)
        if self._wal is None:
            # Make SQLite start its WAL now, so its header is on record before any write a
            # caller is told about (rewriting user_version changes nothing else).
            version: int = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version = {int(version)}")
            self._wal = current_header(self._database)
        self._watch = self._wal is None
        self._lock.record(self._wal, Fingerprint.of(self._database))

    def after_batch(self, conn: sqlite3.Connection) -> None:
        if self._watch:
            found = current_header(self._database)
            if found is not None and found != self._wal:
                self._watch = False
                self._wal = found
                self._lock.record(found, Fingerprint.of(self._database))
        try:
            size = os.stat(self._wal_path).st_size
        except FileNotFoundError:
            return
        if size >= self._next_at:
            self._checkpoint(conn, size)

    def _checkpoint(self, conn: sqlite3.Connection, size: int) -> None:
        self._lock.record(self._wal, None)  # the database file is about to change
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        self._lock.record(self._wal, Fingerprint.of(self._database))
        self._next_at = size + self._limit // 8 if busy else self._limit
        # Even a busy checkpoint may have copied every frame, and then the next write
        # restarts the WAL itself: from now on a new header may appear at any write.
        self._watch = True

    def closing(self) -> None:
        """Before the last connection closes: SQLite checkpoints and removes the WAL then."""
        self._lock.record(self._wal, None)

    def closed(self) -> None:
        self._lock.record(current_header(self._database), Fingerprint.of(self._database))
