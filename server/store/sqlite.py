"""SqliteStore: sessions in one SQLite file (WAL), group-committed by a writer thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.sessions.model import Message, Session
from server.sessions.ports import SessionOrder, SessionQuery
from server.store import codec, rules
from server.store.sqlite_setup import SYNCHRONOUS_MODES, connect
from server.store.worker import ConnectionThread

_SESSION_COLUMNS = (
    "tenant, session_id, settings, create_time, update_time, expire_time,"
    " message_count, next_seq, usage, state, pending, version"
)
_MESSAGE_COLUMNS = "seq, turn_id, role, create_time, body"

_INSERT_SESSION = (
    f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (tenant, session_id) DO NOTHING"
)
# The version and seq guards ride on the UPDATE itself, so a good turn costs no SELECT.
_UPDATE_SESSION = (
    "UPDATE sessions SET settings=?, create_time=?, update_time=?, expire_time=?,"
    " message_count=?, next_seq=?, usage=?, state=?, pending=?, version=?"
    " WHERE tenant=? AND session_id=? AND version=? AND next_seq<=?"
)
_INSERT_MESSAGE = (
    f"INSERT INTO messages (tenant, session_id, {_MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?)"
)
_DELETE_MESSAGES = "DELETE FROM messages WHERE tenant=? AND session_id=?"
_DELETE_SESSION = "DELETE FROM sessions WHERE tenant=? AND session_id=?"
_SELECT_SESSION = f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant=? AND session_id=?"
_SELECT_GUARDS = "SELECT version, next_seq FROM sessions WHERE tenant=? AND session_id=?"
_EXISTS = "SELECT 1 FROM sessions WHERE tenant=? AND session_id=?"
_ALL_MESSAGES = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE tenant=? AND session_id=? ORDER BY seq"
)
_LAST_MESSAGES = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE tenant=? AND session_id=?"
    " ORDER BY seq DESC LIMIT ?"
)
_MESSAGES_AFTER = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE tenant=? AND session_id=? AND seq>?"
    " ORDER BY seq LIMIT ?"
)
# Labels match through json_each, whose `key` column is the plain key string, so any key
# works (dots, quotes, '$'); a json_extract path cannot address a key containing '"'.
_LABEL_MATCHES = (
    "EXISTS (SELECT 1 FROM json_each(settings, '$.labels') WHERE key = ? AND value = ?)"
)


def _session_values(s: Session) -> tuple[Any, ...]:
    expire = s.settings.expire_time
    return (
        codec.dumps(codec.settings_to_dict(s.settings)),
        rules.to_micros(s.create_time),
        rules.to_micros(s.update_time),
        None if expire is None else rules.to_micros(expire),
        s.message_count,
        s.next_seq,
        codec.dumps(codec.usage_to_dict(s.usage)),
        s.state.value,
        codec.pending_to_json(s.pending),
        s.version,
    )


def _session_from_row(row: Any) -> Session:
    tenant, session_id, settings, created, updated, _, count, next_seq = row[:8]
    usage, _state, pending, version = row[8:]  # state is derived from pending
    return Session(
        tenant=tenant,
        session_id=session_id,
        settings=codec.settings_from_dict(codec.loads(settings)),
        create_time=rules.from_micros(created),
        update_time=rules.from_micros(updated),
        message_count=count,
        next_seq=next_seq,
        usage=codec.usage_from_dict(codec.loads(usage)),
        pending=codec.pending_from_json(pending),
        version=version,
    )


def _message_from_row(row: Any) -> Message:
    seq, turn_id, role, created, body = row
    return codec.message_from_body(
        codec.loads(body),
        role=role,
        seq=seq,
        create_time=rules.from_micros(created),
        turn_id=turn_id,
    )


def _require(conn: sqlite3.Connection, tenant: str, session_id: str) -> None:
    if conn.execute(_EXISTS, (tenant, session_id)).fetchone() is None:
        raise rules.not_found(session_id)


class SqliteStore:
    """SessionStore on stdlib sqlite3: one writer thread, one reader thread.

    Bound to the event loop that opened it. A write resolves after its COMMIT returned.
    """

    def __init__(self, writer: ConnectionThread, reader: ConnectionThread) -> None:
        self._writer = writer
        self._reader = reader

    @classmethod
    async def open(cls, path: str, synchronous: str = "FULL") -> SqliteStore:
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError(f"SqliteStore needs a file path, not {path!r}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = ConnectionThread(
            "chatd-sqlite-writer", lambda: connect(path, mode, writer=True), writes=True
        )
        await writer.start()  # migrates, so the reader finds the tables
        reader = ConnectionThread(
            "chatd-sqlite-reader", lambda: connect(path, mode, writer=False), writes=False
        )
        try:
            await reader.start()
        except BaseException:
            await writer.stop()
            raise
        return cls(writer, reader)

    async def create_session(self, session: Session) -> None:
        values = (session.tenant, session.session_id, *_session_values(session))

        def job(conn: sqlite3.Connection) -> None:
            if conn.execute(_INSERT_SESSION, values).rowcount == 0:
                raise rules.already_exists(session.session_id)

        await self._writer.submit(job)

    async def get_session(self, tenant: str, session_id: str) -> Session:
        def job(conn: sqlite3.Connection) -> Session:
            row = conn.execute(_SELECT_SESSION, (tenant, session_id)).fetchone()
            if row is None:
                raise rules.not_found(session_id)
            return _session_from_row(row)

        return await self._reader.submit(job)

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        if query.limit <= 0:
            return []
        # Column names come from this fixed mapping; every value is a bound parameter.
        column = "create_time" if query.order is SessionOrder.CREATE_TIME else "update_time"
        op, direction = ("<", "DESC") if query.descending else (">", "ASC")
        where: list[str] = ["tenant = ?"]
        params: list[str | int] = [tenant]
        if (after := query.after) is not None:
            where.append(f"({column}, session_id) {op} (?, ?)")
            params += [rules.to_micros(after.time), after.session_id]
        for key, value in query.labels.items():
            where.append(_LABEL_MATCHES)
            params += [key, value]
        sql = (
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)}"
            f" ORDER BY {column} {direction}, session_id {direction} LIMIT ?"
        )
        params.append(query.limit)

        def job(conn: sqlite3.Connection) -> list[Session]:
            return [_session_from_row(row) for row in conn.execute(sql, params)]

        return await self._reader.submit(job)

    async def delete_session(self, tenant: str, session_id: str) -> None:
        key = (tenant, session_id)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(_DELETE_MESSAGES, key)
            if conn.execute(_DELETE_SESSION, key).rowcount == 0:
                raise rules.not_found(session_id)

        await self._writer.submit(job)

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        def job(conn: sqlite3.Connection) -> list[Message]:
            if limit is None:
                rows = conn.execute(_ALL_MESSAGES, (tenant, session_id)).fetchall()
            elif limit > 0:
                # Newest first through the primary key, so the cost follows `limit`.
                rows = conn.execute(_LAST_MESSAGES, (tenant, session_id, limit)).fetchall()
                rows.reverse()
            else:
                rows = []
            if not rows:  # messages imply their session (foreign key); none proves nothing
                _require(conn, tenant, session_id)
            return [_message_from_row(row) for row in rows]

        return await self._reader.submit(job)

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        def job(conn: sqlite3.Connection) -> list[Message]:
            params = (tenant, session_id, after_seq, max(limit, 0))
            rows = conn.execute(_MESSAGES_AFTER, params).fetchall()
            if not rows:
                _require(conn, tenant, session_id)
            return [_message_from_row(row) for row in rows]

        return await self._reader.submit(job)

    async def commit_turn(
        self, session: Session, messages: Sequence[Message], expected_version: int
    ) -> None:
        rules.check_turn(session, messages, expected_version)
        tenant, session_id = session.tenant, session.session_id
        # Encoded here rather than on the writer thread: the writer holds the database
        # write lock, so its time is the scarcer one.
        update = (
            *_session_values(session),
            tenant,
            session_id,
            expected_version,
            rules.first_new_seq(session, messages),
        )
        rows = [
            (
                tenant,
                session_id,
                m.seq,
                m.turn_id,
                m.role.value,
                rules.to_micros(m.create_time),
                codec.dumps(codec.message_body_to_dict(m)),
            )
            for m in messages
        ]

        def job(conn: sqlite3.Connection) -> None:
            if conn.execute(_UPDATE_SESSION, update).rowcount == 0:
                guards = conn.execute(_SELECT_GUARDS, (tenant, session_id)).fetchone()
                if guards is None:
                    raise rules.not_found(session_id)
                if guards[0] != expected_version:
                    raise rules.conflict(session_id, guards[0], expected_version)
                raise rules.seq_reused(guards[1])
            conn.executemany(_INSERT_MESSAGE, rows)

        await self._writer.submit(job)

    async def close(self) -> None:
        """Commits every write queued so far, then stops both threads."""
        await self._writer.stop()
        await self._reader.stop()
