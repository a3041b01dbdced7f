"""What chatd checks about a SQLite file before opening it, and SQLite's errors as causes.

Every way a database file can be unusable at start-up ends in one StartupError naming
the file, the cause and the fix, never in a traceback. The cheap checks run on the file
itself (a directory, unreadable, read-only, not a SQLite file, shorter than its header
says); what only SQLite can find (damage, a full disk) is translated from its error code.

A read-only database is refused at start-up rather than served read-only: chatd writes on
almost every call (turns, request records, expiry), so a read-only chatd would fail most
calls; an operator learns it at once instead of from clients.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from server.startup import StartupError

_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_RESTORE = "restore the file from a backup, or point CHATD_DATABASE_URL at another file"
_ACCESS = "give the user running chatd (uid {uid}) read and write access to it and its directory"


@dataclass(frozen=True, slots=True)
class DatabaseFile:
    """The resolved path, and whether chatd is about to create the database."""

    path: Path
    new: bool


def resolve(path: str) -> Path:
    """The absolute path (relative to the working directory, symlinks resolved) that names
    the file, so that its lock is found whichever way the file is named."""
    return Path(path).expanduser().resolve()


def _access_fix() -> str:
    return _ACCESS.format(uid=os.geteuid())


def prepare_directory(path: Path) -> None:
    """Refuses a directory where the file should be, special files of its name, and a
    missing parent directory (never created: see below)."""
    if path.is_dir():
        raise StartupError(
            str(path),
            "is a directory, not a database file",
            f"point CHATD_DATABASE_URL at a file, e.g. sqlite:///{path / 'chatd.db'}",
        )
    # Opening a FIFO would wait forever for a writer; a device is not chatd's file. The
    # lock file, the WAL and the shared-memory file are opened too, before SQLite runs.
    for suffix, what in _SIBLINGS:
        kind = _special_kind(path.with_name(path.name + suffix))
        if kind:
            raise StartupError(
                str(path),
                f"{what}is a {kind}, not a regular file",
                "point CHATD_DATABASE_URL at a regular file (or a path where chatd may"
                " create one), next to no special files of its name",
            )
    # A missing directory is most often a mistyped path or a volume not mounted: creating
    # it would put the sessions where nobody looks for them (or in the container's layer).
    if not path.parent.is_dir():
        raise StartupError(
            str(path),
            f"its directory {path.parent} does not exist",
            f"create it (mkdir -p {path.parent}), writable by the user running chatd, or point"
            " CHATD_DATABASE_URL at a file in an existing directory",
        )


_SIBLINGS = (
    ("", ""),
    (".lock", "its lock file "),
    ("-wal", "its WAL file "),
    ("-shm", "its shared-memory file "),
)


def _special_kind(path: Path) -> str:
    """What `path` is when it exists and is neither a regular file nor a directory."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return ""  # missing (created later) or unreadable (inspect says so)
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def inspect(path: Path) -> DatabaseFile:
    """Checks an existing file before SQLite opens it (header, size, access)."""
    try:
        with open(path, "rb") as file:
            header = file.read(_HEADER_SIZE)
            found = os.fstat(file.fileno())
            size = found.st_size
    except FileNotFoundError:
        return DatabaseFile(path, new=True)
    except OSError as exc:
        raise StartupError(str(path), f"cannot read it: {exc.strerror}", _access_fix()) from exc
    if found.st_nlink > 1:
        # The lock file, the WAL and SQLite's own locks go by name: under another name a
        # second chatd would run on this file with a WAL of its own, and corrupt it.
        raise StartupError(
            str(path),
            f"has {found.st_nlink} names (hard links); another name escapes its lock",
            f"keep one name: remove the others (find / -xdev -samefile {path})",
        )
    if size == 0:
        return DatabaseFile(path, new=True)  # SQLite treats an empty file as an empty database
    if len(header) < _HEADER_SIZE or not header.startswith(_MAGIC):
        raise StartupError(str(path), "is not a SQLite database (unknown file format)", _RESTORE)
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise StartupError(str(path), f"is damaged (page size {page_size} in its header)", _RESTORE)
    pages = int.from_bytes(header[28:32], "big")
    # The in-header size is only valid when its change counter matches (SQLite 3.7.0+), and
    # only without a WAL: a checkpoint cut short writes page 1 before the file has grown,
    # and replaying the WAL completes it.
    if header[24:28] == header[92:96] and size < pages * page_size and not _has_wal(path):
        raise StartupError(
            str(path),
            f"is truncated ({size} bytes, its header says {pages * page_size})",
            _RESTORE,
        )
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise StartupError(
            str(path),
            f"is read-only ({exc.strerror}); chatd does not serve a read-only database",
            _access_fix(),
        ) from exc
    return DatabaseFile(path, new=False)


def explain(path: Path, exc: sqlite3.Error) -> StartupError:
    """A StartupError for what SQLite reported while opening or migrating the database."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_READONLY"):
        cause, fix = f"is read-only ({exc})", _access_fix()
    elif name == "SQLITE_NOTADB":
        cause, fix = f"is not a SQLite database ({exc})", _RESTORE
    elif name.startswith("SQLITE_CORRUPT"):
        cause, fix = f"is damaged ({exc})", _RESTORE
    elif name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and _disk_full(path)):
        cause, fix = f"cannot be written: the disk is full ({exc})", "free space, then restart"
    elif name.startswith("SQLITE_IOERR"):
        cause = f"cannot be written or read ({exc}): the disk is full, over a quota or failing"
        fix = "check free space, quotas (ulimit -f) and the kernel log, then restart"
    elif name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        cause, fix = f"cannot be opened ({exc})", _access_fix()
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        cause = f"is locked by another program ({exc})"
        fix = "close whatever else has it open (sqlite3 shell, backup tool), then restart"
    else:
        cause, fix = f"SQLite cannot use it ({name or type(exc).__name__}: {exc})", _RESTORE
    error = StartupError(str(path), cause, fix)
    error.__cause__ = exc
    return error


def _has_wal(path: Path) -> bool:
    try:
        return path.with_name(path.name + "-wal").stat().st_size > 0
    except FileNotFoundError:
        return False


def _disk_full(path: Path) -> bool:
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return False
    return stats.f_bavail == 0


def write_error(path: Path, exc: OSError) -> StartupError:
    """A StartupError for an OSError met while writing next to the database."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        cause = f"cannot be written: {exc.strerror}"
        return StartupError(str(path), cause, "free space (or raise the limit), then restart")
    return StartupError(str(path), f"cannot be written: {exc.strerror}", _access_fix())
