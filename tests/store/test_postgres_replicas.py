"""Several chatd replicas on one PostgreSQL schema, each behind a shared-mode cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.sessions.errors import Conflict, DuplicateRequest, NotFound, ResourceExhausted
from server.sessions.model import Session
from server.store import CachedStore
from server.store.migrations import MIGRATIONS

from .builders import T0, TENANT, commit, history, new_session, request_of, turn_of, with_history
from .conftest import CACHE_BYTES, fresh_schema, open_postgres, postgres_dsn

Replicas = tuple[CachedStore, CachedStore]


@pytest.fixture
async def schema() -> AsyncIterator[tuple[str, str]]:
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as name:
        yield dsn, name


@pytest.fixture
async def replicas(schema: tuple[str, str]) -> AsyncIterator[Replicas]:
    dsn, name = schema
    a = CachedStore(await open_postgres(dsn, name), CACHE_BYTES, shared=True)
    b = CachedStore(await open_postgres(dsn, name), CACHE_BYTES, shared=True)
    yield a, b
    await a.close()
    await b.close()


async def read_turn(store: CachedStore, session_id: str = "s1") -> tuple[Session, list[str]]:
    """What the turn engine reads: the session, then its history."""
    session = await store.get_session(TENANT, session_id)
    return session, [m.text for m in await store.recent_messages(TENANT, session_id)]


async def test_a_commit_through_one_replica_is_seen_by_the_other(replicas: Replicas) -> None:
    a, b = replicas
    session = new_session()
    await a.create_session(session)
    session = await commit(a, session, "one")
    assert await read_turn(b) == (session, ["one"])  # b now caches the session and tail
    session = await commit(a, session, "two")
    assert await read_turn(b) == (session, ["one", "two"])
    # And back: b writes from what it read, a sees it.
    session = await commit(b, session, "three")
    assert await read_turn(a) == (session, ["one", "two", "three"])
    # History read without the session first is not served from a cached tail.
    session = await commit(a, session, "four")
    assert [m.text for m in await b.list_messages(TENANT, "s1", 2, 10)] == ["four"]
    assert [m.text for m in await b.recent_messages(TENANT, "s1", 1)] == ["four"]


async def test_validated_history_is_served_from_the_tail(replicas: Replicas) -> None:
    a, _ = replicas
    session = new_session()
    await a.create_session(session)
    session = await commit(a, session, "x", "y")
    before = a.stats
    assert await read_turn(a) == (session, ["x", "y"])
    assert a.stats.hits == before.hits + 2  # the row still matched, and the tail served


async def test_clear_delete_and_recreate_elsewhere_never_leave_a_stale_tail(
    replicas: Replicas,
) -> None:
    a, b = replicas
    session, messages = with_history(new_session(), "old")
    await a.create_session(session, messages)
    assert (await read_turn(b))[1] == ["old"]
    # Deleted and created again: the same id and version 1, another history.
    await a.delete_session(TENANT, "s1")
    again, messages = with_history(new_session(created=T0 + 1), "new")
    await a.create_session(again, messages)
    assert await read_turn(b) == (again, ["new"])
    cleared = again.evolve(version=2, message_count=0, update_time=T0 + 2)
    await a.clear_history(cleared, again.version)
    assert await read_turn(b) == (cleared, [])
    await a.delete_session(TENANT, "s1")
    with pytest.raises(NotFound):
        await b.get_session(TENANT, "s1")


async def test_racing_commits_on_one_version_let_exactly_one_win(replicas: Replicas) -> None:
    a, b = replicas
    session = new_session()
    await a.create_session(session)
    texts: list[str] = []
    for round_ in range(15):
        (mine, mine_msgs), (theirs, theirs_msgs) = (
            turn_of(session, [f"a{round_}", f"a{round_}-reply"]),
            turn_of(session, [f"b{round_}"]),
        )
        results = await asyncio.gather(
            a.commit_turn(mine, mine_msgs, session.version),
            b.commit_turn(theirs, theirs_msgs, session.version),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1, results
        assert isinstance(results[1 - winners[0]], Conflict)
        session, added = ((mine, mine_msgs), (theirs, theirs_msgs))[winners[0]]
        texts += [m.text for m in added]
        # Nothing of the loser is stored, whichever replica reads.
        assert await read_turn(a) == (session, texts)
        assert await read_turn(b) == (session, texts)


async def test_racing_writes_with_one_request_id_let_exactly_one_write(
    replicas: Replicas,
) -> None:
    a, b = replicas
    one, two = new_session("one"), new_session("two")
    await a.create_session(one)
    await a.create_session(two)
    results = await asyncio.gather(
        a.commit_turn(*turn_of(one, ["via a"]), one.version, request_of("r")),
        b.commit_turn(*turn_of(two, ["via b"]), two.version, request_of("r")),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["DuplicateRequest", "NoneType"]
    loser = (one, two)[[r is None for r in results].index(False)]
    assert await history(b, loser) == []
    assert await b.get_session(TENANT, loser.session_id) == loser
    with pytest.raises(DuplicateRequest):
        await b.create_session(new_session("three"), (), request_of("r"))


async def test_replicas_sweeping_at_once_split_the_expired_sessions(replicas: Replicas) -> None:
    a, b = replicas
    for i in range(30):
        await a.create_session(new_session(f"s{i:02}", expire=T0 + i))
    counts = await asyncio.gather(*(s.delete_expired(T0 + 100, 7) for s in (a, b, a, b, a, b)))
    assert sum(counts) == 30
    assert await a.delete_expired(T0 + 100, 100) == 0


async def test_replicas_starting_together_migrate_once(schema: tuple[str, str]) -> None:
    dsn, name = schema
    stores = await asyncio.gather(*(open_postgres(dsn, name, max_size=2) for _ in range(4)))
    try:
        await stores[0].create_session(new_session())
        assert (await stores[3].get_session(TENANT, "s1")).session_id == "s1"
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(dsn, server_settings={"search_path": name})
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    assert sorted(versions) == [m.version for m in MIGRATIONS]


async def test_creates_racing_on_two_replicas_never_overshoot_the_quota(
    replicas: Replicas,
) -> None:
    a, b = replicas

    async def create(i: int) -> bool:
        store = (a, b)[i % 2]
        try:
            session = new_session(f"s{i}", uid=f"u{i}")
            await store.create_session(session, now=T0, max_sessions=10)
        except ResourceExhausted:
            return False
        return True

    created = await asyncio.gather(*(create(i) for i in range(60)))
    assert created.count(True) == 10
    assert await a.count_sessions(TENANT) == await b.count_sessions(TENANT) == 10
