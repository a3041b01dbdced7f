"""SqliteStore's statements and their parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.sessions.model import Message, Session
from server.store import rules
from server.store.rows import (
    MESSAGE_COLUMNS,
    REQUEST_COLUMNS,
    SESSION_COLUMNS,
    message_values,
    session_values,
)

INSERT_SESSION = (
    f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (tenant, session_id) DO NOTHING"
)
# The version, seq and life guards ride on the UPDATE itself, so a good turn costs no
# SELECT. The uid guard keeps a write meant for one life of a session off the next one.
UPDATE_SESSION = (
    "UPDATE sessions SET settings=?, create_time=?, update_time=?, expire_time=?,"
    " message_count=?, next_seq=?, usage=?, state=?, pending=?, version=?, uid=?"
    " WHERE tenant=? AND session_id=? AND version=? AND next_seq<=? AND uid=?"
    " AND (expire_time IS NULL OR expire_time > ?)"
)
INSERT_MESSAGE = (
    f"INSERT INTO messages (tenant, session_id, {MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?)"
)
INSERT_REQUEST = (
    f"INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?,?,?,?,?)"
    " ON CONFLICT (tenant, request_id) DO NOTHING"
)
COUNT_SESSIONS = "SELECT count(*) FROM sessions WHERE tenant=?"
COUNT_ALIVE = (
    "SELECT count(*) FROM sessions WHERE tenant=? AND (expire_time IS NULL OR expire_time > ?)"
)
SELECT_EXPIRE = "SELECT expire_time FROM sessions WHERE tenant=? AND session_id=?"
SELECT_REQUEST = f"SELECT {REQUEST_COLUMNS} FROM requests WHERE tenant=? AND request_id=?"
DELETE_MESSAGES = "DELETE FROM messages WHERE tenant=? AND session_id=?"
DELETE_SESSION = "DELETE FROM sessions WHERE tenant=? AND session_id=?"
SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant=? AND session_id=?"
SELECT_GUARDS = (
    "SELECT version, next_seq, uid, expire_time FROM sessions WHERE tenant=? AND session_id=?"
)
EXISTS = "SELECT 1 FROM sessions WHERE tenant=? AND session_id=?"
ALL_MESSAGES = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant=? AND session_id=? ORDER BY seq"
)
LAST_MESSAGES = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant=? AND session_id=?"
    " ORDER BY seq DESC LIMIT ?"
)
MESSAGES_AFTER = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant=? AND session_id=? AND seq>?"
    " ORDER BY seq LIMIT ?"
)
# Soonest expired first, walking sessions_by_expire.
EXPIRED = (
    "SELECT tenant, session_id FROM sessions WHERE expire_time <= ? ORDER BY expire_time LIMIT ?"
)
DELETE_OLD_REQUESTS = (
    "DELETE FROM requests WHERE (tenant, request_id) IN ("
    " SELECT tenant, request_id FROM requests WHERE create_time < ?"
    " ORDER BY create_time LIMIT ?)"
)
# Labels match through json_each, whose `key` column is the plain key string, so any key
# works (dots, quotes, '$'); a json_extract path cannot address a key containing '"'.
LABEL_MATCHES = "EXISTS (SELECT 1 FROM json_each(settings, '$.labels') WHERE key = ? AND value = ?)"
ALIVE = "(expire_time IS NULL OR expire_time > ?)"


def update_values(s: Session, expected_version: int, first_new_seq: int) -> tuple[Any, ...]:
    """Parameters of UPDATE_SESSION: a write at s.update_time needs the stored session
    alive then."""
    key = (s.tenant, s.session_id)
    alive_at = rules.to_micros(s.update_time)
    return (*session_values(s), *key, expected_version, first_new_seq, s.uid, alive_at)


def message_rows(session: Session, messages: Sequence[Message]) -> list[tuple[Any, ...]]:
    """Parameters of INSERT_MESSAGE, one tuple per message."""
    key = (session.tenant, session.session_id)
    return [(*key, *message_values(m)) for m in messages]
