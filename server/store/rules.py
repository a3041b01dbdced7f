"""What every backend does the same way: microsecond times, append-only seqs, error texts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from server.sessions.errors import (
    AlreadyExists,
    Conflict,
    DuplicateRequest,
    NotFound,
    ResourceExhausted,
    session_not_found,
)
from server.sessions.model import Message, Session
from server.sessions.ports import (
    ReplyRecord,
    ReplyState,
    ReplyWrite,
    RequestRecord,
)

MICROS_PER_SECOND = 1_000_000


def to_micros(seconds: float) -> int:
    return round(seconds * MICROS_PER_SECOND)


def from_micros(micros: int) -> float:
    return micros / MICROS_PER_SECOND


def quantize_time(seconds: float) -> float:
    """The time as a backend storing integer microseconds gives it back."""
    return from_micros(to_micros(seconds))


def expire_micros(session: Session) -> int | None:
    """The stored expire_time column: the session's derived expiry (ttl or fixed)."""
    expire = session.expire_time
    return None if expire is None else to_micros(expire)


def expired(expire_micros: int | None, at: float) -> bool:
    """Whether a stored expire_time column is at or before `at` (seconds)."""
    return expire_micros is not None and expire_micros <= to_micros(at)


def quantize_request(request: RequestRecord) -> RequestRecord:
    created = quantize_time(request.create_time)
    if created == request.create_time:
        return request
    return RequestRecord(
        request.tenant, request.request_id, request.fingerprint, request.result, created
    )


def quantize_reply(record: ReplyRecord) -> ReplyRecord:
    create, update = quantize_time(record.create_time), quantize_time(record.update_time)
    lease = record.lease_expire_time
    lease = None if lease is None else quantize_time(lease)
    if (create, update, lease) == (
        record.create_time,
        record.update_time,
        record.lease_expire_time,
    ):
        return record
    return replace(record, create_time=create, update_time=update, lease_expire_time=lease)


def quantize_session(session: Session) -> Session:
    # Every backend rounds to microseconds so that they all return equal values and a
    # cache in front of one never disagrees with it.
    create, update = quantize_time(session.create_time), quantize_time(session.update_time)
    if create == session.create_time and update == session.update_time:
        return session
    return session.evolve(create_time=create, update_time=update)


def quantize_message(message: Message) -> Message:
    created = quantize_time(message.create_time)
    if created == message.create_time:
        return message
    return replace(message, create_time=created)


def check_version(session: Session, expected_version: int) -> None:
    """The version must move forward, or optimistic concurrency could not tell this write
    from the previous one."""
    if session.version <= expected_version:
        raise ValueError(
            f"session version {session.version} must exceed expected_version {expected_version}"
        )


def check_seqs(session: Session, messages: Sequence[Message]) -> None:
    """Seqs must strictly increase and stay below the session's `next_seq`."""
    previous: int | None = None
    for message in messages:
        if previous is not None and message.seq <= previous:
            raise ValueError(f"message seqs must strictly increase ({previous} then {message.seq})")
        previous = message.seq
    if previous is not None and session.next_seq <= previous:
        raise ValueError(f"next_seq {session.next_seq} must exceed the last message seq {previous}")


def check_turn(session: Session, messages: Sequence[Message], expected_version: int) -> None:
    """Rejects a turn that could corrupt history whatever is stored (a caller bug)."""
    check_version(session, expected_version)
    check_seqs(session, messages)


def check_request(session: Session, request: RequestRecord | None) -> None:
    # A record filed under another tenant would let that tenant read this one's result.
    if request is not None and request.tenant != session.tenant:
        raise ValueError("a request record must belong to the session's tenant")


def check_reply(write: ReplyWrite) -> None:
    """The record's last_seq is the last event it carries, and those events are in order."""
    events, record = write.events, write.record
    if events is None:
        return
    if not 1 <= events.first_seq <= events.last_seq:
        raise ValueError(
            f"reply events must number 1 and up, first to last ({events.first_seq}"
            f" then {events.last_seq})"
        )
    if events.last_seq != record.last_seq:
        raise ValueError(
            f"reply last_seq {record.last_seq} must be that of its last event {events.last_seq}"
        )


def check_turn_reply(session: Session, reply: ReplyWrite | None) -> None:
    """A turn's reply belongs to the turn's session (a reply filed under another tenant
    would let that tenant read it)."""
    if reply is None:
        return
    record = reply.record
    if (record.tenant, record.session_id) != (session.tenant, session.session_id):
        raise ValueError("a turn's reply must belong to the turn's session")
    check_reply(reply)


def check_create(
    session: Session, messages: Sequence[Message], request: RequestRecord | None
) -> None:
    """Every check of a create_session that needs nothing stored (ValueError)."""
    check_seqs(session, messages)
    check_request(session, request)


def check_commit(
    session: Session,
    messages: Sequence[Message],
    expected_version: int,
    request: RequestRecord | None,
    reply: ReplyWrite | None,
) -> None:
    """Every check of a commit_turn that needs nothing stored (ValueError)."""
    check_turn(session, messages, expected_version)
    check_request(session, request)
    check_turn_reply(session, reply)


def reply_cursor(before: tuple[float, str]) -> tuple[int, str]:
    """A list_replies cursor as the stored (create_time, reply_id) it compares with."""
    return to_micros(before[0]), before[1]


def stored_last_seq(write: ReplyWrite) -> int:
    """The last_seq a stored record must have for `write` to continue it."""
    return write.record.last_seq if write.events is None else write.events.first_seq - 1


def reply_refused(stored: tuple[str, int] | None, write: ReplyWrite) -> bool:
    """put_reply's answer when its guarded write matched no row, from the stored (state,
    last_seq): False when the reply ended (or is gone); ValueError when its events would
    not continue the stored ones."""
    if stored is None or stored[0] != ReplyState.RUNNING.value:
        return False
    raise ValueError(
        f"reply events must continue the stored ones: stored last_seq {stored[1]},"
        f" write expects {stored_last_seq(write)}"
    )


def first_new_seq(session: Session, messages: Sequence[Message]) -> int:
    """The lowest seq this turn claims; the stored next_seq must not be above it."""
    return messages[0].seq if messages else session.next_seq


# The same error texts from every backend. The tenant stays out of them: a caller only
# ever sees its own tenant's sessions.


def not_found(session_id: str) -> NotFound:
    return session_not_found(session_id)


def already_exists(session_id: str) -> AlreadyExists:
    return AlreadyExists(f"session {session_id!r} already exists", reason="SESSION_EXISTS")


def conflict(session_id: str, stored: int, expected: int) -> Conflict:
    return Conflict(
        f"session {session_id!r} is at version {stored}, not {expected}", reason="CONFLICT"
    )


def duplicate_request(request_id: str) -> DuplicateRequest:
    return DuplicateRequest(f"request {request_id!r} was already made", reason="DUPLICATE_REQUEST")


def quota_exceeded(max_sessions: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the tenant already has the most sessions allowed ({max_sessions}): delete some first",
        reason="SESSION_QUOTA",
    )


def guard_failure(
    session: Session, expected_version: int, guards: tuple[int, int, str, int | None] | None
) -> Exception:
    """Why a guarded session write matched no row, from the stored (version, next_seq,
    uid, expire_time): the session is gone (another life of it, or expired by the write's
    update_time, so no write brings it back), moved on, or seqs would repeat."""
    if guards is None or guards[2] != session.uid or expired(guards[3], session.update_time):
        return not_found(session.session_id)
    if guards[0] != expected_version:
        return conflict(session.session_id, guards[0], expected_version)
    return seq_reused(guards[1])


def seq_reused(next_seq: int) -> ValueError:
    return ValueError(f"turn would reuse seqs below the stored next_seq {next_seq}")
