"""The numbered schema migrations every SQL backend applies, with per-dialect SQL.

A database records the steps it has had in schema_migrations. Opening it creates that
table if missing (BOOTSTRAP), reads its version (CURRENT_VERSION), refuses a database a
newer chatd migrated (SchemaTooNew) and runs what `upgrade` lists, recording each step,
all in one transaction. Steps only go forward: there are no downgrades, so an older
chatd refuses a newer database instead of undoing its steps.

Why this and not Alembic: the store talks to sqlite3 and asyncpg directly and has no
SQLAlchemy, which Alembic runs on (with Mako and an env.py of its own) and which chatd
would then carry for a few CREATE and ALTER statements. And the steps must run on the
connections chatd controls, at the point of opening it chooses: SQLite's on the writer
thread's connection, after the owner lock and the WAL checks, while the owner record
says the file is being opened (sqlite/wal.py: nothing may write the file unseen);
PostgreSQL's in one transaction under an advisory lock per schema, so that replicas
starting together apply each step once (postgres/pool.py). A separate migration tool
with its own connection and its own run would fit neither.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from server.store import rules

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# The bookkeeping table itself; created before anything else, portable as written.
BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version BIGINT PRIMARY KEY,"
    " description TEXT NOT NULL,"
    " applied_at BIGINT NOT NULL)"  # microseconds since the epoch
)
# The version a database is at (0: none applied yet), once BOOTSTRAP ran.
CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
# Each applied migration's row, by dialect (they differ only in placeholders).
_RECORD = {
    SQLITE: "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
    POSTGRESQL: (
        "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)"
    ),
}


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer chatd; opening it could corrupt it."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: statements per dialect, run in order inside one transaction."""

    version: int
    description: str
    statements: Mapping[str, tuple[str, ...]]

    def for_dialect(self, dialect: str) -> tuple[str, ...]:
        try:
            return self.statements[dialect]
        except KeyError:
            raise ValueError(f"migration {self.version} has no SQL for {dialect}") from None


_SESSIONS_INDEXES = (
    "CREATE INDEX sessions_by_create ON sessions (tenant, create_time, session_id)",
    "CREATE INDEX sessions_by_update ON sessions (tenant, update_time, session_id)",
)

_REQUESTS_TABLE = """CREATE TABLE requests (
    tenant TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    create_time {micros} NOT NULL,
    PRIMARY KEY (tenant, request_id))"""
_REQUESTS_INDEX = "CREATE INDEX requests_by_create ON requests (create_time)"
# Partial: most sessions never expire. SQLite uses it too, since `expire_time <= ?`
# implies the index's condition.
_EXPIRE_INDEX = (
    "CREATE INDEX sessions_by_expire ON sessions (expire_time) WHERE expire_time IS NOT NULL"
)

# Replies (one run of a turn) and their stream events, kept as the opaque chunks they
# were written in: a chunk that begins at event 1 in the reply's own row (inline_*, see
# rows.REPLY_INLINE_COLUMNS), later ones in reply_events. No foreign keys: a reply's rows
# go with its session's in the same transactions, and a turn's commit should not pay a
# lookup per row to prove it.
_REPLIES_TABLE = """CREATE TABLE replies (
    tenant TEXT NOT NULL,
    reply_id TEXT{collate} NOT NULL,
    session_id TEXT{collate} NOT NULL,
    turn_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    background {boolean} NOT NULL,
    state TEXT NOT NULL,
    create_time {integer} NOT NULL,
    update_time {integer} NOT NULL,
    last_seq {integer} NOT NULL,
    owner TEXT NOT NULL,
    lease_expire_time {integer},
    error_code TEXT,
    error_message TEXT,
    error_reason TEXT,
    inline_last_seq {integer},
    inline_payload {blob},
    PRIMARY KEY (tenant, reply_id))"""
_REPLY_EVENTS_TABLE = """CREATE TABLE reply_events (
    tenant TEXT NOT NULL,
    reply_id TEXT{collate} NOT NULL,
    first_seq {integer} NOT NULL,
    last_seq {integer} NOT NULL,
    payload {blob} NOT NULL,
    PRIMARY KEY (tenant, reply_id, first_seq))"""
# A session's replies newest first (listing, and deleting them with the session); the
# running ones by lease (the stale sweep) and by owner (lease renewal); the ended ones by
# age (retention). 'running' is ReplyState.RUNNING's value; the partial indexes serve
# only statements that repeat their condition as written.
_REPLIES_INDEXES = (
    "CREATE INDEX replies_by_session"
    " ON replies (tenant, session_id, create_time DESC, reply_id DESC)",
    "CREATE INDEX replies_by_lease ON replies (lease_expire_time) WHERE state = 'running'",
    "CREATE INDEX replies_by_owner ON replies (owner) WHERE state = 'running'",
    "CREATE INDEX replies_by_update ON replies (update_time) WHERE state <> 'running'",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "sessions and their append-only messages",
        {
            SQLITE: (
                """CREATE TABLE sessions (
                    tenant TEXT NOT NULL,
                    session_id TEXT NOT NULL,
                    settings TEXT NOT NULL,          -- JSON, see codec.settings_to_dict
                    create_time INTEGER NOT NULL,    -- microseconds since the epoch
                    update_time INTEGER NOT NULL,
                    expire_time INTEGER,
                    message_count INTEGER NOT NULL,
                    next_seq INTEGER NOT NULL,
                    usage TEXT NOT NULL,             -- JSON
                    state TEXT NOT NULL,
                    pending TEXT,                    -- JSON of the paused turn, NULL when none
                    version INTEGER NOT NULL,
                    PRIMARY KEY (tenant, session_id))""",
                *_SESSIONS_INDEXES,
                """CREATE TABLE messages (
                    tenant TEXT NOT NULL,
                    session_id TEXT NOT NULL,
                    seq INTEGER NOT NULL,
                    turn_id TEXT NOT NULL,
                    role TEXT NOT NULL,
                    create_time INTEGER NOT NULL,
                    body TEXT NOT NULL,              -- JSON, see codec.message_body_to_dict
                    PRIMARY KEY (tenant, session_id, seq),
                    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, session_id)
                ) WITHOUT ROWID""",
            ),
            # Settled when the PostgreSQL store shipped (it had never run before). JSON
            # holding caller, model or tool text is TEXT: jsonb refuses \u0000 and would
            # reorder keys. `labels` is a jsonb copy of settings.labels for filtering
            # (chatd writes both). COLLATE "C" makes session_id order byte order, as in
            # SQLite and the memory store.
            POSTGRESQL: (
                """CREATE TABLE sessions (
                    tenant TEXT NOT NULL,
                    session_id TEXT COLLATE "C" NOT NULL,
                    settings TEXT NOT NULL,
                    labels JSONB NOT NULL,
                    create_time BIGINT NOT NULL,
                    update_time BIGINT NOT NULL,
                    expire_time BIGINT,
                    message_count BIGINT NOT NULL,
                    next_seq BIGINT NOT NULL,
                    usage TEXT NOT NULL,
                    state TEXT NOT NULL,
                    pending TEXT,
                    version BIGINT NOT NULL,
                    PRIMARY KEY (tenant, session_id))""",
                *_SESSIONS_INDEXES,
                """CREATE TABLE messages (
                    tenant TEXT NOT NULL,
                    session_id TEXT COLLATE "C" NOT NULL,
                    seq BIGINT NOT NULL,
                    turn_id TEXT NOT NULL,
                    role TEXT NOT NULL,
                    create_time BIGINT NOT NULL,
                    body TEXT NOT NULL,
                    PRIMARY KEY (tenant, session_id, seq),
                    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, session_id))""",
            ),
        },
    ),
    Migration(
        2,
        "idempotent request records; expiry index",
        {
            SQLITE: (
                _REQUESTS_TABLE.format(micros="INTEGER") + " WITHOUT ROWID",
                _REQUESTS_INDEX,
                _EXPIRE_INDEX,
                # Migration 1 stored settings.expire_time; the column now holds the
                # derived expiry, which for ttl sessions is ttl after the last update.
                "UPDATE sessions SET expire_time = update_time"
                " + CAST(ROUND(json_extract(settings, '$.ttl_seconds') * 1000000) AS INTEGER)"
                " WHERE json_extract(settings, '$.ttl_seconds') IS NOT NULL",
            ),
            POSTGRESQL: (
                _REQUESTS_TABLE.format(micros="BIGINT"),
                _REQUESTS_INDEX,
                _EXPIRE_INDEX,
            ),
        },
    ),
    Migration(
        3,
        "a uid per session life",
        {
            # Sessions stored before this get a uid of their own, as if just created.
            SQLITE: (
                "ALTER TABLE sessions ADD COLUMN uid TEXT NOT NULL DEFAULT ''",
                "UPDATE sessions SET uid = lower(hex(randomblob(16)))",
            ),
            POSTGRESQL: (
                "ALTER TABLE sessions ADD COLUMN uid TEXT NOT NULL DEFAULT ''",
                "UPDATE sessions SET uid = replace(gen_random_uuid()::text, '-', '')",
            ),
        },
    ),
    Migration(
        4,
        "replies and their stream events",
        {
            # Both keep a rowid, as SQLite advises for rows of hundreds of bytes and more
            # (a reply's row holds its first chunk of events): a new row is appended to
            # the table, and only the small key entry lands at a random place. Measured:
            # a WITHOUT ROWID replies table holding the chunk cost as much as the two rows.
            SQLITE: (
                _REPLIES_TABLE.format(
                    collate="", boolean="INTEGER", integer="INTEGER", blob="BLOB"
                ),
                _REPLY_EVENTS_TABLE.format(collate="", integer="INTEGER", blob="BLOB"),
                *_REPLIES_INDEXES,
            ),
            # COLLATE "C": reply_id order (the tie-break of a listing) is byte order.
            POSTGRESQL: (
                _REPLIES_TABLE.format(
                    collate=' COLLATE "C"', boolean="BOOLEAN", integer="BIGINT", blob="BYTEA"
                ),
                _REPLY_EVENTS_TABLE.format(collate=' COLLATE "C"', integer="BIGINT", blob="BYTEA"),
                *_REPLIES_INDEXES,
            ),
        },
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def pending(current: int, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[Migration]:
    """The migrations a database at `current` still needs, in order.

    Raises SchemaTooNew when the database is ahead of this code.
    """
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this chatd knows ({latest}); "
            "upgrade chatd instead of opening it with an older release"
        )
    return [m for m in migrations if m.version > current]


def upgrade(current: int, dialect: str) -> list[tuple[str, tuple[object, ...]]]:
    """What brings a database at `current` up to date, as (statement, parameters) to run
    in order in one transaction: each pending migration's statements, then its row in
    schema_migrations. Raises SchemaTooNew when the database is ahead of this code."""
    steps: list[tuple[str, tuple[object, ...]]] = []
    for step in pending(current):
        steps += [(statement, ()) for statement in step.for_dialect(dialect)]
        record = (step.version, step.description, rules.to_micros(time.time()))
        steps.append((_RECORD[dialect], record))
    return steps


def _check_numbering(migrations: tuple[Migration, ...]) -> None:
    # A gap or reorder would make databases disagree about what a version number means.
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise AssertionError(f"migration versions must be 1..n in order, got {versions}")


_check_numbering(MIGRATIONS)
