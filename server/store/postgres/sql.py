"""PostgresStore's statements and their parameters; rows convert through rows.py."""

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
    session_state_values,
    settings_json,
    turn_reply_values,
)

# $1, $2 are (tenant, session_id) everywhere; labels ($4) is a jsonb copy of the
# settings' labels, for filtering.
INSERT_SESSION = (
    "INSERT INTO sessions (tenant, session_id, settings, labels, create_time, update_time,"
    " expire_time, message_count, next_seq, usage, state, pending, version, uid)"
    " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    " ON CONFLICT (tenant, session_id) DO NOTHING RETURNING 1"
)
# The version check rides on the UPDATE: its row lock makes a racing writer wait, then
# re-check `version` against the row the winner committed, and match nothing. The uid
# check keeps a write meant for one life of a session off the next one.
UPDATE_SESSION = (
    "UPDATE sessions SET settings = $3, labels = $4::jsonb, create_time = $5,"
    " update_time = $6, expire_time = $7, message_count = $8, next_seq = $9, usage = $10,"
    " state = $11, pending = $12, version = $13"
    " WHERE tenant = $1 AND session_id = $2 AND uid = $14 AND version = $15"
    " AND next_seq <= $16 AND (expire_time IS NULL OR expire_time > $17) RETURNING 1"
)
# A whole turn in one statement, so one round trip and no BEGIN/COMMIT of its own: the
# guarded UPDATE ($1..$17 as in UPDATE_SESSION), the messages ($18..$22, one array per
# column, as in INSERT_MESSAGES) inserted only if it matched, and it tells whether it did.
# A statement is atomic, so an error in any part (a message seq taken) undoes all of it.
_TURN = (
    "WITH upd AS (" + UPDATE_SESSION + "),"
    f" ins AS (INSERT INTO messages (tenant, session_id, {MESSAGE_COLUMNS})"
    " SELECT $1, $2, m.* FROM unnest($18::bigint[], $19::text[], $20::text[], $21::bigint[],"
    " $22::text[]) AS m WHERE EXISTS (SELECT 1 FROM upd))"
)
_DONE = " SELECT count(*) FROM upd"
COMMIT_TURN = _TURN + _DONE
# The request record ($23..$27), inserted only with the turn and without ON CONFLICT: a
# taken id is a unique violation, which undoes the whole statement.
_REQUEST = (
    f", req AS (INSERT INTO requests ({REQUEST_COLUMNS})"
    " SELECT $23::text, $24::text, $25::text, $26::text, $27::bigint"
    " WHERE EXISTS (SELECT 1 FROM upd))"
)
COMMIT_TURN_WITH_REQUEST = _TURN + _REQUEST + _DONE

# A reply's parameters: its REPLY_COLUMNS values (rows.reply_values); for a turn's reply
# then its inline chunk's last_seq and payload (rows.turn_reply_values), and its events'
# first_seq, last_seq and payload when they go to reply_events; for put_reply its events'
# (rows.reply_event_values: NULLs without events).
_REPLY_TYPES = (
    *("text",) * 5,
    "boolean",
    "text",
    *("bigint",) * 3,
    "text",
    "bigint",
    *("text",) * 3,
)
_ROW_TYPES = (*_REPLY_TYPES, "bigint", "bytea")
_EVENT_TYPES = ("bigint", "bigint", "bytea")
_PUT_PARAMS = len(_REPLY_TYPES) + len(_EVENT_TYPES)


def _typed(first: int, types: Sequence[str]) -> str:
    return ", ".join(f"${first + i}::{t}" for i, t in enumerate(types))


def _reply_events(key: int, events: int, only_if: str) -> str:
    """The CTE `rev` storing events ($events.. : first_seq, last_seq, payload) of the
    reply whose key is ($key, $key + 1), if there are any and `only_if` holds."""
    return (
        f"rev AS (INSERT INTO reply_events ({REPLY_EVENT_COLUMNS})"
        f" SELECT ${key}::text, ${key + 1}::text, {_typed(events, _EVENT_TYPES)}"
        f" WHERE ${events + 2}::bytea IS NOT NULL AND {only_if}"
        f" ON CONFLICT (tenant, reply_id, first_seq) DO UPDATE SET {REPLY_EVENT_UPDATES})"
    )


def _turn_reply(first: int, only_if: str, chunk: bool) -> str:
    """The CTE `rep` writing the turn's reply whose parameters start at `first` whatever
    its stored state, if `only_if` holds (a turn's reply: its outcome is the truth); with
    `chunk`, `rev` storing its events in reply_events too."""
    ctes = (
        f"rep AS (INSERT INTO replies ({REPLY_ROW_COLUMNS})"
        f" SELECT {_typed(first, _ROW_TYPES)} WHERE {only_if}"
        f" ON CONFLICT (tenant, reply_id) DO UPDATE SET {REPLY_UPDATES}, {REPLY_INLINE_KEPT})"
    )
    if chunk:
        ctes += ", " + _reply_events(first, first + len(_ROW_TYPES), only_if)
    return ctes


_WITH_TURN = "EXISTS (SELECT 1 FROM upd)"
# The turn's statement by (with a request, the reply: none, its row alone, or its row and
# a chunk of events): the reply's parameters follow the request's, or the turn's when
# there is none.
_COMMIT_TURNS: dict[tuple[bool, bool | None], str] = {
    (False, None): COMMIT_TURN,
    (True, None): COMMIT_TURN_WITH_REQUEST,
    **{
        (False, chunk): _TURN + ", " + _turn_reply(23, _WITH_TURN, chunk) + _DONE
        for chunk in (False, True)
    },
    **{
        (True, chunk): _TURN + _REQUEST + ", " + _turn_reply(28, _WITH_TURN, chunk) + _DONE
        for chunk in (False, True)
    },
}
# A long turn's reply, in its transaction after the guarded UPDATE, by `chunk`.
WRITE_REPLY = {
    chunk: "WITH " + _turn_reply(1, "true", chunk) + " SELECT 1" for chunk in (False, True)
}
# put_reply in one statement: the upsert changes a stored record only while it is running
# and its last_seq is $19 (what the events continue), and the events go in only with it;
# events that begin at event 1 ($16 is their first_seq) take the place of an inline chunk.
PUT_REPLY = (
    f"WITH rep AS (INSERT INTO replies ({REPLY_COLUMNS}) VALUES ({_typed(1, _REPLY_TYPES)})"
    f" ON CONFLICT (tenant, reply_id) DO UPDATE SET {REPLY_UPDATES},"
    " inline_last_seq = CASE WHEN $16::bigint = 1 THEN NULL ELSE replies.inline_last_seq END,"
    " inline_payload = CASE WHEN $16::bigint = 1 THEN NULL ELSE replies.inline_payload END"
    f" WHERE replies.state = '{RUNNING}' AND replies.last_seq = ${_PUT_PARAMS + 1}"
    " RETURNING 1), "
    + _reply_events(1, len(_REPLY_TYPES) + 1, "EXISTS (SELECT 1 FROM rep)")
    + " SELECT count(*) FROM rep"
)
SELECT_REPLY_STATE = "SELECT state, last_seq FROM replies WHERE tenant = $1 AND reply_id = $2"
SELECT_REPLY = f"SELECT {REPLY_COLUMNS} FROM replies WHERE tenant = $1 AND reply_id = $2"
# Newest first, walking replies_by_session.
LIST_REPLIES = (
    f"SELECT {REPLY_COLUMNS} FROM replies WHERE tenant = $1 AND session_id = $2"
    " ORDER BY create_time DESC, reply_id DESC LIMIT $3"
)
LIST_REPLIES_BEFORE = (
    f"SELECT {REPLY_COLUMNS} FROM replies WHERE tenant = $1 AND session_id = $2"
    " AND (create_time, reply_id) < ($3, $4) ORDER BY create_time DESC, reply_id DESC LIMIT $5"
)
# The inline chunk and the reply_events chunks, in order; an inline chunk hides a stored
# chunk with first_seq 1 (count(*) is 1 when there is one).
REPLY_EVENTS_AFTER = (
    "SELECT 1::bigint AS first_seq, inline_last_seq, inline_payload FROM replies"
    " WHERE tenant = $1 AND reply_id = $2 AND inline_last_seq > $3"
    " UNION ALL SELECT first_seq, last_seq, payload FROM reply_events"
    " WHERE tenant = $1 AND reply_id = $2 AND last_seq > $3 AND first_seq > (SELECT count(*)"
    " FROM replies WHERE tenant = $1 AND reply_id = $2 AND inline_last_seq IS NOT NULL)"
    " ORDER BY first_seq"
)
RENEW_REPLIES = (
    f"UPDATE replies SET lease_expire_time = $1 WHERE owner = $2 AND state = '{RUNNING}'"
)
# Longest expired first, walking replies_by_lease; SKIP LOCKED as in LOCK_EXPIRED (a
# reply whose turn is committing is left for the next sweep).
FAIL_STALE_REPLIES = (
    f"UPDATE replies SET state = '{FAILED}', update_time = $1, owner = '',"
    " lease_expire_time = NULL, error_code = $2, error_message = $3, error_reason = $4"
    " WHERE (tenant, reply_id) IN (SELECT tenant, reply_id FROM replies"
    f" WHERE state = '{RUNNING}' AND lease_expire_time <= $6"
    " ORDER BY lease_expire_time LIMIT $5 FOR UPDATE SKIP LOCKED)"
)
DELETE_OLD_REPLIES = (
    "WITH gone AS (DELETE FROM replies WHERE (tenant, reply_id) IN ("
    f" SELECT tenant, reply_id FROM replies WHERE state <> '{RUNNING}' AND update_time < $1"
    " ORDER BY update_time LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING tenant, reply_id),"
    " rev AS (DELETE FROM reply_events"
    " WHERE (tenant, reply_id) IN (SELECT tenant, reply_id FROM gone))"
    " SELECT count(*) FROM gone"
)
# A session's replies and their events, one round trip.
DELETE_SESSION_REPLIES = (
    "WITH gone AS (DELETE FROM replies WHERE tenant = $1 AND session_id = $2"
    " RETURNING reply_id)"
    " DELETE FROM reply_events WHERE tenant = $1 AND reply_id IN (SELECT reply_id FROM gone)"
)
# One label of a listing (listing.session_page fills in the placeholders).
LABEL_MATCHES = "labels ->> {key} = {value}"
SELECT_REQUEST_TAKEN = "SELECT 1 FROM requests WHERE tenant = $1 AND request_id = $2"
# One round trip for any number of messages.
INSERT_MESSAGES = (
    f"INSERT INTO messages (tenant, session_id, {MESSAGE_COLUMNS})"
    " SELECT $1, $2, m.* FROM unnest($3::bigint[], $4::text[], $5::text[], $6::bigint[],"
    " $7::text[]) AS m"
)
INSERT_REQUEST = (
    f"INSERT INTO requests ({REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (tenant, request_id) DO NOTHING RETURNING 1"
)
COUNT_SESSIONS = "SELECT count(*) FROM sessions WHERE tenant = $1"
COUNT_ALIVE = (
    "SELECT count(*) FROM sessions WHERE tenant = $1 AND (expire_time IS NULL OR expire_time > $2)"
)
# Creates of one tenant take turns while the quota is counted, on every replica.
# The first key is chatd's own, so other users of advisory locks do not collide.
LOCK_TENANT = "SELECT pg_advisory_xact_lock(1667330148, hashtext($1))"
LOCK_EXPIRE = "SELECT expire_time FROM sessions WHERE tenant = $1 AND session_id = $2 FOR UPDATE"
SELECT_REQUEST = f"SELECT {REQUEST_COLUMNS} FROM requests WHERE tenant = $1 AND request_id = $2"
SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = $1 AND session_id = $2"
SELECT_GUARDS = (
    "SELECT version, next_seq, uid, expire_time FROM sessions WHERE tenant = $1 AND session_id = $2"
)
EXISTS = "SELECT 1 FROM sessions WHERE tenant = $1 AND session_id = $2"
# Taken before deleting messages: a commit holding the row finishes first, and the
# DELETE that follows (a new snapshot) then sees every message it added.
LOCK_SESSION = "SELECT uid FROM sessions WHERE tenant = $1 AND session_id = $2 FOR UPDATE"
DELETE_MESSAGES = "DELETE FROM messages WHERE tenant = $1 AND session_id = $2"
DELETE_SESSION = "DELETE FROM sessions WHERE tenant = $1 AND session_id = $2"
ALL_MESSAGES = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant = $1 AND session_id = $2 ORDER BY seq"
)
LAST_MESSAGES = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant = $1 AND session_id = $2"
    " ORDER BY seq DESC LIMIT $3"
)
MESSAGES_AFTER = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant = $1 AND session_id = $2"
    " AND seq > $3 ORDER BY seq LIMIT $4"
)
# SKIP LOCKED: replicas sweeping at once split the work instead of queueing, and a
# session in the middle of a commit is left for the next sweep.
LOCK_EXPIRED = (
    "SELECT tenant, session_id FROM sessions WHERE expire_time <= $1"
    " ORDER BY expire_time LIMIT $2 FOR UPDATE SKIP LOCKED"
)
_LOCKED = "(tenant, session_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
DELETE_LOCKED_MESSAGES = f"DELETE FROM messages WHERE {_LOCKED}"
DELETE_LOCKED_SESSIONS = f"DELETE FROM sessions WHERE {_LOCKED}"
DELETE_LOCKED_REPLIES = (
    f"WITH gone AS (DELETE FROM replies WHERE {_LOCKED} RETURNING tenant, reply_id)"
    " DELETE FROM reply_events WHERE (tenant, reply_id) IN (SELECT tenant, reply_id FROM gone)"
)
DELETE_OLD_REQUESTS = (
    "DELETE FROM requests WHERE (tenant, request_id) IN ("
    " SELECT tenant, request_id FROM requests WHERE create_time < $1"
    " ORDER BY create_time LIMIT $2 FOR UPDATE SKIP LOCKED)"
)


def session_params(s: Session) -> tuple[Any, ...]:
    """$1..$14 of INSERT_SESSION and UPDATE_SESSION."""
    settings, labels = settings_json(s.settings)
    return (s.tenant, s.session_id, settings, labels, *session_state_values(s))


def update_params(s: Session, expected_version: int, first_new_seq: int) -> tuple[Any, ...]:
    """$1..$17 of UPDATE_SESSION: a write at s.update_time needs the stored session alive
    then."""
    return (*session_params(s), expected_version, first_new_seq, rules.to_micros(s.update_time))


def turn_params(
    session: Session, messages: Sequence[Message], expected_version: int, first_new_seq: int
) -> tuple[Any, ...]:
    """$1..$22 of COMMIT_TURN: update_params', then one array per message column."""
    columns: list[list[Any]] = [[], [], [], [], []]
    for m in messages:
        for column, value in zip(columns, message_values(m), strict=True):
            column.append(value)
    return (*update_params(session, expected_version, first_new_seq), *columns)


def commit_turn(
    session: Session,
    messages: Sequence[Message],
    expected_version: int,
    first_new_seq: int,
    request: tuple[Any, ...] | None,
    reply: ReplyWrite | None,
) -> tuple[str, tuple[Any, ...]]:
    """A short turn's statement and its parameters: turn_params', then the request
    record's values (rows.request_values), then write_reply's."""
    params = turn_params(session, messages, expected_version, first_new_seq)
    if request is not None:
        params = (*params, *request)
    if reply is None:
        return _COMMIT_TURNS[request is not None, None], params
    chunk, values = _turn_reply_params(reply)
    return _COMMIT_TURNS[request is not None, chunk], (*params, *values)


def write_reply(write: ReplyWrite) -> tuple[str, tuple[Any, ...]]:
    """A long turn's WRITE_REPLY statement and its parameters."""
    chunk, params = _turn_reply_params(write)
    return WRITE_REPLY[chunk], params


def _turn_reply_params(write: ReplyWrite) -> tuple[bool, tuple[Any, ...]]:
    """Whether a turn's reply has a chunk for reply_events, and its parameters."""
    row, events = turn_reply_values(write)
    return (False, row) if events is None else (True, (*row, *events))


def put_reply_params(write: ReplyWrite) -> tuple[Any, ...]:
    """PUT_REPLY's parameters."""
    record = reply_values(write.record)
    return (*record, *reply_event_values(write), rules.stored_last_seq(write))


def message_params(session: Session, messages: Sequence[Message]) -> tuple[Any, ...]:
    """$1..$7 of INSERT_MESSAGES: the key, then one array per column."""
    columns = zip(*(message_values(m) for m in messages), strict=True)
    return (session.tenant, session.session_id, *(list(c) for c in columns))
