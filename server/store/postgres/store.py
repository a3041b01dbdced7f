"""PostgresStore: sessions in PostgreSQL through an asyncpg pool, for many replicas."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from server.sessions.model import Message, Session
from server.sessions.ports import (
    ReplyError,
    ReplyEvents,
    ReplyRecord,
    ReplyWrite,
    RequestRecord,
    SessionQuery,
)
from server.store import rows, rules
from server.store.listing import session_page
from server.store.postgres import sql
from server.store.postgres.driver import Connection, Pool, translated
from server.store.postgres.pool import open_pool

# Messages per INSERT of a long history (an import or a fork).
INSERT_BATCH = 1000


def _count(status: str) -> int:
    """The row count of a command status such as 'DELETE 3'."""
    return int(status.rpartition(" ")[2])


class PostgresStore:
    """SessionStore on PostgreSQL; any number of processes may share one database.

    Every write is one transaction, so a write another replica races either wins whole
    or raises Conflict having written nothing. Times are BIGINT microseconds, as in
    SQLite. Text cannot hold U+0000 in PostgreSQL: such labels are refused (ValueError);
    everything else is stored as escaped JSON and keeps it.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._closed = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        connect_timeout: float = 10.0,
    ) -> PostgresStore:
        """Connects, migrates, and returns the store.

        `schema` confines chatd's tables to that schema (created if missing), so one
        database can hold several deployments; by default they go to the first schema
        on the server's search_path (usually public). Raises Unavailable if the server
        cannot be reached, SchemaTooNew if a newer chatd migrated the database.
        """
        pool = await open_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            schema=schema,
            connect_timeout=connect_timeout,
        )
        return cls(pool)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        if self._closed:
            raise RuntimeError("the store is closed")
        with translated():
            async with self._pool.acquire() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """A connection inside a transaction, rolled back if the block raises."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    @staticmethod
    async def _insert_request(conn: Connection, request: RequestRecord | None) -> None:
        # First in every write that takes one: a retry of a write that did apply must be
        # told DuplicateRequest, not Conflict or AlreadyExists. A concurrent transaction
        # with the same id makes this wait for it, then count as a duplicate.
        if request is None:
            return
        if await conn.fetchval(sql.INSERT_REQUEST, *rows.request_values(request)) is None:
            raise rules.duplicate_request(request.request_id)

    @staticmethod
    async def _insert_messages(
        conn: Connection, session: Session, messages: Sequence[Message]
    ) -> None:
        # In batches, in the caller's transaction: encoding a batch takes a few ms of the
        # event loop, and each round trip gives it back to other calls.
        for start in range(0, len(messages), INSERT_BATCH):
            batch = messages[start : start + INSERT_BATCH]
            await conn.execute(sql.INSERT_MESSAGES, *sql.message_params(session, batch))

    @classmethod
    async def _replace_session(
        cls, conn: Connection, session: Session, expected_version: int, first_new_seq: int
    ) -> None:
        """Runs the guarded UPDATE, raising NotFound, Conflict or seq reuse on a miss."""
        params = sql.update_params(session, expected_version, first_new_seq)
        if await conn.fetchval(sql.UPDATE_SESSION, *params) is None:
            raise await cls._guard_failure(conn, session, expected_version)

    @staticmethod
    async def _guard_failure(
        conn: Connection, session: Session, expected_version: int
    ) -> Exception:
        """Why a guarded write of `session` matched no row (rules.guard_failure)."""
        guards = await conn.fetchrow(sql.SELECT_GUARDS, session.tenant, session.session_id)
        stored = None if guards is None else (guards[0], guards[1], guards[2], guards[3])
        return rules.guard_failure(session, expected_version, stored)

    @staticmethod
    async def _replace_expired(conn: Connection, session: Session, now: float | None) -> None:
        """Deletes the session stored under the new one's id if it expired by `now`."""
        if now is None:
            return
        key = (session.tenant, session.session_id)
        expire = await conn.fetchval(sql.LOCK_EXPIRE, *key)
        if expire is not None and expire <= rules.to_micros(now):
            await conn.execute(sql.DELETE_MESSAGES, *key)
            await conn.execute(sql.DELETE_SESSION_REPLIES, *key)
            await conn.execute(sql.DELETE_SESSION, *key)

    @staticmethod
    async def _check_quota(conn: Connection, tenant: str, now: float | None, limit: int) -> None:
        """After a create's insert, holding the tenant's lock: at most `limit` sessions."""
        if now is None:
            count = await conn.fetchval(sql.COUNT_SESSIONS, tenant)
        else:
            count = await conn.fetchval(sql.COUNT_ALIVE, tenant, rules.to_micros(now))
        if count > limit:
            raise rules.quota_exceeded(limit)

    @staticmethod
    async def _require(conn: Connection, tenant: str, session_id: str) -> None:
        if await conn.fetchval(sql.EXISTS, tenant, session_id) is None:
            raise rules.not_found(session_id)

    # ------------------------------------------------------------------ SessionStore

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
        params = sql.session_params(session)
        async with self._transaction() as conn:
            await self._insert_request(conn, request)
            if max_sessions > 0:
                await conn.execute(sql.LOCK_TENANT, session.tenant)
            await self._replace_expired(conn, session, now)
            if await conn.fetchval(sql.INSERT_SESSION, *params) is None:
                raise rules.already_exists(session.session_id)
            if max_sessions > 0:
                await self._check_quota(conn, session.tenant, now, max_sessions)
            await self._insert_messages(conn, session, messages)

    async def get_session(self, tenant: str, session_id: str) -> Session:
        async with self._connection() as conn:
            row = await conn.fetchrow(sql.SELECT_SESSION, tenant, session_id)
        if row is None:
            raise rules.not_found(session_id)
        return rows.session_from_row(row)

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        if query.limit <= 0:
            return []
        labels = query.labels.items()
        if any("\x00" in k or "\x00" in v for k, v in labels):
            return []  # no stored label can hold NUL, so none matches
        statement, params = session_page(
            tenant, query, placeholder=lambda n: f"${n}", label_matches=sql.LABEL_MATCHES
        )
        async with self._connection() as conn:
            found = await conn.fetch(statement, *params)
        return [rows.session_from_row(row) for row in found]

    async def delete_session(self, tenant: str, session_id: str, uid: str | None = None) -> None:
        async with self._transaction() as conn:
            stored = await conn.fetchval(sql.LOCK_SESSION, tenant, session_id)
            if stored is None or (uid is not None and stored != uid):
                raise rules.not_found(session_id)
            await conn.execute(sql.DELETE_MESSAGES, tenant, session_id)
            await conn.execute(sql.DELETE_SESSION_REPLIES, tenant, session_id)
            await conn.execute(sql.DELETE_SESSION, tenant, session_id)

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        async with self._connection() as conn:
            if limit is None:
                found = await conn.fetch(sql.ALL_MESSAGES, tenant, session_id)
            elif limit > 0:
                # Newest first through the primary key, so the cost follows `limit`.
                found = await conn.fetch(sql.LAST_MESSAGES, tenant, session_id, limit)
                found.reverse()
            else:
                found = []
            if not found:  # messages imply their session (foreign key); none proves nothing
                await self._require(conn, tenant, session_id)
        return [rows.message_from_row(row) for row in found]

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        async with self._connection() as conn:
            params = (tenant, session_id, after_seq, max(limit, 0))
            found = await conn.fetch(sql.MESSAGES_AFTER, *params)
            if not found:
                await self._require(conn, tenant, session_id)
        return [rows.message_from_row(row) for row in found]

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
        if len(messages) > INSERT_BATCH:
            async with self._transaction() as conn:
                await self._insert_request(conn, request)
                await self._replace_session(conn, session, expected_version, first)
                await self._insert_messages(conn, session, messages)
                if reply is not None:
                    statement, params = sql.write_reply(reply)
                    await conn.execute(statement, *params)
            return
        # A turn's few messages: one statement, one round trip (see sql.COMMIT_TURN).
        record = None if request is None else rows.request_values(request)
        statement, params = sql.commit_turn(
            session, messages, expected_version, first, record, reply
        )
        async with self._connection() as conn:
            if await conn.fetchval(statement, *params):
                return
            # Matched nothing, so wrote nothing. A retry of a write that did apply is
            # told DuplicateRequest, as when the record is inserted first.
            if request is not None and await conn.fetchval(
                sql.SELECT_REQUEST_TAKEN, request.tenant, request.request_id
            ):
                raise rules.duplicate_request(request.request_id)
            raise await self._guard_failure(conn, session, expected_version)

    async def clear_history(self, session: Session, expected_version: int) -> None:
        rules.check_version(session, expected_version)
        async with self._transaction() as conn:
            # The UPDATE locks the row first, so no commit can add messages meanwhile.
            await self._replace_session(conn, session, expected_version, session.next_seq)
            await conn.execute(sql.DELETE_MESSAGES, session.tenant, session.session_id)

    async def delete_expired(self, now: float, limit: int) -> int:
        if limit <= 0:
            return 0
        async with self._transaction() as conn:
            doomed = await conn.fetch(sql.LOCK_EXPIRED, rules.to_micros(now), limit)
            if not doomed:
                return 0
            keys = ([row[0] for row in doomed], [row[1] for row in doomed])
            await conn.execute(sql.DELETE_LOCKED_MESSAGES, *keys)
            await conn.execute(sql.DELETE_LOCKED_REPLIES, *keys)
            return _count(await conn.execute(sql.DELETE_LOCKED_SESSIONS, *keys))

    async def count_sessions(self, tenant: str) -> int:
        async with self._connection() as conn:
            count: int = await conn.fetchval(sql.COUNT_SESSIONS, tenant)
        return count

    async def put_request(self, request: RequestRecord) -> None:
        async with self._transaction() as conn:
            await self._insert_request(conn, request)

    async def get_request(self, tenant: str, request_id: str) -> RequestRecord | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(sql.SELECT_REQUEST, tenant, request_id)
        return None if row is None else rows.request_from_row(row)

    async def delete_requests_before(self, time: float, limit: int) -> int:
        if limit <= 0:
            return 0
        async with self._connection() as conn:
            status = await conn.execute(sql.DELETE_OLD_REQUESTS, rules.to_micros(time), limit)
        return _count(status)

    async def put_reply(self, write: ReplyWrite) -> bool:
        rules.check_reply(write)
        params = sql.put_reply_params(write)
        key = (write.record.tenant, write.record.reply_id)
        async with self._connection() as conn:
            if await conn.fetchval(sql.PUT_REPLY, *params):
                return True
            # Refused, so wrote nothing: the reply ended, or the events do not continue.
            stored = await conn.fetchrow(sql.SELECT_REPLY_STATE, *key)
        return rules.reply_refused(None if stored is None else (stored[0], stored[1]), write)

    async def get_reply(self, tenant: str, reply_id: str) -> ReplyRecord | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(sql.SELECT_REPLY, tenant, reply_id)
        return None if row is None else rows.reply_from_row(row)

    async def list_replies(
        self, tenant: str, session_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[ReplyRecord]:
        if limit <= 0:
            return []
        async with self._connection() as conn:
            if before is None:
                found = await conn.fetch(sql.LIST_REPLIES, tenant, session_id, limit)
            else:
                cursor = rules.reply_cursor(before)
                found = await conn.fetch(
                    sql.LIST_REPLIES_BEFORE, tenant, session_id, *cursor, limit
                )
        return [rows.reply_from_row(row) for row in found]

    async def reply_events(self, tenant: str, reply_id: str, after_seq: int) -> list[ReplyEvents]:
        async with self._connection() as conn:
            found = await conn.fetch(sql.REPLY_EVENTS_AFTER, tenant, reply_id, after_seq)
        return [rows.reply_events_from_row(row) for row in found]

    async def renew_replies(self, owner: str, lease_expire_time: float) -> int:
        lease = rules.to_micros(lease_expire_time)
        async with self._connection() as conn:
            return _count(await conn.execute(sql.RENEW_REPLIES, lease, owner))

    async def fail_stale_replies(
        self, now: float, error: ReplyError, limit: int, *, expired_by: float | None = None
    ) -> int:
        if limit <= 0:
            return 0
        horizon = rules.to_micros(now if expired_by is None else expired_by)
        params = (rules.to_micros(now), *rows.reply_error_values(error), limit, horizon)
        async with self._connection() as conn:
            return _count(await conn.execute(sql.FAIL_STALE_REPLIES, *params))

    async def delete_replies_before(self, time: float, limit: int) -> int:
        if limit <= 0:
            return 0
        async with self._connection() as conn:
            count: int = await conn.fetchval(sql.DELETE_OLD_REPLIES, rules.to_micros(time), limit)
        return count

    async def close(self) -> None:
        """Waits for calls in flight to release their connections, then closes them."""
        if not self._closed:
            self._closed = True
            await self._pool.close()
