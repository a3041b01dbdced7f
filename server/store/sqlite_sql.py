"""SqliteStore's statements and their parameters.

A create with a long history stores its session row first with state 'STAGING' (no state
a session can be in) and its history in writer jobs of their own, so that other writes
run in between; then it flips the row to its real state. Until then the row and its
messages belong to nobody: every read, count and guarded write here leaves staging rows
out (`VISIBLE`), and their expire_time stays NULL so that no expiry touches them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from server.sessions.model import Message, Session, SessionSettings
from server.store import codec, rules
from server.store.rows import (
    MESSAGE_COLUMNS,
    REQUEST_COLUMNS,
    SESSION_COLUMNS,
    message_values,
    session_values,
)

STAGING = "STAGING"
VISIBLE = f"state <> '{STAGING}'"

INSERT_SESSION = (
    f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (tenant, session_id) DO NOTHING"
)
# The version, seq and life guards ride on the UPDATE itself, so a good turn costs no
# SELECT. The uid guard keeps a write meant for one life of a session off the next one.
UPDATE_SESSION = (
    "UPDATE sessions SET settings=?, create_time=?, update_time=?, expire_time=?,"
    " message_count=?, next_seq=?, usage=?, state=?, pending=?, version=?, uid=?"
    " WHERE tenant=? AND session_id=? AND version=? AND next_seq<=? AND uid=? AND "
    + VISIBLE
    + " AND (expire_time IS NULL OR expire_time > ?)"
)
INSERT_MESSAGE = (
    f"INSERT INTO messages (tenant, session_id, {MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?)"
)
INSERT_REQUEST = (
    f"INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?,?,?,?,?)"
    " ON CONFLICT (tenant, request_id) DO NOTHING"
)
COUNT_SESSIONS = f"SELECT count(*) FROM sessions WHERE tenant=? AND {VISIBLE}"
COUNT_ALIVE = (
    f"SELECT count(*) FROM sessions WHERE tenant=? AND {VISIBLE}"
    " AND (expire_time IS NULL OR expire_time > ?)"
)
SELECT_EXPIRE = "SELECT expire_time FROM sessions WHERE tenant=? AND session_id=?"
SELECT_REQUEST = f"SELECT {REQUEST_COLUMNS} FROM requests WHERE tenant=? AND request_id=?"
DELETE_MESSAGES = "DELETE FROM messages WHERE tenant=? AND session_id=?"
DELETE_SESSION = "DELETE FROM sessions WHERE tenant=? AND session_id=?"
SELECT_SESSION = (
    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant=? AND session_id=? AND {VISIBLE}"
)
SELECT_GUARDS = (
    "SELECT version, next_seq, uid, expire_time FROM sessions"
    f" WHERE tenant=? AND session_id=? AND {VISIBLE}"
)
EXISTS = f"SELECT 1 FROM sessions WHERE tenant=? AND session_id=? AND {VISIBLE}"
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

# A staged create's own row, found by its uid: the flip, and the removal of what a failed,
# cancelled or crashed create left (its messages a slice at a time, then the row).
PUBLISH_STAGED = (
    "UPDATE sessions SET expire_time=?, state=?"
    f" WHERE tenant=? AND session_id=? AND uid=? AND state='{STAGING}'"
)
IS_STAGED = (
    f"SELECT 1 FROM sessions WHERE tenant=? AND session_id=? AND uid=? AND state='{STAGING}'"
)
DELETE_MESSAGE_SLICE = (
    "DELETE FROM messages WHERE tenant=? AND session_id=? AND seq IN ("
    " SELECT seq FROM messages WHERE tenant=? AND session_id=? ORDER BY seq LIMIT ?)"
)
DELETE_STAGED = (
    f"DELETE FROM sessions WHERE tenant=? AND session_id=? AND uid=? AND state='{STAGING}'"
)
# At open, when no create is under way: whatever is staging was left by a crash.
ALL_STAGED = f"SELECT tenant, session_id FROM sessions WHERE state='{STAGING}'"


# The settings JSON of recently written SessionSettings objects, by identity: a turn
# carries its session's settings object unchanged, so its UPDATE need not encode them
# again. The entry holds the object itself, so its id cannot be reused meanwhile.
_SETTINGS_JSON: OrderedDict[int, tuple[SessionSettings, str]] = OrderedDict()
_SETTINGS_JSON_MAX = 1024


def settings_json(settings: SessionSettings) -> str:
    """codec's JSON of `settings` (the sessions.settings column), encoded once per object."""
    hit = _SETTINGS_JSON.get(id(settings))
    if hit is not None and hit[0] is settings:
        _SETTINGS_JSON.move_to_end(id(settings))
        return hit[1]
    text = codec.dumps(codec.settings_to_dict(settings))
    _SETTINGS_JSON[id(settings)] = (settings, text)
    if len(_SETTINGS_JSON) > _SETTINGS_JSON_MAX:
        _SETTINGS_JSON.popitem(last=False)
    return text


def update_values(s: Session, expected_version: int, first_new_seq: int) -> tuple[Any, ...]:
    """Parameters of UPDATE_SESSION: a write at s.update_time needs the stored session
    alive then. The same values as rows.session_values, the settings' JSON memoized."""
    return (
        *session_values(s, settings_json(s.settings)),
        s.tenant,
        s.session_id,
        expected_version,
        first_new_seq,
        s.uid,
        rules.to_micros(s.update_time),
    )


def staging_values(s: Session) -> tuple[Any, ...]:
    """Parameters of INSERT_SESSION for a staged create's row: no expiry, state STAGING."""
    values = list(session_values(s))
    values[3] = None  # expire_time
    values[7] = STAGING  # state
    return (s.tenant, s.session_id, *values)


def publish_values(s: Session) -> tuple[Any, ...]:
    """Parameters of PUBLISH_STAGED."""
    values = session_values(s)
    return (values[3], values[7], s.tenant, s.session_id, s.uid)


def message_rows(session: Session, messages: Sequence[Message]) -> list[tuple[Any, ...]]:
    """Parameters of INSERT_MESSAGE, one tuple per message."""
    key = (session.tenant, session.session_id)
    return [(*key, *message_values(m)) for m in messages]
