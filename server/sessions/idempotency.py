"""request_id handling: a retry gets the first result, a concurrent duplicate waits for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from server.sessions.errors import (
    DuplicateRequest,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from server.sessions.events import (
    MessageCompleted,
    PartReceived,
    TextDelta,
    TurnCompleted,
    TurnEvent,
    TurnReply,
)
from server.sessions.expiry import live_session
from server.sessions.model import FinishReason, Message, Part, Role, Session, Usage
from server.sessions.ports import RequestRecord, SessionStore

MAX_REQUEST_ID = 128


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A caller's request_id and a fingerprint of what it asked for."""

    request_id: str
    fingerprint: str


class Requests:
    """Finds earlier results by request id and serializes duplicates within this process."""

    def __init__(self, store: SessionStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._running: dict[tuple[str, str], asyncio.Future[None]] = {}

    @asynccontextmanager
    async def claim(self, tenant: str, key: RequestKey) -> AsyncIterator[RequestRecord | None]:
        """Yields the record of an earlier run of this request, or None when the block must
        run it; another run of the same id in this process is waited for first."""
        self.check_key(key)
        slot = (tenant, key.request_id)
        while True:
            running = self._running.get(slot)
            if running is not None:
                await asyncio.shield(running)
                continue
            record = await self._store.get_request(tenant, key.request_id)
            if record is not None:
                yield self.same_request(key, record)
                return
            # Another duplicate may have claimed the id while the store was read.
            if slot not in self._running:
                break
        done = asyncio.get_running_loop().create_future()
        self._running[slot] = done
        try:
            yield None
        finally:
            del self._running[slot]
            done.set_result(None)

    @staticmethod
    def check_key(key: RequestKey) -> None:
        """Raises InvalidArgument for a request_id chatd does not keep."""
        if len(key.request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(
                "request_id",
                f"longer than {MAX_REQUEST_ID} characters",
                reason="REQUEST_ID_INVALID",
            )

    async def raced(self, tenant: str, key: RequestKey, exc: DuplicateRequest) -> RequestRecord:
        """The record that made a write with this key fail DuplicateRequest: the same id
        was recorded meanwhile (by another replica), perhaps for another request."""
        record = await self._store.get_request(tenant, key.request_id)
        if record is None:
            raise exc
        return self.same_request(key, record)

    @staticmethod
    def same_request(key: RequestKey, record: RequestRecord) -> RequestRecord:
        """`record`, if it was made by the request `key` names; its result is never
        another request's answer."""
        if record.fingerprint != key.fingerprint:
            raise InvalidArgument(
                "request_id",
                f"{key.request_id!r} was already used for a different request",
                reason="REQUEST_ID_REUSED",
            )
        return record

    def record(self, tenant: str, key: RequestKey, result: str) -> RequestRecord:
        return RequestRecord(tenant, key.request_id, key.fingerprint, result, self._clock())


# ----------------------------------------------------------------------------- encoding
#
# A record names what its request produced by the session's uid (one life of the
# session) and the seqs of the messages it stored, which never change within a life:
# history is append-only, seqs are never reused, and ClearHistory only removes. A replay
# reads those messages back and then checks that the session still lives the same life;
# anything else (deleted, expired, created again, cleared) is a clear error, never
# another request's content.


def _gone(request_id: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"request_id {request_id!r} already ran, but its result is no longer available: {why}",
        reason="REQUEST_RESULT_GONE",
    )


async def _same_life(
    store: SessionStore, record: RequestRecord, session_id: str, uid: str | None, now: float
) -> Session:
    """The session, if it still lives the life `uid` the record was made in."""
    try:
        session = await live_session(store, record.tenant, session_id, now)
    except NotFound:
        raise _gone(record.request_id, f"session {session_id!r} was deleted since") from None
    if uid is not None and session.uid != uid:
        raise _gone(
            record.request_id, f"session {session_id!r} was deleted and created again since"
        )
    return session


def encode_session_result(session: Session) -> str:
    return json.dumps({"session_id": session.session_id, "uid": session.uid})


async def replay_session_result(store: SessionStore, record: RequestRecord, now: float) -> Session:
    """The session an earlier run of a create-like request made, in its current state."""
    data = json.loads(record.result)
    return await _same_life(store, record, data["session_id"], data.get("uid"), now)


def encode_messages_result(session: Session, messages: Sequence[Message]) -> str:
    first = messages[0].seq if messages else 0
    return json.dumps({"first_seq": first, "count": len(messages), "uid": session.uid})


async def _stored_range(
    store: SessionStore, record: RequestRecord, session_id: str, data: dict[str, Any], now: float
) -> tuple[list[Message], Session]:
    """The messages a record names, read back and checked to be that life's."""
    count = data["count"]
    messages = (
        await store.list_messages(record.tenant, session_id, data["first_seq"] - 1, count)
        if count
        else []
    )
    session = await _same_life(store, record, session_id, data.get("uid"), now)
    turn_id = data.get("turn_id")
    if (
        len(messages) != count
        or (count and messages[0].seq != data["first_seq"])
        or (turn_id is not None and any(m.turn_id != turn_id for m in messages))
    ):
        raise _gone(record.request_id, f"the history of session {session_id!r} was cleared since")
    return messages, session


async def replay_messages(
    store: SessionStore, record: RequestRecord, session_id: str, now: float
) -> tuple[list[Message], Session]:
    """The messages an earlier AppendMessages stored, and the session as it is now."""
    return await _stored_range(store, record, session_id, json.loads(record.result), now)


def encode_turn_result(session: Session, reply: TurnReply) -> str:
    """The reply without its messages, which are stored anyway: their seq range suffices."""
    seqs = [m.seq for m in reply.messages]
    u = reply.usage
    return json.dumps(
        {
            "turn_id": reply.turn_id,
            "uid": session.uid,
            "first_seq": seqs[0] if seqs else 0,
            "count": len(seqs),
            "finish_reason": reply.finish_reason.value,
            "usage": [
                u.prompt_tokens,
                u.candidates_tokens,
                u.total_tokens,
                u.thoughts_tokens,
                u.cached_tokens,
                u.tool_use_prompt_tokens,
            ],
            "pending": [c.id for c in reply.pending_tool_calls],
            "model": reply.model,
            "block_reason": reply.block_reason,
            "candidate_metadata": reply.candidate_metadata,
            "prompt_feedback": reply.prompt_feedback,
            "no_content": reply.no_content_reason if reply.no_content else None,
            # The user's message of a turn stored not at all: its parts are the retry's
            # own (the fingerprint says they are the same), the rest is kept here.
            "unstored": None if (m := reply.unstored_message) is None else [m.seq, m.create_time],
            "reply_id": reply.reply_id,
        },
        separators=(",", ":"),
    )


async def check_turn_result(
    store: SessionStore, session_id: str, record: RequestRecord, now: float
) -> None:
    """Raises FailedPrecondition (REQUEST_RESULT_GONE) as replay_turn would: the turn's
    messages are no longer the session's (deleted, expired, created again, cleared)."""
    await _stored_range(store, record, session_id, json.loads(record.result), now)


def recorded_reply_id(record: RequestRecord) -> str:
    """The reply id a turn's request record names ("" for records made before replies)."""
    reply_id = json.loads(record.result).get("reply_id", "")
    return reply_id if isinstance(reply_id, str) else ""


async def replay_turn(
    store: SessionStore,
    session_id: str,
    record: RequestRecord,
    now: float,
    parts: tuple[Part, ...],
) -> AsyncIterator[TurnEvent]:
    """The events of a turn that already ran, rebuilt from its stored messages; `parts`
    are the retried request's message (the same as the first run's, by fingerprint).

    Raises FailedPrecondition (REQUEST_RESULT_GONE) when those messages are no longer
    the session's: it was deleted, expired, created again or cleared since.
    """
    data = json.loads(record.result)
    messages, _ = await _stored_range(store, record, session_id, data, now)
    unstored = None
    if (kept := data.get("unstored")) is not None:
        unstored = Message(Role.USER, parts, kept[0], kept[1], data["turn_id"])
        yield MessageCompleted(unstored)
    pending = set(data["pending"])
    calls = tuple(
        p.function_call
        for m in messages
        for p in m.parts
        if p.function_call is not None and p.function_call.id in pending
    )
    for message in messages:
        if message.role is Role.MODEL:
            if message.text:
                yield TextDelta(message.text)
            for part in message.parts:
                if part.has_content and part.text is None and part.function_call is None:
                    yield PartReceived(part)
        yield MessageCompleted(message)
    last_model = next((m for m in reversed(messages) if m.role is Role.MODEL), None)
    yield TurnCompleted(
        TurnReply(
            turn_id=data["turn_id"],
            text=last_model.text if last_model is not None else "",
            messages=tuple(messages),
            finish_reason=FinishReason(data["finish_reason"]),
            usage=Usage(*data["usage"]),
            pending_tool_calls=calls,
            model=data["model"],
            block_reason=data["block_reason"],
            candidate_metadata=data.get("candidate_metadata"),
            prompt_feedback=data.get("prompt_feedback"),
            no_content=data.get("no_content") is not None,
            no_content_reason=data.get("no_content") or "",
            unstored_message=unstored,
            reply_id=data.get("reply_id", ""),
        )
    )
