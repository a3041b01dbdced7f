"""request_id handling: a retry gets the first result, a concurrent duplicate waits for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from server.sessions.errors import InvalidArgument
from server.sessions.events import MessageCompleted, TextDelta, TurnCompleted, TurnEvent, TurnReply
from server.sessions.model import FinishReason, Message, Role, Usage
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
        if len(key.request_id) > MAX_REQUEST_ID:
            raise InvalidArgument("request_id", f"longer than {MAX_REQUEST_ID} characters")
        slot = (tenant, key.request_id)
        while True:
            running = self._running.get(slot)
            if running is not None:
                await asyncio.shield(running)
                continue
            record = await self._store.get_request(tenant, key.request_id)
            if record is not None:
                if record.fingerprint != key.fingerprint:
                    raise InvalidArgument(
                        "request_id",
                        f"{key.request_id!r} was already used for a different request",
                        reason="REQUEST_ID_REUSED",
                    )
                yield record
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

    def record(self, tenant: str, key: RequestKey, result: str) -> RequestRecord:
        return RequestRecord(tenant, key.request_id, key.fingerprint, result, self._clock())


# ----------------------------------------------------------------------------- encoding


def encode_session_result(session_id: str) -> str:
    return json.dumps({"session_id": session_id})


def decode_session_result(result: str) -> str:
    session_id: str = json.loads(result)["session_id"]
    return session_id


def encode_messages_result(messages: Sequence[Message]) -> str:
    return json.dumps({"first_seq": messages[0].seq if messages else 0, "count": len(messages)})


def decode_messages_result(result: str) -> tuple[int, int]:
    data = json.loads(result)
    return int(data["first_seq"]), int(data["count"])


def encode_turn_result(reply: TurnReply) -> str:
    """The reply without its messages, which are stored anyway: their seq range suffices."""
    seqs = [m.seq for m in reply.messages]
    u = reply.usage
    return json.dumps(
        {
            "turn_id": reply.turn_id,
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
        },
        separators=(",", ":"),
    )


async def replay_turn(
    store: SessionStore, tenant: str, session_id: str, record: RequestRecord
) -> AsyncIterator[TurnEvent]:
    """The events of a turn that already ran, rebuilt from its stored messages."""
    data = json.loads(record.result)
    messages = (
        await store.list_messages(tenant, session_id, data["first_seq"] - 1, data["count"])
        if data["count"]
        else []
    )
    pending = set(data["pending"])
    calls = tuple(
        p.function_call
        for m in messages
        for p in m.parts
        if p.function_call is not None and p.function_call.id in pending
    )
    for message in messages:
        if message.role is Role.MODEL and message.text:
            yield TextDelta(message.text)
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
        )
    )
