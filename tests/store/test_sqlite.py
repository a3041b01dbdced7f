"""SqliteStore specifics: persistence, migrations, group commit and query plans."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from server.sessions.errors import Conflict
from server.startup import StartupError
from server.store import SchemaTooNew, SqliteStore, rules
from server.store.migrations import BOOTSTRAP, MIGRATIONS, Migration, pending
from server.store.sqlite import sql as sqlite_sql

from .builders import T0, TENANT, commit, history, new_session, turn_of


@pytest.fixture
def db(tmp_path: Path) -> str:
    directory = tmp_path / "nested" / "dirs"
    directory.mkdir(parents=True)
    return str(directory / "chatd.db")


async def test_a_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    """A mistyped path or an unmounted volume must not put sessions in a new directory."""
    missing = tmp_path / "not" / "mounted"
    with pytest.raises(StartupError) as refused:
        await SqliteStore.open(str(missing / "chatd.db"))
    assert f"its directory {missing} does not exist" in refused.value.cause
    assert "CHATD_DATABASE_URL" in refused.value.fix
    assert f"mkdir -p {missing}" in refused.value.fix
    assert not missing.exists() and not missing.parent.exists()


async def test_data_survives_reopen(db: str) -> None:
    store = await SqliteStore.open(db)
    session = new_session(labels={"k": "v"})
    await store.create_session(session)
    session = await commit(store, session, "kept", "forever")
    await store.close()
    reopened = await SqliteStore.open(db, synchronous="NORMAL")
    try:
        assert await reopened.get_session(TENANT, "s1") == session
        assert await history(reopened, session) == ["kept", "forever"]
    finally:
        await reopened.close()


async def test_close_drains_writes_queued_before_it(db: str) -> None:
    """Writes already submitted when close() starts are committed, not dropped."""
    store = await SqliteStore.open(db)
    sessions = [new_session(f"s{i}") for i in range(50)]
    writes = [asyncio.ensure_future(store.create_session(s)) for s in sessions]
    await asyncio.sleep(0)  # let every write reach the writer's queue
    await store.close()
    await asyncio.gather(*writes)
    reopened = await SqliteStore.open(db)
    try:
        for s in sessions:
            assert await reopened.get_session(TENANT, s.session_id) == s
    finally:
        await reopened.close()


async def test_a_closed_store_refuses_calls(db: str) -> None:
    store = await SqliteStore.open(db)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.get_session(TENANT, "s1")


async def test_migrations_are_recorded_once(db: str) -> None:
    for _ in range(2):
        await (await SqliteStore.open(db)).close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT version, description FROM schema_migrations").fetchall()
        assert rows == [(m.version, m.description) for m in MIGRATIONS]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_database_from_a_newer_chatd_is_refused_untouched(db: str) -> None:
    await (await SqliteStore.open(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (99,))
    conn.close()
    with pytest.raises(StartupError, match="99") as raised:
        await SqliteStore.open(db)
    assert isinstance(raised.value.__cause__, SchemaTooNew)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (99,)
    conn.close()


def test_pending_lists_only_newer_migrations_and_refuses_newer_databases() -> None:
    steps = (Migration(1, "one", {}), Migration(2, "two", {}))
    assert [m.version for m in pending(0, steps)] == [1, 2]
    assert [m.version for m in pending(1, steps)] == [2]
    assert pending(2, steps) == []
    with pytest.raises(SchemaTooNew):
        pending(3, steps)


def test_every_migration_has_sql_for_every_dialect() -> None:
    for migration in MIGRATIONS:
        assert migration.for_dialect("sqlite")
        assert migration.for_dialect("postgresql")
        with pytest.raises(ValueError, match="mysql"):
            migration.for_dialect("mysql")


async def test_failing_turns_in_a_group_commit_fail_alone(db: str) -> None:
    """Conflicting turns batched with good ones are rolled back; the good ones commit."""
    store = await SqliteStore.open(db)
    sessions = [new_session(f"s{i:02}") for i in range(40)]
    await asyncio.gather(*(store.create_session(s) for s in sessions))
    turns = [turn_of(s, [f"hello {s.session_id}"]) for s in sessions]
    # Every fourth turn expects a version the stored session is not at.
    expected = [s.version if i % 4 else s.version - 1 for i, s in enumerate(sessions)]
    results = await asyncio.gather(
        *(store.commit_turn(a, m, v) for (a, m), v in zip(turns, expected, strict=True)),
        return_exceptions=True,
    )
    await store.close()
    store = await SqliteStore.open(db)
    try:
        for i, ((after, msgs), result) in enumerate(zip(turns, results, strict=True)):
            if i % 4:
                assert result is None
                assert await store.recent_messages(TENANT, after.session_id) == msgs
            else:
                assert isinstance(result, Conflict)
                assert await store.recent_messages(TENANT, after.session_id) == []
                assert await store.get_session(TENANT, after.session_id) == sessions[i]
    finally:
        await store.close()


async def test_invalid_synchronous_mode_is_refused(db: str) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SqliteStore.open(db, synchronous="OFF")


async def test_recent_messages_reads_newest_first_through_the_primary_key(db: str) -> None:
    """O(limit): the plan walks the key backwards and never sorts the whole history."""
    await (await SqliteStore.open(db)).close()
    with sqlite3.connect(db) as conn:
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN {sqlite_sql.LAST_MESSAGES}", ("t", "s", 5)
        ).fetchall()
    conn.close()
    details = " ".join(row[-1] for row in plan)
    assert "PRIMARY KEY" in details
    assert "TEMP B-TREE" not in details


async def test_the_expire_time_column_holds_the_derived_expiry(db: str) -> None:
    store = await SqliteStore.open(db)
    session = new_session(ttl=30, expire=T0 + 1)
    await store.create_session(session)
    await commit(store, session, "later", updated=T0 + 5)
    await store.create_session(new_session("fixed", expire=T0 + 7.5))
    await store.create_session(new_session("never"))
    await store.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session_id, expire_time FROM sessions ORDER BY 1").fetchall()
    conn.close()
    assert rows == [
        ("fixed", rules.to_micros(T0 + 7.5)),
        ("never", None),
        ("s1", rules.to_micros(T0 + 35)),
    ]


async def test_migration_2_derives_the_expiry_of_existing_ttl_sessions(db: str) -> None:
    """Rows written under migration 1 held settings.expire_time; ttl rows get theirs."""
    with sqlite3.connect(db) as conn:
        conn.execute(BOOTSTRAP)
        for statement in MIGRATIONS[0].for_dialect("sqlite"):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (1, 'one', 0)")
        settings = '{"ttl_seconds":2.5,"expire_time":1.0}'
        conn.execute(
            "INSERT INTO sessions VALUES (?, 's1', ?, 10, 20, 1000000, 0, 0, '{}', 'ACTIVE',"
            " NULL, 1)",
            (TENANT, settings),
        )
    conn.close()
    await (await SqliteStore.open(db)).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT expire_time FROM sessions").fetchone() == (20 + 2_500_000,)
    conn.close()


@pytest.mark.parametrize(
    ("statement", "index"),
    [
        (sqlite_sql.EXPIRED, "sessions_by_expire"),
        (sqlite_sql.DELETE_OLD_REQUESTS, "requests_by_create"),
    ],
)
async def test_sweeps_walk_their_indexes(db: str, statement: str, index: str) -> None:
    await (await SqliteStore.open(db)).close()
    with sqlite3.connect(db) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}", (1, 10)).fetchall()
    conn.close()
    assert index in " ".join(row[-1] for row in plan)


@pytest.mark.parametrize(
    ("statement", "params", "index"),
    [
        (sqlite_sql.LIST_REPLIES, ("t", "s", 10), "replies_by_session"),
        (sqlite_sql.LIST_REPLIES_BEFORE, ("t", "s", 5, "r", 10), "replies_by_session"),
        (sqlite_sql.FAIL_STALE_REPLIES, (1, "CODE", "m", "", 1, 10), "replies_by_lease"),
        (sqlite_sql.RENEW_REPLIES, (1, "replica"), "replies_by_owner"),
        (sqlite_sql.OLD_REPLIES, (1, 10), "replies_by_update"),
    ],
)
async def test_reply_statements_walk_their_indexes(
    db: str, statement: str, params: tuple[object, ...], index: str
) -> None:
    """Listing needs no sort, and no sweep or renewal reads the whole table."""
    await (await SqliteStore.open(db)).close()
    with sqlite3.connect(db) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
    conn.close()
    details = " ".join(row[-1] for row in plan)
    assert index in details
    assert "TEMP B-TREE" not in details


async def test_reading_events_searches_both_tables_by_key(db: str) -> None:
    await (await SqliteStore.open(db)).close()
    with sqlite3.connect(db) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {sqlite_sql.REPLY_EVENTS_AFTER}", ("t", "r", 0))
        details = [row[-1] for row in plan]
    conn.close()
    assert "SEARCH reply_events USING INDEX sqlite_autoindex_reply_events_1" in " ".join(details)
    searches = [d for d in details if d.startswith(("SEARCH", "SCAN"))]
    assert searches and all(
        d.startswith("SEARCH") and "(tenant=? AND reply_id=?" in d for d in searches
    )
    assert not any("TEMP B-TREE" in d for d in details)
