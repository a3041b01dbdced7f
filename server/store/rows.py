"""Conversions between SQL rows and domain values, shared by the SQL backends.

Both dialects select the same columns in the same order and keep times as integer
microseconds, so one set of conversions serves both.
"""

from __future__ import annotations

from typing import Any

from server.sessions.model import Message, Session
from server.sessions.ports import RequestRecord
from server.store import codec, rules

SESSION_COLUMNS = (
    "tenant, session_id, settings, create_time, update_time, expire_time,"
    " message_count, next_seq, usage, state, pending, version, uid"
)
MESSAGE_COLUMNS = "seq, turn_id, role, create_time, body"
REQUEST_COLUMNS = "tenant, request_id, fingerprint, result, create_time"


def session_values(s: Session, settings: str | None = None) -> tuple[Any, ...]:
    """Every SESSION_COLUMNS value after (tenant, session_id), in order; `settings` is the
    settings' JSON when the caller has it already."""
    if settings is None:
        settings = codec.dumps(codec.settings_to_dict(s.settings))
    return (settings, *session_state_values(s))


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
