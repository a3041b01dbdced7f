"""SqliteStore's staged creates: a long history goes in a writer job per slice, so other
writes run in between, yet the session is invisible until complete and nothing of it is
left when the create fails, is cancelled, or the process dies midway.

A latch on the store's private per-slice hook holds a create between two slices, so each
test looks at it midway deterministically. Most tests shrink the threshold and the slice
so that a history of a few dozen messages takes several slices.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.sessions.errors import (
    AlreadyExists,
    DuplicateRequest,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from server.sessions.model import Message, Session
from server.sessions.ports import SessionQuery
from server.store import SqliteStore, rows
from server.store.sqlite import sql
from server.store.sqlite import store as sqlite_store
from tests.process import ROOT

from .builders import T0, TENANT, commit, history, new_session, request_of, with_history

SLICE = 4
LONG = 22  # six slices, the last one short
NEVER = 1 << 30  # a latch that only counts


class Latch:
    """The per-slice hook: holds the create once `at` rows are stored, until released."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.seen: list[int] = []
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, stored: int) -> None:
        self.seen.append(stored)
        if stored >= self.at and not self.reached.is_set():
            self.reached.set()
            await self.release.wait()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "chatd.db")


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "_STAGE_ABOVE", 5)
    monkeypatch.setattr(sqlite_store, "_HISTORY_SLICE", SLICE)


@pytest.fixture
async def store(db: str, small_slices: None) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(db)
    yield opened
    await opened.close()


def long_session(session_id: str = "big", count: int = LONG) -> tuple[Session, list[Message]]:
    return with_history(new_session(session_id), *(f"m{i}" for i in range(count)))


def on_disk(db: str, session_id: str) -> tuple[list[str], int]:
    """(states of the rows stored under session_id, its message rows), read past the store."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        states = conn.execute("SELECT state FROM sessions WHERE session_id=?", (session_id,))
        found = [row[0] for row in states]
        count = conn.execute("SELECT count(*) FROM messages WHERE session_id=?", (session_id,))
        return found, count.fetchone()[0]


@contextlib.contextmanager
def held(store: SqliteStore, at: int) -> Iterator[Latch]:
    """Installs a latch on the store; leaving the block releases it (it keeps counting)."""
    latch = Latch(at)
    store._after_slice = latch
    try:
        yield latch
    finally:
        latch.release.set()


async def test_another_sessions_turn_commits_while_a_long_create_is_midway(db: str) -> None:
    """With the real threshold and slice: 6,001 messages take four writer jobs, and a turn
    of another tenant commits between them, while the create's rows stay invisible."""
    store = await SqliteStore.open(db)
    try:
        quiet = new_session("quiet", tenant="quiet")
        await store.create_session(quiet)
        big, messages = long_session(count=6001)
        with held(store, 2000) as latch:
            create = asyncio.create_task(store.create_session(big, messages))
            await latch.reached.wait()
            after = await asyncio.wait_for(commit(store, quiet, "hi", "yo"), 10)
            assert await store.get_session("quiet", "quiet") == after
            assert on_disk(db, "big") == (["STAGING"], 2000)  # its first slice is committed
            assert not create.done()
        await create
        assert latch.seen == [2000, 4000, 6000, 6001]
        assert await store.get_session(TENANT, "big") == big
        assert len(await store.recent_messages(TENANT, "big")) == 6001
        assert on_disk(db, "big") == (["ACTIVE"], 6001)
    finally:
        await store.close()


async def test_a_history_at_the_threshold_is_one_job(store: SqliteStore) -> None:
    with held(store, NEVER) as latch:
        await store.create_session(*long_session("five", 5))
        await store.create_session(*long_session("six", 6))
    assert latch.seen == [4, 6]  # only the longer one went in slices
    assert len(await store.recent_messages(TENANT, "five")) == 5


async def test_a_staged_session_is_invisible_until_complete(store: SqliteStore) -> None:
    await store.create_session(new_session("other"))
    big, messages = long_session()
    with held(store, 8) as latch:
        create = asyncio.create_task(store.create_session(big, messages))
        await latch.reached.wait()
        with pytest.raises(NotFound):
            await store.get_session(TENANT, "big")
        listed = await store.list_sessions(TENANT, SessionQuery(limit=10))
        assert [s.session_id for s in listed] == ["other"]
        assert await store.count_sessions(TENANT) == 1
        with pytest.raises(NotFound):
            await store.recent_messages(TENANT, "big")
        with pytest.raises(NotFound):
            await store.recent_messages(TENANT, "big", limit=3)
        with pytest.raises(NotFound):
            await store.list_messages(TENANT, "big", -1, 10)
        with pytest.raises(NotFound):
            await store.delete_session(TENANT, "big")
        with pytest.raises(NotFound):
            await commit(store, big, "sneaked in")
        with pytest.raises(NotFound):
            await store.clear_history(big.evolve(version=big.version + 1), big.version)
        assert await store.delete_expired(T0 + 1e9, 100) == 0
        # A second create of the id waits for the first to settle, then loses to it.
        second = asyncio.create_task(store.create_session(new_session("big", uid="life-2")))
        await asyncio.sleep(0.05)
        assert not second.done()
        assert not create.done()
    await create
    with pytest.raises(AlreadyExists):
        await second
    assert await store.get_session(TENANT, "big") == big
    assert await history(store, big) == [f"m{i}" for i in range(LONG)]
    assert await store.count_sessions(TENANT) == 2


async def test_a_failure_midway_leaves_nothing_and_a_retry_succeeds(
    store: SqliteStore, db: str
) -> None:
    """A message row of a later slice violates the primary key (a row with its seq was
    put there meanwhile): the create fails with that error and its rows are removed."""
    big, messages = long_session()
    clash = rows.message_values(messages[17])
    with held(store, 8) as latch:
        create = asyncio.create_task(store.create_session(big, messages))
        await latch.reached.wait()
        await store._writer.submit(
            lambda conn: conn.execute(sql.INSERT_MESSAGE, (TENANT, "big", *clash))
        )
    with pytest.raises(sqlite3.IntegrityError):
        await create
    assert on_disk(db, "big") == ([], 0)
    with pytest.raises(NotFound):
        await store.get_session(TENANT, "big")
    await store.create_session(big, messages)
    assert await history(store, big) == [f"m{i}" for i in range(LONG)]


async def test_a_cancelled_create_is_removed_and_its_id_free_again(
    store: SqliteStore, db: str
) -> None:
    big, messages = long_session()
    with held(store, 12) as latch:
        create = asyncio.create_task(store.create_session(big, messages))
        await latch.reached.wait()
        assert on_disk(db, "big") == (["STAGING"], 12)
        create.cancel()
        with pytest.raises(asyncio.CancelledError):
            await create
    # The retry waits for the discard, which runs without the cancelled caller.
    await store.create_session(big, messages)
    assert await store.get_session(TENANT, "big") == big
    assert on_disk(db, "big") == (["ACTIVE"], LONG)


async def test_a_create_cancelled_while_its_first_job_runs_is_removed(
    store: SqliteStore, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first job commits although its caller is gone: the discard removes it."""
    real = sqlite_store._stage
    entered, proceed = threading.Event(), threading.Event()

    def slow(*args: Any) -> None:
        entered.set()
        proceed.wait(10)
        real(*args)

    monkeypatch.setattr(sqlite_store, "_stage", slow)
    big, messages = long_session()
    create = asyncio.create_task(store.create_session(big, messages))
    assert await asyncio.to_thread(entered.wait, 10)
    create.cancel()
    proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await create
    await asyncio.gather(*store._discards)
    assert on_disk(db, "big") == ([], 0)
    await store.create_session(big, messages)
    assert await store.get_session(TENANT, "big") == big


async def test_a_failed_discard_is_retried_by_the_next_create_and_the_sweep(
    store: SqliteStore, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sqlite_store._discard_slice

    def broken(conn: sqlite3.Connection, key: tuple[str, str], uid: str) -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    for session_id in ("a", "b"):
        monkeypatch.setattr(sqlite_store, "_discard_slice", broken)
        session, messages = long_session(session_id)
        with held(store, 8) as latch:
            create = asyncio.create_task(store.create_session(session, messages))
            await latch.reached.wait()
            create.cancel()
        with pytest.raises(asyncio.CancelledError):
            await create
        await asyncio.gather(*store._discards)
        assert on_disk(db, session_id) == (["STAGING"], 8)
        with pytest.raises(NotFound):
            await store.get_session(TENANT, session_id)
        # Still failing: a create of the id is refused as unavailable, not AlreadyExists.
        with pytest.raises(Unavailable):
            await store.create_session(new_session(session_id, uid="life-2"))
    monkeypatch.setattr(sqlite_store, "_discard_slice", real)
    await store.create_session(new_session("a", uid="life-2"))
    assert on_disk(db, "a") == (["ACTIVE"], 0)
    assert await store.delete_expired(T0 + 1e9, 100) == 0  # removed "b", counted nothing
    assert on_disk(db, "b") == ([], 0)
    assert store._leftovers == {}


async def test_open_removes_what_a_crash_left_staged(db: str, small_slices: None) -> None:
    await (await SqliteStore.open(db)).close()
    kept, kept_messages = long_session("kept", 3)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("PRAGMA foreign_keys = ON")
        for session, messages in (long_session("crashed"), (kept, kept_messages)):
            values = (
                sql.staging_values(session)
                if session.session_id == "crashed"
                else (TENANT, session.session_id, *rows.session_values(session))
            )
            conn.execute(sql.INSERT_SESSION, values)
            conn.executemany(sql.INSERT_MESSAGE, sql.message_rows(session, messages))
    assert on_disk(db, "crashed") == (["STAGING"], LONG)
    store = await SqliteStore.open(db)
    try:
        assert on_disk(db, "crashed") == ([], 0)
        assert await store.get_session(TENANT, "kept") == kept
        assert await history(store, kept) == ["m0", "m1", "m2"]
        big, messages = long_session("crashed")
        await store.create_session(big, messages)
        assert await store.get_session(TENANT, "crashed") == big
    finally:
        await store.close()


async def test_a_taken_request_id_fails_a_staged_create_writing_nothing(
    store: SqliteStore, db: str
) -> None:
    taken = request_of("r1", result="first")
    await store.create_session(new_session("first"), request=taken)
    big, messages = long_session()
    with held(store, NEVER) as latch, pytest.raises(DuplicateRequest):
        await store.create_session(big, messages, request_of("r1", result="second"))
    assert latch.seen == []  # refused by the first job, before any slice
    assert on_disk(db, "big") == ([], 0)
    assert await store.get_request(TENANT, "r1") == taken


async def test_a_request_id_taken_while_staging_fails_the_create_at_its_end(
    store: SqliteStore, db: str
) -> None:
    big, messages = long_session()
    with held(store, 8) as latch:
        create = asyncio.create_task(store.create_session(big, messages, request_of("r1")))
        await latch.reached.wait()
        # The request record is not stored before the session is complete.
        assert await store.get_request(TENANT, "r1") is None
        other = request_of("r1", result="other")
        await store.create_session(new_session("other"), request=other)
    with pytest.raises(DuplicateRequest):
        await create
    assert on_disk(db, "big") == ([], 0)
    assert await store.get_request(TENANT, "r1") == other


async def test_a_staged_create_stores_its_request_record(store: SqliteStore) -> None:
    big, messages = long_session()
    request = request_of("r1")
    await store.create_session(big, messages, request)
    assert await store.get_request(TENANT, "r1") == request
    with pytest.raises(DuplicateRequest):
        await store.create_session(*long_session("again"), request_of("r1"))


async def test_a_full_quota_fails_a_staged_create_writing_nothing(
    store: SqliteStore, db: str
) -> None:
    await store.create_session(new_session("one"), max_sessions=1)
    big, messages = long_session()
    with held(store, NEVER) as latch, pytest.raises(ResourceExhausted):
        await store.create_session(big, messages, request_of("r1"), max_sessions=1)
    assert latch.seen == []
    assert on_disk(db, "big") == ([], 0)
    assert await store.get_request(TENANT, "r1") is None
    await store.create_session(big, messages, request_of("r1"), max_sessions=2)
    assert await store.count_sessions(TENANT) == 2


async def test_a_quota_filled_while_staging_fails_the_create_at_its_end(
    store: SqliteStore, db: str
) -> None:
    big, messages = long_session()
    with held(store, 8) as latch:
        create = asyncio.create_task(
            store.create_session(big, messages, request_of("r1"), now=T0, max_sessions=2)
        )
        await latch.reached.wait()
        # The staged session is not counted yet: the tenant still has room for this one.
        await store.create_session(new_session("one"), now=T0, max_sessions=2)
        await store.create_session(new_session("two"), now=T0, max_sessions=2)
    with pytest.raises(ResourceExhausted):
        await create
    assert on_disk(db, "big") == ([], 0)
    assert await store.get_request(TENANT, "r1") is None
    assert await store.count_sessions(TENANT) == 2


async def test_a_staged_create_replaces_an_expired_session(store: SqliteStore) -> None:
    await store.create_session(new_session("big", expire=T0 + 10, uid="old"))
    big, messages = long_session()
    with pytest.raises(AlreadyExists):
        await store.create_session(big, messages, now=T0 + 5)
    await store.create_session(big, messages, now=T0 + 10)
    assert await store.get_session(TENANT, "big") == big
    assert len(await store.recent_messages(TENANT, "big")) == LONG


# Run in a child process: stages "big" with the real slice size, says so after its second
# slice, then waits to be killed.
_CHILD = """
import asyncio, sys
from server.store import SqliteStore
from tests.store.test_sqlite_staged import long_session

async def main():
    store = await SqliteStore.open(sys.argv[1])
    async def after_slice(stored):
        if stored == 4000:
            print("staged", flush=True)
            await asyncio.sleep(3600)
    store._after_slice = after_slice
    await store.create_session(*long_session(count=9000))

asyncio.run(main())
"""


async def test_open_removes_what_a_killed_process_left_staged(db: str) -> None:
    await (await SqliteStore.open(db)).close()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, db, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = b""
        while line != b"staged\n":  # after the store's own log lines
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            assert line, "the child ended before staging"
        assert on_disk(db, "big") == (["STAGING"], 4000)
    finally:
        child.kill()
        await child.wait()
    store = await SqliteStore.open(db)
    try:
        assert on_disk(db, "big") == ([], 0)
        with pytest.raises(NotFound):
            await store.get_session(TENANT, "big")
        big, messages = long_session(count=9000)
        await store.create_session(big, messages)
        assert on_disk(db, "big") == (["ACTIVE"], 9000)
    finally:
        await store.close()
