"""Opening a SQLite connection for chatd: pragmas, then migrations on the writer."""

from __future__ import annotations

import sqlite3

from server.store import migrations

SYNCHRONOUS_MODES = ("FULL", "NORMAL")
BUSY_TIMEOUT_MS = 5000


class ForeignSchema(RuntimeError):
    """The file is a SQLite database, but not chatd's: it has tables and no migration record."""


_HAS_MIGRATIONS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name LIMIT 5"


def _check_ours(conn: sqlite3.Connection) -> None:
    """Refuses another program's database before anything (even the journal mode) changes."""
    if conn.execute(_HAS_MIGRATIONS).fetchone() is None:
        found = [row[0] for row in conn.execute(_TABLES)]
        if found:  # chatd's tables would be added to another program's database
            raise ForeignSchema(f"holds tables chatd did not create: {', '.join(found)}")


def _migrate(conn: sqlite3.Connection) -> None:
    """Brings the schema up to date in one transaction, or refuses a newer database."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(migrations.BOOTSTRAP)
        current = conn.execute(migrations.CURRENT_VERSION).fetchone()[0]
        for statement, params in migrations.upgrade(current, migrations.SQLITE):
            conn.execute(statement, params)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def connect(path: str, synchronous: str, *, writer: bool) -> sqlite3.Connection:
    """A connection with chatd's pragmas; the writer's also migrates the schema."""
    if synchronous not in SYNCHRONOUS_MODES:  # it is spliced into a PRAGMA below
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
    # isolation_level=None: the worker issues BEGIN/COMMIT itself.
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=256)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if writer:
            _check_ours(conn)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{path}: cannot use WAL journaling (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            # chatd checkpoints itself (wal.WalKeeper), to know when the file changes.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            _migrate(conn)
        else:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn
