"""SqliteStore's statements and their parameters.

A create with a long history stores its session row first with state 'STAGING' (no state
a session can be in) and its history in writer jobs of their own, so that other writes
run in between; then it flips the row to its real state. Until then the row and its
messages belong to nobody: every read, count and guarded write here leaves staging rows
out (`VISIBLE`), and their expire_time stays NULL so that no expiry touches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.sessions.model import Message, Session
from server.sessions.ports import ReplyWrite
from server.store import rules
from server.store.rows import (
    FAILED,
    MESSAGE_COLUMNS,
    REPLY_COLUMNS,
    REPLY_EVENT_COLUMNS,
    REPLY_EVENT_UPDATES,
    REPLY_INLINE_KEPT,
    REPLY_ROW_COLUMNS,
    REPLY_UPDATES,
    REQUEST_COLUMNS,
    RUNNING,
    SESSION_COLUMNS,
    message_values,
    reply_event_values,
    reply_values,
    session_values,
    turn_reply_values,
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
# A turn's reply: the record replaced whatever its state (the turn's outcome is the truth),
# with its events inline when they begin at event 1 (see rows.REPLY_INLINE_COLUMNS).
UPSERT_REPLY = (
    f"INSERT INTO replies ({REPLY_ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    f" ON CONFLICT (tenant, reply_id) DO UPDATE SET {REPLY_UPDATES}, {REPLY_INLINE_KEPT}"
)
# put_reply's: only over a running record whose last_seq (?17) its events continue; a miss
# changes no row. Its events go to reply_events; those beginning at event 1 (?16 is their
# first_seq) take the place of an inline chunk.
_REPLY_VALUES = ",".join(f"?{n}" for n in range(1, 16))
PUT_REPLY = (
    f"INSERT INTO replies ({REPLY_COLUMNS}) VALUES ({_REPLY_VALUES})"
    f" ON CONFLICT (tenant, reply_id) DO UPDATE SET {REPLY_UPDATES},"
    " inline_last_seq = CASE WHEN ?16 = 1 THEN NULL ELSE replies.inline_last_seq END,"
    " inline_payload = CASE WHEN ?16 = 1 THEN NULL ELSE replies.inline_payload END"
    f" WHERE replies.state = '{RUNNING}' AND replies.last_seq = ?17"
)
UPSERT_REPLY_EVENTS = (
    f"INSERT INTO reply_events ({REPLY_EVENT_COLUMNS}) VALUES (?,?,?,?,?)"
    f" ON CONFLICT (tenant, reply_id, first_seq) DO UPDATE SET {REPLY_EVENT_UPDATES}"
)
SELECT_REPLY_STATE = "SELECT state, last_seq FROM replies WHERE tenant=? AND reply_id=?"
SELECT_REPLY = f"SELECT {REPLY_COLUMNS} FROM replies WHERE tenant=? AND reply_id=?"
# Newest first, walking replies_by_session.
LIST_REPLIES = (
    f"SELECT {REPLY_COLUMNS} FROM replies WHERE tenant=? AND session_id=?"
    " ORDER BY create_time DESC, reply_id DESC LIMIT ?"
)
LIST_REPLIES_BEFORE = (
    f"SELECT {REPLY_COLUMNS} FROM replies WHERE tenant=? AND session_id=?"
    " AND (create_time, reply_id) < (?, ?) ORDER BY create_time DESC, reply_id DESC LIMIT ?"
)
# The inline chunk and the reply_events chunks, in order; an inline chunk hides a stored
# chunk with first_seq 1 (count(*) is 1 when there is one).
REPLY_EVENTS_AFTER = (
    "SELECT 1 AS first_seq, inline_last_seq, inline_payload FROM replies"
    " WHERE tenant=?1 AND reply_id=?2 AND inline_last_seq>?3"
    " UNION ALL SELECT first_seq, last_seq, payload FROM reply_events"
    " WHERE tenant=?1 AND reply_id=?2 AND last_seq>?3 AND first_seq > (SELECT count(*)"
    " FROM replies WHERE tenant=?1 AND reply_id=?2 AND inline_last_seq IS NOT NULL)"
    " ORDER BY first_seq"
)
RENEW_REPLIES = f"UPDATE replies SET lease_expire_time=? WHERE owner=? AND state='{RUNNING}'"
# Longest expired first, walking replies_by_lease.
FAIL_STALE_REPLIES = (
    f"UPDATE replies SET state='{FAILED}', update_time=?, owner='', lease_expire_time=NULL,"
    " error_code=?, error_message=?, error_reason=?"
    " WHERE (tenant, reply_id) IN (SELECT tenant, reply_id FROM replies"
    f" WHERE state='{RUNNING}' AND lease_expire_time <= ? ORDER BY lease_expire_time LIMIT ?)"
)
OLD_REPLIES = (
    "SELECT tenant, reply_id FROM replies"
    f" WHERE state <> '{RUNNING}' AND update_time < ? ORDER BY update_time LIMIT ?"
)
DELETE_REPLY = "DELETE FROM replies WHERE tenant=? AND reply_id=?"
DELETE_REPLY_EVENTS = "DELETE FROM reply_events WHERE tenant=? AND reply_id=?"
# A session's replies with their events (the events first: they are found through them).
DELETE_SESSION_REPLY_EVENTS = (
    "DELETE FROM reply_events WHERE (tenant, reply_id) IN"
    " (SELECT tenant, reply_id FROM replies WHERE tenant=? AND session_id=?)"
)
DELETE_SESSION_REPLIES = "DELETE FROM replies WHERE tenant=? AND session_id=?"

# Labels match through json_each, whose `key` column is the plain key string, so any key
# works (dots, quotes, '$'); a json_extract path cannot address a key containing '"'.
# (listing.session_page fills in the placeholders.)
LABEL_MATCHES = (
    "EXISTS (SELECT 1 FROM json_each(settings, '$.labels') WHERE key = {key} AND value = {value})"
)

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


def update_values(s: Session, expected_version: int, first_new_seq: int) -> tuple[Any, ...]:
    """Parameters of UPDATE_SESSION: a write at s.update_time needs the stored session
    alive then."""
    return (
        *session_values(s),
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


def reply_rows(write: ReplyWrite) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """A turn's reply: parameters of UPSERT_REPLY and of UPSERT_REPLY_EVENTS (None when
    its events are inline, or it has none)."""
    row, events = turn_reply_values(write)
    if events is None:
        return row, None
    return row, (write.record.tenant, write.record.reply_id, *events)


def put_reply_params(write: ReplyWrite) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """put_reply's parameters of PUT_REPLY and of UPSERT_REPLY_EVENTS (None without
    events)."""
    record, events = write.record, write.events
    guard = rules.stored_last_seq(write)
    if events is None:
        return (*reply_values(record), None, guard), None
    chunk = (record.tenant, record.reply_id, *reply_event_values(write))
    return (*reply_values(record), events.first_seq, guard), chunk
