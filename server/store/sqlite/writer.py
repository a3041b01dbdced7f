"""A thread owning one sqlite3 connection that runs queued jobs in batched transactions.

SqliteStore runs one for its writes and one for its reads. Why not aiosqlite, which also
runs sqlite3 on a thread of its own: it costs a thread hop per call, and its transactions
are its caller's, one after another. Measured on the 2-core machines chatd is built on:
about 0.15-0.4 ms of hops per aiosqlite call (the last 100 messages: 0.09 ms with sqlite3
on a held connection, 0.5 ms through aiosqlite); with synchronous=FULL, a commit per write
reaches about 6,000 writes/s and group commit about 30,000-45,000 at 64 in flight.

Here a job is a plain function run whole on the thread, so a write of several statements
is one hop; the writer commits every job that queued up meanwhile in one transaction (one
fsync), each in a SAVEPOINT so that a failing job is undone alone, and a caller's future
resolves only after COMMIT returned. SQLite admits one writer at a time anyway: one
writing connection makes the order of writes chatd's own instead of busy_timeout waits
between connections, and lets the WAL bookkeeping (`after_batch`, sqlite/wal.py) run
between batches on the very connection that writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

from server.sessions.errors import Unavailable

T = TypeVar("T")
_Item: TypeAlias = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]
_Outcome: TypeAlias = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """Resolves a whole batch; runs on the event loop, once per batch."""
    for future, result, error in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class ConnectionThread:
    """Runs jobs on a private connection, one transaction per batch of queued jobs.

    With `writes=True` the batch is one BEGIN IMMEDIATE ... COMMIT and each job runs in
    its own SAVEPOINT, so a failing job is undone alone while the rest commit together
    (group commit: one fsync for everything that queued up meanwhile). A job's future
    resolves only after COMMIT returned. If COMMIT fails, every job of the batch fails.
    `after_batch` runs on the thread after each batch's callers were answered.
    Reads share one snapshot per batch and need neither savepoints nor a good COMMIT.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        *,
        writes: bool,
        max_batch: int = 256,
        after_batch: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self._name = name
        self._after_batch = after_batch
        self._connect = connect
        self._writes = writes
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closing = False
        self._dead = False

    async def start(self) -> None:
        """Starts the thread and waits until its connection is open (raising its error)."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._stopped: asyncio.Future[None] = self._loop.create_future()
        threading.Thread(target=self._run, args=(ready,), name=self._name, daemon=True).start()
        await ready

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queues `job`; the future carries its result or exception. Event loop only."""
        if self._closing or self._dead:
            raise RuntimeError("the store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((job, future))
        return future

    async def stop(self) -> None:
        """Runs every job queued so far, then closes the connection and ends the thread."""
        if not self._closing:
            self._closing = True
            self._queue.put(None)
        await self._stopped

    # ------------------------------------------------------------------ on the thread

    def _call(self, fn: Callable[[Any], None], arg: Any) -> None:
        # A closed loop raises RuntimeError; then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, arg)

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:
            self._dead = True
            self._call(_settle, [(ready, None, exc), (self._stopped, None, None)])
            return
        self._call(_settle, [(ready, None, None)])
        try:
            self._serve(conn)
        finally:
            self._dead = True
            conn.close()
            # Only reachable with work queued if serving crashed; never leave a caller hanging.
            orphans: list[_Outcome] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    orphans.append((item[1], None, RuntimeError("the store is closed")))
            self._call(_settle, [*orphans, (self._stopped, None, None)])

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            item = self._queue.get()
            stop = item is None
            items = [] if item is None else [item]
            while not stop and len(items) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    items.append(item)
            # Reading a future's state off the loop thread is a benign race: at worst a job
            # cancelled this very instant still runs, as if cancelled a moment later.
            live = [i for i in items if not i[1].cancelled()]
            if live:
                run = self._write_batch if self._writes else self._read_batch
                try:
                    outcomes = run(conn, live)
                except Exception as exc:
                    outcomes = [(future, None, _batch_failed(exc)) for _, future in live]
                self._call(_settle, outcomes)
                if self._after_batch is not None:
                    self._housekeeping(conn)
            if stop:
                return

    def _housekeeping(self, conn: sqlite3.Connection) -> None:
        # After the batch's callers were answered, so that they never wait for it. A failure
        # here (a checkpoint on a full disk) fails no job; the next batch tries again.
        assert self._after_batch is not None
        with contextlib.suppress(sqlite3.Error, OSError):
            self._after_batch(conn)

    def _write_batch(self, conn: sqlite3.Connection, items: list[_Item]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, future in items:
                conn.execute("SAVEPOINT job")
                try:
                    result = job(conn)
                except Exception as exc:
                    # If the error already ended the transaction (SQLite does that on I/O
                    # errors), ROLLBACK TO raises and the whole batch fails below.
                    conn.execute("ROLLBACK TO job")
                    outcomes.append((future, None, _job_failed(exc)))
                else:
                    outcomes.append((future, result, None))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                # If even this fails the connection is broken; jobs still get the cause.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return [(future, None, _batch_failed(exc)) for _, future in items]
        return outcomes

    def _read_batch(self, conn: sqlite3.Connection, items: list[_Item]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        conn.execute("BEGIN")  # one snapshot for the batch instead of one per statement
        try:
            for job, future in items:
                try:
                    outcomes.append((future, job(conn), None))
                except Exception as exc:
                    outcomes.append((future, None, _job_failed(exc)))
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        return outcomes


def _batch_failed(cause: Exception) -> Unavailable:
    # A fresh exception per job: one instance raised in many tasks would pile up tracebacks.
    error = Unavailable(f"storage transaction failed: {cause}", reason="STORE_UNAVAILABLE")
    error.__cause__ = cause
    return error


def _job_failed(error: Exception) -> Exception:
    # SQLite's operational errors (read-only file, full disk, I/O) are the storage failing,
    # not the request: UNAVAILABLE, as a failed COMMIT is, rather than INTERNAL.
    return _batch_failed(error) if isinstance(error, sqlite3.OperationalError) else error
