"""SqliteStore: sessions in one SQLite file (WAL), group-committed by a writer thread.

Opening takes the file's owner lock first (owner.py: one chatd per file), checks the
file and its WAL (files.py, wal.py) before SQLite touches them, and turns every way the
file can be unusable into one StartupError.

A create with a long history (an import or a fork) does not hold the writer, which every
other tenant's writes wait for, for the whole insert: it is staged (sql.py explains
the STAGING row), its history inserted a writer job per slice, and it becomes visible in
one last job, or is removed if anything fails on the way (or at the next open, after a
crash). The owner lock makes this process the only writer of the file, so which creates
are under way is known here, in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from server.sessions.errors import Unavailable
from server.sessions.model import Message, Session
from server.sessions.pacing import paced_map
from server.sessions.ports import (
    ReplyError,
    ReplyEvents,
    ReplyRecord,
    ReplyWrite,
    RequestRecord,
    SessionQuery,
)
from server.startup import StartupError
from server.store import rows, rules
from server.store.listing import session_page
from server.store.migrations import SchemaTooNew
from server.store.sqlite import files, sql
from server.store.sqlite.connect import BUSY_TIMEOUT_MS, SYNCHRONOUS_MODES, ForeignSchema, connect
from server.store.sqlite.owner import OwnerLock
from server.store.sqlite.wal import WalKeeper, check_before_open
from server.store.sqlite.writer import ConnectionThread

log = structlog.get_logger("chatd.store")


# A long history is inserted in slices of this many rows, with a short sleep between them
# (still in the one transaction). Binding a row takes the GIL and stepping it gives it
# back, so an unbroken executemany re-takes the GIL hundreds of thousands of times a
# second; a thread that wants it (the event loop, grpc's poller) then gets it only every
# switch interval (5 ms), one completion at a time, and RPCs stall for the whole insert.
_HISTORY_SLICE = 2000
_GIL_BREAK_SECONDS = 0.002
# A history longer than this is staged: one writer job per _HISTORY_SLICE rows, each
# holding the writer for about 10 ms, instead of one job holding it for seconds.
_STAGE_ABOVE = 5000

_Key = tuple[str, str]


def _insert_history(conn: sqlite3.Connection, history: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(history), _HISTORY_SLICE):
        if start:
            time.sleep(_GIL_BREAK_SECONDS)
        conn.executemany(sql.INSERT_MESSAGE, history[start : start + _HISTORY_SLICE])


def _insert_rows(conn: sqlite3.Connection, history: list[tuple[Any, ...]]) -> None:
    conn.executemany(sql.INSERT_MESSAGE, history)


def _require(conn: sqlite3.Connection, tenant: str, session_id: str) -> None:
    if conn.execute(sql.EXISTS, (tenant, session_id)).fetchone() is None:
        raise rules.not_found(session_id)


def _insert_request(conn: sqlite3.Connection, request: tuple[Any, ...] | None) -> None:
    # First in every job that takes one: a retry of a write that did apply must be told
    # DuplicateRequest, not Conflict or AlreadyExists. Raising rolls the job back whole.
    if request is not None and conn.execute(sql.INSERT_REQUEST, request).rowcount == 0:
        raise rules.duplicate_request(request[1])


def _replace_session(
    conn: sqlite3.Connection, update: tuple[Any, ...], session: Session, expected: int
) -> None:
    """Runs a guarded UPDATE_SESSION, raising NotFound, Conflict or seq reuse on a miss."""
    if conn.execute(sql.UPDATE_SESSION, update).rowcount == 0:
        key = (session.tenant, session.session_id)
        guards = conn.execute(sql.SELECT_GUARDS, key).fetchone()
        raise rules.guard_failure(session, expected, guards)


def _replace_expired(conn: sqlite3.Connection, key: tuple[str, str], now: int | None) -> None:
    """Deletes the session stored under `key` if it expired by `now`: a create replaces it."""
    if now is None:
        return
    row = conn.execute(sql.SELECT_EXPIRE, key).fetchone()
    if row is not None and row[0] is not None and row[0] <= now:
        _delete_sessions(conn, [key])


def _delete_sessions(conn: sqlite3.Connection, keys: Sequence[tuple[str, str]]) -> None:
    """Deletes these sessions with their messages, replies and the replies' events."""
    conn.executemany(sql.DELETE_MESSAGES, keys)
    conn.executemany(sql.DELETE_SESSION_REPLY_EVENTS, keys)
    conn.executemany(sql.DELETE_SESSION_REPLIES, keys)
    conn.executemany(sql.DELETE_SESSION, keys)


def _upsert_reply(
    conn: sqlite3.Connection, record: tuple[Any, ...], chunk: tuple[Any, ...] | None
) -> None:
    conn.execute(sql.UPSERT_REPLY, record)
    if chunk is not None:
        conn.execute(sql.UPSERT_REPLY_EVENTS, chunk)


def _check_quota(
    conn: sqlite3.Connection, tenant: str, now: int | None, limit: int, unseen: int = 0
) -> None:
    """After a create's insert, in its transaction: the tenant holds at most `limit`,
    counting `unseen` more sessions than are visible (a staged create's own row)."""
    if limit <= 0:
        return
    if now is None:
        count = conn.execute(sql.COUNT_SESSIONS, (tenant,)).fetchone()[0]
    else:
        count = conn.execute(sql.COUNT_ALIVE, (tenant, now)).fetchone()[0]
    if count + unseen > limit:
        raise rules.quota_exceeded(limit)


def _stage(
    conn: sqlite3.Connection,
    values: tuple[Any, ...],
    record: tuple[Any, ...] | None,
    now: int | None,
    limit: int,
) -> None:
    """A staged create's first job: every check a plain create makes, so that it fails
    as early, but no request record yet, and a session row nothing reads."""
    key = values[:2]
    if record is not None and conn.execute(sql.SELECT_REQUEST, record[:2]).fetchone():
        raise rules.duplicate_request(record[1])
    _replace_expired(conn, key, now)
    if conn.execute(sql.INSERT_SESSION, values).rowcount == 0:
        raise rules.already_exists(key[1])
    _check_quota(conn, key[0], now, limit, unseen=1)


def _publish(
    conn: sqlite3.Connection,
    publish: tuple[Any, ...],
    record: tuple[Any, ...] | None,
    now: int | None,
    limit: int,
) -> None:
    """A staged create's last job: the request record, the flip and the quota, together,
    as a plain create's one job has them."""
    _insert_request(conn, record)
    if conn.execute(sql.PUBLISH_STAGED, publish).rowcount == 0:
        # Only a discard removes a staging row, and none runs while its create is alive.
        raise RuntimeError(f"the staged session {publish[3]!r} is gone")
    _check_quota(conn, publish[2], now, limit)


def _discard_slice(conn: sqlite3.Connection, key: _Key, uid: str) -> bool:
    """Removes up to a slice of a staged session's messages, and its row after the last
    of them; True once nothing of it is left. A row that is no longer staging (its create
    completed after all) is left alone."""
    if conn.execute(sql.IS_STAGED, (*key, uid)).fetchone() is None:
        return True
    slice_ = (*key, *key, _HISTORY_SLICE)
    if conn.execute(sql.DELETE_MESSAGE_SLICE, slice_).rowcount == _HISTORY_SLICE:
        return False
    conn.execute(sql.DELETE_STAGED, (*key, uid))
    return True


def _discard_all_staged(conn: sqlite3.Connection) -> int:
    """At open: removes every staged session a crashed process left; how many."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute(sql.ALL_STAGED).fetchall()
        for key in found:
            conn.execute(sql.DELETE_MESSAGES, key)
            conn.execute(sql.DELETE_SESSION, key)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(found)


class SqliteStore:
    """SessionStore on stdlib sqlite3: one writer thread, one reader thread.

    Bound to the event loop that opened it. A write resolves after its COMMIT returned.
    Rows are encoded on the event loop rather than on the writer thread: the writer
    holds the database write lock, so its time is the scarcer one.
    """

    def __init__(
        self,
        writer: ConnectionThread,
        reader: ConnectionThread,
        owner: tuple[OwnerLock, WalKeeper] | None = None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._owner = owner
        # Staged creates under way (and their discards), by key: a create of the same id
        # waits until it is settled, as it would wait for the writer behind a plain one.
        self._staging: dict[_Key, asyncio.Event] = {}
        self._discards: set[asyncio.Task[None]] = set()
        # Staged sessions whose discard failed (the writer failing): retried by the next
        # create of the id and by delete_expired, and at the latest by the next open.
        self._leftovers: dict[_Key, str] = {}
        # Tests only: awaited after each staged slice, with the rows stored so far.
        self._after_slice: Callable[[int], Awaitable[None]] | None = None

    @classmethod
    async def open(cls, path: str, synchronous: str = "FULL") -> SqliteStore:
        """Opens (creating it if missing) the database at `path`, relative to the working
        directory unless absolute; raises StartupError when the file is unusable or taken."""
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError(f"SqliteStore needs a file path, not {path!r}")
        database = files.resolve(path)
        files.prepare_directory(database)
        lock = OwnerLock.acquire(database)
        try:
            found = files.inspect(database)
            wal = check_before_open(database, lock.previous)
            keeper = WalKeeper(lock, database, BUSY_TIMEOUT_MS)
            try:
                lock.record(wal, None, opening=True)  # the file changes while SQLite opens it
            except OSError as exc:
                raise files.write_error(lock.path, exc) from exc
            writer, reader = await cls._start(database, mode, keeper)
        except BaseException:
            lock.release()
            raise
        if found.new:
            log.warning(
                f"created new database at {database}",
                path=str(database),
                configured=path,
                working_directory=os.getcwd(),
            )
        log.info("database opened", path=str(database), wal_replayed=wal is not None)
        return cls(writer, reader, (lock, keeper))

    @classmethod
    async def _start(
        cls, database: Path, mode: str, keeper: WalKeeper
    ) -> tuple[ConnectionThread, ConnectionThread]:
        """The writer (which migrates) and the reader, with SQLite's errors explained."""

        def open_writer() -> sqlite3.Connection:
            conn = connect(str(database), mode, writer=True)
            try:
                # Like the migrations, before the WAL is on record: nothing else writes yet.
                if removed := _discard_all_staged(conn):
                    log.warning(
                        "removed sessions whose create a crash interrupted", sessions=removed
                    )
                keeper.opened(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        writer = ConnectionThread(
            "chatd-sqlite-writer", open_writer, writes=True, after_batch=keeper.after_batch
        )
        try:
            await writer.start()  # migrates, so the reader finds the tables
        except sqlite3.Error as exc:
            raise files.explain(database, exc) from exc
        except SchemaTooNew as exc:
            raise StartupError(
                str(database), str(exc).partition(";")[0], "run the newer chatd that wrote it"
            ) from exc
        except ForeignSchema as exc:
            raise StartupError(
                str(database),
                f"is another program's SQLite database: it {exc}",
                "point CHATD_DATABASE_URL at chatd's own database file (or a new one)",
            ) from exc
        except OSError as exc:
            raise files.write_error(database, exc) from exc
        reader = ConnectionThread(
            "chatd-sqlite-reader",
            lambda: connect(str(database), mode, writer=False),
            writes=False,
        )
        try:
            await reader.start()
        except BaseException as exc:
            await writer.stop()
            if isinstance(exc, sqlite3.Error):
                raise files.explain(database, exc) from exc
            raise
        return writer, reader

    async def create_session(
        self,
        session: Session,
        messages: Sequence[Message] = (),
        request: RequestRecord | None = None,
        *,
        now: float | None = None,
        max_sessions: int = 0,
    ) -> None:
        rules.check_create(session, messages, request)
        key = (session.tenant, session.session_id)
        values = (*key, *rows.session_values(session))
        # Encoding a long history (an import or a fork) takes seconds of CPU: in paced
        # slices, so the loop keeps serving, and before the job, so the writer (which
        # every other write waits for) spends only the INSERTs on it.
        history = await paced_map(lambda m: (*key, *rows.message_values(m)), messages)
        record = None if request is None else rows.request_values(request)
        now_micros = None if now is None else rules.to_micros(now)
        await self._settled(key)
        if len(history) > _STAGE_ABOVE:
            await self._create_staged(session, history, record, now_micros, max_sessions)
            return

        def job(conn: sqlite3.Connection) -> None:
            _insert_request(conn, record)
            _replace_expired(conn, key, now_micros)
            if conn.execute(sql.INSERT_SESSION, values).rowcount == 0:
                raise rules.already_exists(session.session_id)
            _check_quota(conn, session.tenant, now_micros, max_sessions)
            _insert_history(conn, history)

        await self._writer.submit(job)

    async def _settled(self, key: _Key) -> None:
        """Waits until no staged create of `key` is under way, and retries a failed
        discard of it. Returns with the key free: the caller's next write to the writer
        queue, if it comes before the caller's next await, is the next write of `key`."""
        while (busy := self._staging.get(key)) is not None:
            await busy.wait()
        if (uid := self._leftovers.get(key)) is not None:
            await self._discard(key, uid, self._hold(key))
            if key in self._leftovers:
                raise Unavailable(
                    f"session {key[1]!r} of a failed create is not removed yet",
                    reason="SESSION_CREATE_PENDING",
                )

    def _hold(self, key: _Key) -> asyncio.Event:
        done = self._staging[key] = asyncio.Event()
        return done

    def _release(self, key: _Key, done: asyncio.Event) -> None:
        del self._staging[key]
        done.set()

    async def _create_staged(
        self,
        session: Session,
        history: list[tuple[Any, ...]],
        record: tuple[Any, ...] | None,
        now: int | None,
        limit: int,
    ) -> None:
        """Stages the session, stores its history a writer job per slice and publishes
        it; on any failure or cancellation its rows are discarded, in jobs of their own
        that run even when the caller is gone."""
        key = (session.tenant, session.session_id)
        stage = sql.staging_values(session)
        publish = sql.publish_values(session)
        done = self._hold(key)
        staged = False
        try:
            first = self._writer.submit(lambda conn: _stage(conn, stage, record, now, limit))
            try:
                await first
            except asyncio.CancelledError:
                staged = True  # it may have run all the same
                raise
            staged = True
            # One slice at a time: the writer is idle until this loop hands it the next, and
            # whatever was queued meanwhile goes first. A slice queued ahead would keep the
            # writer busy (a faster import while this loop is busy) but could make another
            # write wait for two slices.
            for start in range(0, len(history), _HISTORY_SLICE):
                slice_ = history[start : start + _HISTORY_SLICE]
                await self._writer.submit(functools.partial(_insert_rows, history=slice_))
                if self._after_slice is not None:
                    await self._after_slice(start + len(slice_))
            await self._writer.submit(lambda conn: _publish(conn, publish, record, now, limit))
        except BaseException as exc:
            if not staged:
                self._release(key, done)
                raise
            discard = asyncio.create_task(self._discard(key, session.uid, done))
            self._discards.add(discard)
            discard.add_done_callback(self._discards.discard)
            if not isinstance(exc, asyncio.CancelledError):
                # The caller hears of the failure once nothing of the session is left.
                await asyncio.shield(discard)
            raise
        self._release(key, done)

    async def _discard(self, key: _Key, uid: str, done: asyncio.Event) -> None:
        """Removes a staged session a slice per writer job, then releases its key. If a
        job fails the rest is left for a retry (see _leftovers)."""
        try:
            while not await self._writer.submit(lambda conn: _discard_slice(conn, key, uid)):
                pass
        except Exception as exc:
            self._leftovers[key] = uid
            log.warning("could not remove a staged session yet", session_id=key[1], error=str(exc))
        else:
            if self._leftovers.get(key) == uid:
                del self._leftovers[key]
        finally:
            self._release(key, done)

    async def get_session(self, tenant: str, session_id: str) -> Session:
        def job(conn: sqlite3.Connection) -> Session:
            row = conn.execute(sql.SELECT_SESSION, (tenant, session_id)).fetchone()
            if row is None:
                raise rules.not_found(session_id)
            return rows.session_from_row(row)

        return await self._reader.submit(job)

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        if query.limit <= 0:
            return []
        statement, params = session_page(
            tenant,
            query,
            placeholder=lambda _: "?",
            label_matches=sql.LABEL_MATCHES,
            visible=sql.VISIBLE,
        )

        def job(conn: sqlite3.Connection) -> list[Session]:
            return [rows.session_from_row(row) for row in conn.execute(statement, params)]

        return await self._reader.submit(job)

    async def delete_session(self, tenant: str, session_id: str, uid: str | None = None) -> None:
        key = (tenant, session_id)

        def job(conn: sqlite3.Connection) -> None:
            # A staged session is not there to delete (SELECT_GUARDS skips it), nor is
            # another life of the session than the one the caller read.
            row = conn.execute(sql.SELECT_GUARDS, key).fetchone()
            if row is None or (uid is not None and row[2] != uid):
                raise rules.not_found(session_id)
            _delete_sessions(conn, [key])

        await self._writer.submit(job)

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        def job(conn: sqlite3.Connection) -> list[Message]:
            # Checked first: a staged session has messages but is not there yet.
            _require(conn, tenant, session_id)
            if limit is None:
                found = conn.execute(sql.ALL_MESSAGES, (tenant, session_id)).fetchall()
            elif limit > 0:
                # Newest first through the primary key, so the cost follows `limit`.
                found = conn.execute(sql.LAST_MESSAGES, (tenant, session_id, limit)).fetchall()
                found.reverse()
            else:
                found = []
            return [rows.message_from_row(row) for row in found]

        return await self._reader.submit(job)

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        def job(conn: sqlite3.Connection) -> list[Message]:
            _require(conn, tenant, session_id)
            params = (tenant, session_id, after_seq, max(limit, 0))
            found = conn.execute(sql.MESSAGES_AFTER, params).fetchall()
            return [rows.message_from_row(row) for row in found]

        return await self._reader.submit(job)

    async def commit_turn(
        self,
        session: Session,
        messages: Sequence[Message],
        expected_version: int,
        request: RequestRecord | None = None,
        reply: ReplyWrite | None = None,
    ) -> None:
        rules.check_commit(session, messages, expected_version, request, reply)
        first = rules.first_new_seq(session, messages)
        update = sql.update_values(session, expected_version, first)
        added = sql.message_rows(session, messages)
        record = None if request is None else rows.request_values(request)
        replied = None if reply is None else sql.reply_rows(reply)

        def job(conn: sqlite3.Connection) -> None:
            _insert_request(conn, record)
            _replace_session(conn, update, session, expected_version)
            conn.executemany(sql.INSERT_MESSAGE, added)
            if replied is not None:
                _upsert_reply(conn, *replied)

        await self._writer.submit(job)

    async def clear_history(self, session: Session, expected_version: int) -> None:
        rules.check_version(session, expected_version)
        update = sql.update_values(session, expected_version, session.next_seq)
        key = (session.tenant, session.session_id)

        def job(conn: sqlite3.Connection) -> None:
            _replace_session(conn, update, session, expected_version)
            conn.execute(sql.DELETE_MESSAGES, key)

        await self._writer.submit(job)

    async def delete_expired(self, now: float, limit: int) -> int:
        params = (rules.to_micros(now), max(limit, 0))
        # Staged sessions are no sessions, so not counted; a failed discard is retried here.
        for key in list(self._leftovers):
            if key not in self._staging:
                with contextlib.suppress(Unavailable):
                    await self._settled(key)

        def job(conn: sqlite3.Connection) -> int:
            doomed = conn.execute(sql.EXPIRED, params).fetchall()
            _delete_sessions(conn, doomed)
            return len(doomed)

        return await self._writer.submit(job)

    async def count_sessions(self, tenant: str) -> int:
        def job(conn: sqlite3.Connection) -> int:
            count: int = conn.execute(sql.COUNT_SESSIONS, (tenant,)).fetchone()[0]
            return count

        return await self._reader.submit(job)

    async def put_request(self, request: RequestRecord) -> None:
        record = rows.request_values(request)

        def job(conn: sqlite3.Connection) -> None:
            _insert_request(conn, record)

        await self._writer.submit(job)

    async def get_request(self, tenant: str, request_id: str) -> RequestRecord | None:
        def job(conn: sqlite3.Connection) -> RequestRecord | None:
            row = conn.execute(sql.SELECT_REQUEST, (tenant, request_id)).fetchone()
            return None if row is None else rows.request_from_row(row)

        return await self._reader.submit(job)

    async def delete_requests_before(self, time: float, limit: int) -> int:
        params = (rules.to_micros(time), max(limit, 0))

        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(sql.DELETE_OLD_REQUESTS, params).rowcount

        return await self._writer.submit(job)

    async def put_reply(self, write: ReplyWrite) -> bool:
        rules.check_reply(write)
        guarded, chunk = sql.put_reply_params(write)

        def job(conn: sqlite3.Connection) -> bool:
            if conn.execute(sql.PUT_REPLY, guarded).rowcount == 0:
                stored = conn.execute(sql.SELECT_REPLY_STATE, guarded[:2]).fetchone()
                return rules.reply_refused(stored, write)
            if chunk is not None:
                conn.execute(sql.UPSERT_REPLY_EVENTS, chunk)
            return True

        return await self._writer.submit(job)

    async def get_reply(self, tenant: str, reply_id: str) -> ReplyRecord | None:
        def job(conn: sqlite3.Connection) -> ReplyRecord | None:
            row = conn.execute(sql.SELECT_REPLY, (tenant, reply_id)).fetchone()
            return None if row is None else rows.reply_from_row(row)

        return await self._reader.submit(job)

    async def list_replies(
        self, tenant: str, session_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[ReplyRecord]:
        if limit <= 0:
            return []
        statement: str = sql.LIST_REPLIES
        params: tuple[str | int, ...] = (tenant, session_id, limit)
        if before is not None:
            cursor = rules.reply_cursor(before)
            statement, params = sql.LIST_REPLIES_BEFORE, (tenant, session_id, *cursor, limit)

        def job(conn: sqlite3.Connection) -> list[ReplyRecord]:
            return [rows.reply_from_row(row) for row in conn.execute(statement, params)]

        return await self._reader.submit(job)

    async def reply_events(self, tenant: str, reply_id: str, after_seq: int) -> list[ReplyEvents]:
        params = (tenant, reply_id, after_seq)

        def job(conn: sqlite3.Connection) -> list[ReplyEvents]:
            found = conn.execute(sql.REPLY_EVENTS_AFTER, params)
            return [rows.reply_events_from_row(row) for row in found]

        return await self._reader.submit(job)

    async def renew_replies(self, owner: str, lease_expire_time: float) -> int:
        params = (rules.to_micros(lease_expire_time), owner)

        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(sql.RENEW_REPLIES, params).rowcount

        return await self._writer.submit(job)

    async def fail_stale_replies(
        self, now: float, error: ReplyError, limit: int, *, expired_by: float | None = None
    ) -> int:
        at = rules.to_micros(now)
        horizon = at if expired_by is None else rules.to_micros(expired_by)
        params = (at, *rows.reply_error_values(error), horizon, max(limit, 0))

        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(sql.FAIL_STALE_REPLIES, params).rowcount

        return await self._writer.submit(job)

    async def delete_replies_before(self, time: float, limit: int) -> int:
        params = (rules.to_micros(time), max(limit, 0))

        def job(conn: sqlite3.Connection) -> int:
            doomed = conn.execute(sql.OLD_REPLIES, params).fetchall()
            conn.executemany(sql.DELETE_REPLY_EVENTS, doomed)
            conn.executemany(sql.DELETE_REPLY, doomed)
            return len(doomed)

        return await self._writer.submit(job)

    async def close(self) -> None:
        """Commits every write queued so far, stops both threads, then releases the file."""
        # Discards of failed staged creates first; what one leaves, the next open removes.
        await asyncio.gather(*self._discards)
        await self._writer.stop()
        owner, self._owner = self._owner, None
        try:
            if owner is not None:
                owner[1].closing()
            await self._reader.stop()  # the last connection: SQLite checkpoints, drops the WAL
            if owner is not None:
                owner[1].closed()
        finally:
            if owner is not None:
                owner[0].release()
