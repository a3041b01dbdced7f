"""ConnectionThread: group commit with per-job savepoints, and whole-batch failure."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from server.sessions.errors import Unavailable
from server.store.sqlite.writer import ConnectionThread

Job = Callable[[sqlite3.Connection], object]


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS child (id INTEGER PRIMARY KEY, parent INTEGER"
        " REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    return conn


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[tuple[ConnectionThread, str]]:
    path = str(tmp_path / "w.db")
    thread = ConnectionThread("test-writer", lambda: _connect(path), writes=True)
    await thread.start()
    yield thread, path
    await thread.stop()


def insert_parent(n: int) -> Job:
    return lambda conn: conn.execute("INSERT INTO parent VALUES (?)", (n,)).lastrowid


def failing_after_insert(n: int) -> Job:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO parent VALUES (?)", (n,))
        raise LookupError(f"job {n} fails after writing")

    return job


def parents(path: str) -> list[int]:
    with sqlite3.connect(path) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM parent ORDER BY id")]
    conn.close()
    return ids


async def hold_writer(thread: ConnectionThread) -> tuple[threading.Event, asyncio.Future[None]]:
    """Occupies the writer so that the jobs submitted next queue up as one batch."""
    gate, started = threading.Event(), threading.Event()

    def blocker(conn: sqlite3.Connection) -> None:
        started.set()
        gate.wait(5)

    future = thread.submit(blocker)
    await asyncio.to_thread(started.wait, 5)
    return gate, future


async def test_a_failing_job_is_rolled_back_alone_within_its_batch(
    writer: tuple[ConnectionThread, str],
) -> None:
    thread, path = writer
    gate, held = await hold_writer(thread)
    futures = [thread.submit(insert_parent(n)) for n in (1, 2)]
    futures.append(thread.submit(failing_after_insert(3)))
    futures.append(thread.submit(insert_parent(4)))
    gate.set()
    results = await asyncio.gather(held, *futures, return_exceptions=True)
    assert results[1:3] == [1, 2]
    assert isinstance(results[3], LookupError)
    assert results[4] == 4
    assert parents(path) == [1, 2, 4]


async def test_a_failed_commit_fails_every_job_of_the_batch(
    writer: tuple[ConnectionThread, str],
) -> None:
    """A deferred foreign key breaks COMMIT itself: no job of that batch is durable."""
    thread, path = writer
    gate, held = await hold_writer(thread)
    futures = [thread.submit(insert_parent(n)) for n in (1, 2)]
    futures.append(thread.submit(lambda c: c.execute("INSERT INTO child VALUES (1, 999)")))
    gate.set()
    results = await asyncio.gather(held, *futures, return_exceptions=True)
    for result in results[1:]:
        assert isinstance(result, Unavailable)
        assert isinstance(result.__cause__, sqlite3.IntegrityError)
    assert parents(path) == []
    # The connection is still usable afterwards.
    assert await thread.submit(insert_parent(5)) == 5
    assert parents(path) == [5]


async def test_a_connect_error_surfaces_from_start(tmp_path: Path) -> None:
    def broken() -> sqlite3.Connection:
        raise sqlite3.OperationalError("cannot open")

    thread = ConnectionThread("broken", broken, writes=True)
    with pytest.raises(sqlite3.OperationalError, match="cannot open"):
        await thread.start()
    await thread.stop()


async def test_a_job_failing_in_sqlite_itself_is_unavailable_alone(
    writer: tuple[ConnectionThread, str],
) -> None:
    """An operational error (read-only file, full disk) is the storage failing: Unavailable,
    never a raw sqlite3 error that would reach the caller as INTERNAL."""
    thread, path = writer

    def read_only(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    failed, kept = await asyncio.gather(
        thread.submit(read_only), thread.submit(insert_parent(7)), return_exceptions=True
    )
    assert isinstance(failed, Unavailable)
    assert "readonly" in str(failed)
    assert kept == 7
    assert parents(path) == [7]
