"""Conversions between SQL rows and domain values, shared by the SQL backends.

Both dialects select the same columns in the same order and keep times as integer
microseconds, so one set of conversions serves both.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from server.sessions.model import Message, Session, SessionSettings
from server.sessions.ports import (
    ReplyError,
    ReplyEvents,
    ReplyRecord,
    ReplyState,
    ReplyWrite,
    RequestRecord,
)
from server.store import codec, rules

SESSION_COLUMNS = (
    "tenant, session_id, settings, create_time, update_time, expire_time,"
    " message_count, next_seq, usage, state, pending, version, uid"
)
MESSAGE_COLUMNS = "seq, turn_id, role, create_time, body"
REQUEST_COLUMNS = "tenant, request_id, fingerprint, result, create_time"
REPLY_COLUMNS = (
    "tenant, reply_id, session_id, turn_id, request_id, background, state, create_time,"
    " update_time, last_seq, owner, lease_expire_time, error_code, error_message, error_reason"
)
REPLY_EVENT_COLUMNS = "tenant, reply_id, first_seq, last_seq, payload"
# An upsert of a reply replaces every column but the key with the written record's.
REPLY_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in REPLY_COLUMNS.split(", ")[2:])
# A reply's chunk of events that begins at event 1, kept in its replies row (events
# 1..inline_last_seq; both NULL when there is none) rather than as a reply_events row: a
# reply stored whole by its turn's commit (every foreground reply) is then one row. It
# stands for the reply_events chunk with first_seq 1, which it hides if both exist.
REPLY_INLINE_COLUMNS = "inline_last_seq, inline_payload"
REPLY_ROW_COLUMNS = f"{REPLY_COLUMNS}, {REPLY_INLINE_COLUMNS}"
# A turn's upsert: an inline chunk written replaces the stored one; none keeps it.
REPLY_INLINE_KEPT = (
    "inline_last_seq = coalesce(excluded.inline_last_seq, replies.inline_last_seq),"
    " inline_payload = coalesce(excluded.inline_payload, replies.inline_payload)"
)
# Either dialect's upsert of a chunk of events: a turn's write replaces a chunk stored
# under the same first_seq (a put whose outcome its writer never learned).
REPLY_EVENT_UPDATES = "last_seq = excluded.last_seq, payload = excluded.payload"
# Literals in statements and partial indexes (see migrations: those must match).
RUNNING = ReplyState.RUNNING.value
FAILED = ReplyState.FAILED.value


# The settings and labels JSON of recently written SessionSettings objects, by identity:
# a turn carries its session's settings object unchanged, so its UPDATE need not encode
# them again. The entry holds the object itself, so its id cannot be reused meanwhile.
_SETTINGS_JSON: OrderedDict[int, tuple[SessionSettings, str, str]] = OrderedDict()
_SETTINGS_JSON_MAX = 1024


def settings_json(settings: SessionSettings) -> tuple[str, str]:
    """The settings column's JSON (codec's) and the JSON of the labels alone (PostgreSQL's
    labels column, for filtering), encoded once per object."""
    hit = _SETTINGS_JSON.get(id(settings))
    if hit is not None and hit[0] is settings:
        _SETTINGS_JSON.move_to_end(id(settings))
        return hit[1], hit[2]
    text = codec.dumps(codec.settings_to_dict(settings))
    labels = codec.dumps(settings.labels)
    _SETTINGS_JSON[id(settings)] = (settings, text, labels)
    if len(_SETTINGS_JSON) > _SETTINGS_JSON_MAX:
        _SETTINGS_JSON.popitem(last=False)
    return text, labels


def session_values(s: Session) -> tuple[Any, ...]:
    """Every SESSION_COLUMNS value after (tenant, session_id), in order."""
    return (settings_json(s.settings)[0], *session_state_values(s))


def session_state_values(s: Session) -> tuple[Any, ...]:
    """The SESSION_COLUMNS values after the settings, in order."""
    return (
        rules.to_micros(s.create_time),
        rules.to_micros(s.update_time),
        rules.expire_micros(s),
        s.message_count,
        s.next_seq,
        codec.dumps(codec.usage_to_dict(s.usage)),
        s.state.value,
        codec.pending_to_json(s.pending),
        s.version,
        s.uid,
    )


def message_values(m: Message) -> tuple[Any, ...]:
    """The MESSAGE_COLUMNS values of one message, in order."""
    body = codec.dumps(codec.message_body_to_dict(m))
    return (m.seq, m.turn_id, m.role.value, rules.to_micros(m.create_time), body)


def request_values(r: RequestRecord) -> tuple[Any, ...]:
    return (r.tenant, r.request_id, r.fingerprint, r.result, rules.to_micros(r.create_time))


def reply_values(r: ReplyRecord) -> tuple[Any, ...]:
    """The REPLY_COLUMNS values of one record, in order (no error: three NULLs)."""
    error = r.error
    lease = None if r.lease_expire_time is None else rules.to_micros(r.lease_expire_time)
    return (
        r.tenant,
        r.reply_id,
        r.session_id,
        r.turn_id,
        r.request_id,
        r.background,
        r.state.value,
        rules.to_micros(r.create_time),
        rules.to_micros(r.update_time),
        r.last_seq,
        r.owner,
        lease,
        *((None, None, None) if error is None else reply_error_values(error)),
    )


def turn_reply_values(write: ReplyWrite) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """A turn's reply as the REPLY_ROW_COLUMNS values, and its events as (first_seq,
    last_seq, payload) when they go to reply_events (None when there are none, or when
    they begin at event 1 and so are the row's inline chunk)."""
    record, events = reply_values(write.record), write.events
    if events is None:
        return (*record, None, None), None
    if events.first_seq == 1:
        return (*record, events.last_seq, events.payload), None
    return (*record, None, None), (events.first_seq, events.last_seq, events.payload)


def reply_event_values(write: ReplyWrite) -> tuple[Any, ...]:
    """The write's events as (first_seq, last_seq, payload), three NULLs without events."""
    events = write.events
    return (
        (None, None, None)
        if events is None
        else (events.first_seq, events.last_seq, events.payload)
    )


def reply_error_values(error: ReplyError) -> tuple[str, str, str]:
    return (error.code, error.message, error.reason)


def session_from_row(row: Any) -> Session:
    tenant, session_id, settings, created, updated, _, count, next_seq = row[:8]
    usage, _state, pending, version, uid = row[8:13]  # state is derived from pending
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
        uid=uid,
    )


def message_from_row(row: Any) -> Message:
    seq, turn_id, role, created, body = row
    return codec.message_from_body(
        codec.loads(body),
        role=role,
        seq=seq,
        create_time=rules.from_micros(created),
        turn_id=turn_id,
    )


def request_from_row(row: Any) -> RequestRecord:
    tenant, request_id, fingerprint, result, created = row
    return RequestRecord(tenant, request_id, fingerprint, result, rules.from_micros(created))


def reply_from_row(row: Any) -> ReplyRecord:
    tenant, reply_id, session_id, turn_id, request_id, background, state = row[:7]
    created, updated, last_seq, owner, lease, code, message, reason = row[7:15]
    return ReplyRecord(
        tenant=tenant,
        session_id=session_id,
        reply_id=reply_id,
        turn_id=turn_id,
        request_id=request_id,
        background=bool(background),  # SQLite keeps 0 or 1
        state=ReplyState(state),
        create_time=rules.from_micros(created),
        update_time=rules.from_micros(updated),
        last_seq=last_seq,
        owner=owner,
        lease_expire_time=None if lease is None else rules.from_micros(lease),
        error=None if code is None else ReplyError(code, message, reason),
    )


def reply_events_from_row(row: Any) -> ReplyEvents:
    first_seq, last_seq, payload = row
    return ReplyEvents(first_seq, last_seq, bytes(payload))
