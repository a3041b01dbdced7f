"""The owner file `<db>.lock`: one chatd per SQLite file, and what its WAL must look like.

Why a lock at all: every chatd keeps a write-through cache of the sessions it serves, so
two processes on one file each serve their own stale copy (deleted sessions come back, a
turn through one overwrites settings written through the other). chatd therefore refuses
a second process instead of trying to make two caches agree; several replicas are what
PostgreSQL is for.

Why flock on a side file: the lock has to be taken before SQLite opens the database or
replays its WAL, and must not interfere with SQLite's own POSIX byte-range locks on the
database file (closing any descriptor of a file drops every POSIX lock the process holds
on it; flock has no such trap). The kernel drops a flock when its holder dies, even by
kill -9, so a stale file never blocks a restart. flock belongs to one open file
description: a second SqliteStore on the same file in the same process is refused too,
which is right for the same reason (two caches).

The file also holds a small JSON record, rewritten in place at a fixed size: who holds
the lock (pid, host, start time, resolved database path), the header of the WAL chatd is
writing (salts and checkpoint sequence) and a fingerprint of the database file (inode,
size, mtime) taken while chatd knows the file is not changing. wal.py uses it to
refuse a WAL that does not belong to the database before SQLite could replay it.

Why SQLite's own locks are asked too: the lock file is only a name in a directory. When an
operator deletes it while chatd runs, a second chatd creates a new one, locks that, and
would then judge the running chatd's WAL as foreign (advice that loses data if followed)
or, right after a TRUNCATE checkpoint left it empty, remove it and start as a second
owner. But SQLite in WAL mode holds a shared POSIX lock on the DMS byte of `<db>-shm`
for as long as a connection has the database open, and a SHARED lock on the database
file's lock bytes (in WAL mode also for as long as it is open); so after taking the
flock chatd asks the kernel (F_GETLK) whether another process holds either, and refuses
naming its pid. It cannot tell a reader (a sqlite3 shell) from a chatd whose lock file
was deleted, so any other process with the database open blocks the start. The probe
runs only right after the flock was taken, before this process opens the database:
F_GETLK never reports this process's own locks, and closing the probing descriptor would
drop any POSIX lock this process held on the file, harmless only while it holds none.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.startup import StartupError

_RECORD_BLOCK = 1024  # the record is padded to a multiple of this and never shrinks

# SQLite's unix VFS (os_unix.c, sqlite3.c): the dead-man-switch byte of the -shm file,
# UNIX_SHM_BASE + SQLITE_SHM_NLOCK, held shared by every connection in WAL mode; and the
# lock bytes of the database file, PENDING_BYTE then RESERVED then SHARED_SIZE bytes.
_SHM_DMS = 120 + 8
_PENDING_BYTE = 0x40000000
_DB_LOCK_BYTES = 2 + 510

# struct flock: the field order and sizes differ by platform; None where not known.
if sys.platform.startswith("linux") and struct.calcsize("P") == 8:
    _FLOCK: str | None = "hhqqi4x"  # l_type, l_whence, l_start, l_len, l_pid
elif sys.platform == "darwin" or "bsd" in sys.platform:
    _FLOCK = "qqihh"  # l_start, l_len, l_pid, l_type, l_whence
else:
    _FLOCK = None


def _lock_holder(path: Path, start: int, length: int) -> int | None:
    """The pid of another process holding a POSIX lock on `length` bytes of `path` from
    `start`, None when none does (or the file is missing). Never creates the file."""
    if _FLOCK is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # missing, or unreadable: the files' own checks say so
    try:
        if _FLOCK.startswith("h"):
            probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        else:
            probe = struct.pack(_FLOCK, start, length, 0, fcntl.F_WRLCK, os.SEEK_SET)
        try:
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
        except OSError:
            return None  # a file system without POSIX locks: nothing to learn
    finally:
        os.close(fd)
    if _FLOCK.startswith("h"):
        kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
    else:
        _, _, pid, kind, _ = struct.unpack(_FLOCK, answer)
    return None if kind == fcntl.F_UNLCK else pid


def database_user(database: Path) -> int | None:
    """The pid of another process that has `database` open with SQLite (any connection in
    WAL mode, or one reading or writing in another journal mode), None when none has.
    Only valid while this process has no SQLite connection on the file."""
    shm = database.with_name(database.name + "-shm")
    found = _lock_holder(shm, _SHM_DMS, 1)
    # The database file's lock bytes too: they show a connection whose -shm file was
    # deleted, one in exclusive locking mode (no -shm file) and one in another journal mode.
    return found if found is not None else _lock_holder(database, _PENDING_BYTE, _DB_LOCK_BYTES)


def _process_text(pid: int) -> str:
    """`process N (its command line)` for the refusal; a pid of 0 or less is a lock holder
    this process cannot name (another PID namespace, or an open-file-description lock)."""
    if pid <= 0:
        return "another process (one this process cannot see: another container?)"
    program = _program(pid)
    return f"process {pid} ({program})" if program else f"process {pid}"


def _program(pid: int) -> str:
    """What runs as `pid`, where /proc says (Linux), for the refusal's text."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = raw.decode(errors="replace").split("\0")
    return " ".join(w for w in words if w)[:120]


@dataclass(frozen=True, slots=True)
class WalHeader:
    """The identity fields of a WAL header: checkpoint sequence and the two salts."""

    checkpoint: int
    salt1: int
    salt2: int


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What changes when the database file is replaced or written: inode, size, mtime."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Fingerprint | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    """The last state the owner recorded. `wal` None: no WAL was in use. `opening`: chatd
    was opening the database, so a WAL SQLite started from nothing (checkpoint sequence 0)
    may have appeared since. `database` None: the database file may have been changing
    (chatd was checkpointing, opening or closing), so it proves nothing."""

    wal: WalHeader | None
    database: Fingerprint | None
    opening: bool = False


def _holder_text(record: dict[str, Any] | None) -> str:
    if not record or "pid" not in record:
        return "another process (it holds the lock; its record is unreadable)"
    return (
        f"chatd pid {record.get('pid')} on host {record.get('host')!s}"
        f" since {record.get('started')!s}"
    )


def _read_json(fd: int) -> dict[str, Any] | None:
    raw = os.pread(fd, 1 << 16, 0)
    try:
        value = json.loads(raw.decode().strip() or "null")
    except ValueError:  # a torn or foreign file: no record
        return None
    return value if isinstance(value, dict) else None


def _parse_record(raw: dict[str, Any] | None) -> OwnerRecord | None:
    if raw is None or "database" not in raw or "wal" not in raw or raw.get("known") is False:
        return None
    try:
        wal = None if raw["wal"] is None else WalHeader(*(int(v) for v in raw["wal"]))
        db = None if raw["database"] is None else Fingerprint(*(int(v) for v in raw["database"]))
    except (TypeError, ValueError):
        return None
    return OwnerRecord(wal, db, raw.get("opening") is True)


class OwnerLock:
    """An exclusive flock on `<db>.lock`, held until release(), with the owner record."""

    def __init__(self, fd: int, path: Path, database: Path, previous: OwnerRecord | None) -> None:
        self._fd: int | None = fd
        self.path = path
        self._database = database
        self.previous = previous  # what the last owner recorded, None when nothing usable
        self._size = 0
        self._holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "path": str(database),
        }

    @classmethod
    def acquire(cls, database: Path) -> OwnerLock:
        """Locks `<database>.lock` or raises StartupError naming the process holding it."""
        path = database.with_name(database.name + ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StartupError(
                str(database),
                f"cannot open or create its lock file {path}: {exc.strerror}",
                "chatd needs read and write access to the database's directory and the files"
                " in it (it keeps the lock file, the -wal and the -shm file there)",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_json(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StartupError(
                    str(database),
                    f"cannot lock {path}: {exc.strerror}",
                    "keep the database on a local file system that supports flock",
                ) from exc
            raise StartupError(
                str(database),
                f"already in use by {_holder_text(holder)} (lock file {path})",
                "stop that chatd first, or give this one another database file;"
                " several replicas need PostgreSQL",
            ) from exc
        user = database_user(database)
        if user is not None:
            os.close(fd)
            raise StartupError(
                str(database),
                f"is open in {_process_text(user)} while its lock file {path} is free:"
                " the lock file of a running chatd is missing or was replaced,"
                " or another program has the database open",
                "stop that process, then start chatd again;"
                " never delete the lock file of a running chatd",
            )
        previous = _parse_record(_read_json(fd))
        lock = cls(fd, path, database, previous)
        lock._size = os.fstat(fd).st_size  # every rewrite covers the previous owner's record
        try:
            # Name the new holder at once, keeping what the previous owner recorded about
            # the files until they are checked: a refused second process reads this.
            if previous is None:
                lock.record(None, None, known=False)
            else:
                lock.record(previous.wal, previous.database, opening=previous.opening)
        except OSError as exc:
            lock.release()
            raise StartupError(
                str(database),
                f"cannot write its lock file {path}: {exc.strerror}",
                "free space on its file system, or make the lock file writable",
            ) from exc
        return lock

    def record(
        self,
        wal: WalHeader | None,
        database: Fingerprint | None,
        *,
        opening: bool = False,
        known: bool = True,
    ) -> None:
        """Rewrites the record in place and syncs it, so it survives a crash. `known=False`
        names the holder only: the files' state is still unknown (no usable record)."""
        if self._fd is None:
            return
        body = {
            **self._holder,
            "wal": None if wal is None else [wal.checkpoint, wal.salt1, wal.salt2],
            "database": None
            if database is None
            else [database.inode, database.size, database.mtime_ns],
            "opening": opening,
            "known": known,
        }
        data = json.dumps(body).encode()
        self._size = max(self._size, -(-(len(data) + 1) // _RECORD_BLOCK) * _RECORD_BLOCK)
        os.pwrite(self._fd, data.ljust(self._size - 1) + b"\n", 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Drops the lock (closing the descriptor releases the flock). The file stays:
        unlinking it would let a process that opened it just before lock a dead inode."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
