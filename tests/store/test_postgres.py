"""PostgresStore specifics: schema, migrations, stored columns, errors and index use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.sessions.errors import NotFound, Unavailable
from server.sessions.ports import SessionQuery
from server.store import SchemaTooNew, rules
from server.store.migrations import MIGRATIONS
from tests.helpers import until

from .builders import T0, TENANT, commit, history, new_session
from .conftest import fresh_schema, postgres_dsn

asyncpg = pytest.importorskip("asyncpg")


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, str]]:
    """(dsn, schema) of a schema of this test's own."""
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        yield dsn, schema


async def open_store(pg: tuple[str, str], **options: Any) -> Any:
    from server.store.postgres import PostgresStore

    return await PostgresStore.open(pg[0], schema=pg[1], **options)


async def query(pg: tuple[str, str], sql: str, *args: object) -> list[Any]:
    conn = await asyncpg.connect(pg[0], server_settings={"search_path": pg[1]})
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_migrations_are_recorded_once(pg: tuple[str, str]) -> None:
    for _ in range(2):
        await (await open_store(pg)).close()
    rows = await query(pg, "SELECT version, description FROM schema_migrations ORDER BY 1")
    assert [tuple(r) for r in rows] == [(m.version, m.description) for m in MIGRATIONS]


async def test_a_schema_from_a_newer_chatd_is_refused_untouched(pg: tuple[str, str]) -> None:
    await (await open_store(pg)).close()
    await query(pg, "INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    with pytest.raises(SchemaTooNew, match="99"):
        await open_store(pg)
    assert (await query(pg, "SELECT MAX(version) FROM schema_migrations"))[0][0] == 99


async def test_the_expire_time_column_holds_the_derived_expiry(pg: tuple[str, str]) -> None:
    store = await open_store(pg)
    try:
        session = new_session(ttl=30, expire=T0 + 1)
        await store.create_session(session)
        await commit(store, session, "later", updated=T0 + 5)
        await store.create_session(new_session("fixed", expire=T0 + 7.5))
        await store.create_session(new_session("never"))
    finally:
        await store.close()
    rows = await query(pg, "SELECT session_id, expire_time FROM sessions ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        ("fixed", rules.to_micros(T0 + 7.5)),
        ("never", None),
        ("s1", rules.to_micros(T0 + 35)),
    ]


async def test_the_labels_column_follows_the_settings(pg: tuple[str, str]) -> None:
    store = await open_store(pg)
    try:
        session = new_session(labels={"env": "dev"})
        await store.create_session(session)
        relabeled = session.evolve(version=2, settings=new_session(labels={"env": "prod"}).settings)
        await store.commit_turn(relabeled, [], 1)
        prod = SessionQuery(limit=10, labels={"env": "prod"})
        assert [s.session_id for s in await store.list_sessions(TENANT, prod)] == ["s1"]
        dev = SessionQuery(limit=10, labels={"env": "dev"})
        assert await store.list_sessions(TENANT, dev) == []
    finally:
        await store.close()
    rows = await query(pg, "SELECT labels FROM sessions")
    assert rows[0][0] == '{"env": "prod"}'


async def test_nul_in_labels_is_refused_and_never_matches(pg: tuple[str, str]) -> None:
    """PostgreSQL text cannot hold U+0000; elsewhere in a row it survives (escaped JSON)."""
    store = await open_store(pg)
    try:
        with pytest.raises(ValueError, match="NUL"):
            await store.create_session(new_session(labels={"k": "a\x00b"}))
        with pytest.raises(NotFound):
            await store.get_session(TENANT, "s1")
        nul = SessionQuery(limit=10, labels={"k": "a\x00b"})
        assert await store.list_sessions(TENANT, nul) == []
        session = new_session()
        await store.create_session(session)
        session = await commit(store, session, "nul \x00 inside")
        assert await history(store, session) == ["nul \x00 inside"]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("statement", "index"),
    [
        ("LOCK_EXPIRED", "sessions_by_expire"),
        ("DELETE_OLD_REQUESTS", "requests_by_create"),
    ],
)
async def test_sweeps_can_walk_their_indexes(
    pg: tuple[str, str], statement: str, index: str
) -> None:
    from server.store.postgres import sql as pg_sql

    await (await open_store(pg)).close()
    conn = await asyncpg.connect(pg[0], server_settings={"search_path": pg[1]})
    try:
        async with conn.transaction():
            # The tables are empty, so forbid the sequential scan a planner would prefer.
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await conn.fetch(f"EXPLAIN {getattr(pg_sql, statement)}", 1, 10)
    finally:
        await conn.close()
    assert index in " ".join(row[0] for row in plan)


@pytest.mark.parametrize(
    ("statement", "params", "index"),
    [
        ("LIST_REPLIES", ("t", "s", 10), "replies_by_session"),
        ("LIST_REPLIES_BEFORE", ("t", "s", 5, "r", 10), "replies_by_session"),
        ("FAIL_STALE_REPLIES", (1, "CODE", "m", "", 10, 1), "replies_by_lease"),
        ("RENEW_REPLIES", (1, "replica"), "replies_by_owner"),
        ("DELETE_OLD_REPLIES", (1, 10), "replies_by_update"),
    ],
)
async def test_reply_statements_walk_their_indexes(
    pg: tuple[str, str], statement: str, params: tuple[object, ...], index: str
) -> None:
    """Listing needs no sort, and no sweep or renewal reads the whole table."""
    from server.store.postgres import sql as pg_sql

    await (await open_store(pg)).close()
    conn = await asyncpg.connect(pg[0], server_settings={"search_path": pg[1]})
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await conn.fetch(f"EXPLAIN {getattr(pg_sql, statement)}", *params)
    finally:
        await conn.close()
    text = " ".join(row[0] for row in plan)
    assert index in text
    assert "Sort" not in text


async def test_reading_events_walks_the_keys(pg: tuple[str, str]) -> None:
    from server.store.postgres import sql as pg_sql

    await (await open_store(pg)).close()
    conn = await asyncpg.connect(pg[0], server_settings={"search_path": pg[1]})
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await conn.fetch(f"EXPLAIN {pg_sql.REPLY_EVENTS_AFTER}", "t", "r", 0)
    finally:
        await conn.close()
    text = " ".join(row[0] for row in plan)
    assert "reply_events_pkey" in text
    assert "Seq Scan" not in text


async def test_a_connection_lost_mid_call_is_unavailable_and_the_pool_recovers(
    pg: tuple[str, str],
) -> None:
    store = await open_store(pg, min_size=1, max_size=1)
    blocker = await asyncpg.connect(pg[0], server_settings={"search_path": pg[1]})
    try:
        await store.create_session(new_session())
        async with store._pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        # Hold the row so that delete_session waits on it, then cut its connection. Only
        # this store's own backend: other test runs may share the server.
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM sessions FOR UPDATE")
            deleting = asyncio.ensure_future(store.delete_session(TENANT, "s1"))

            async def blocked() -> bool:
                blockers = await blocker.fetchval("SELECT pg_blocking_pids($1)", pid)
                return bool(blockers)

            await until(blocked, "delete_session to wait for the held row")
            assert not deleting.done()
            await blocker.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(Unavailable, match="PostgreSQL is unavailable") as raised:
                await deleting
        assert "postgres@" not in str(raised.value)
        assert (await store.get_session(TENANT, "s1")).session_id == "s1"
    finally:
        await blocker.close()
        await store.close()


async def test_a_connection_dropped_while_idle_is_replaced(pg: tuple[str, str]) -> None:
    store = await open_store(pg, min_size=1, max_size=1)
    try:
        await store.create_session(new_session())
        closed = asyncio.Event()
        async with store._pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            conn.add_termination_listener(lambda _: closed.set())
        await query(pg, "SELECT pg_terminate_backend($1)", pid)
        await closed.wait()  # the client noticed the closed socket
        assert (await store.get_session(TENANT, "s1")).session_id == "s1"
    finally:
        await store.close()


async def test_schemas_keep_deployments_apart(pg: tuple[str, str]) -> None:
    async with fresh_schema(pg[0]) as other_schema:
        mine, other = await open_store(pg), await open_store((pg[0], other_schema))
        try:
            await mine.create_session(new_session())
            with pytest.raises(NotFound):
                await other.get_session(TENANT, "s1")
        finally:
            await mine.close()
            await other.close()


async def test_bad_options_are_refused_before_connecting() -> None:
    from server.store.postgres import PostgresStore

    url = "postgresql://127.0.0.1:1/x"
    with pytest.raises(ValueError, match="schema"):
        await PostgresStore.open(url, schema='x"; DROP TABLE sessions; --')
    with pytest.raises(ValueError, match="min_size"):
        await PostgresStore.open(url, min_size=5, max_size=2)


async def test_a_closed_store_refuses_calls(pg: tuple[str, str]) -> None:
    store = await open_store(pg)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.get_session(TENANT, "s1")
