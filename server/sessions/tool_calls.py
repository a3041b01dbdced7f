"""Function calls inside a turn: ids, running server tools, and checking the caller's results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace

from server.sessions.errors import FailedPrecondition, InvalidArgument
from server.sessions.events import ToolCallAnswered
from server.sessions.model import (
    FunctionCall,
    FunctionResponse,
    FunctionResponsePart,
    Message,
    Part,
    PendingTurn,
    Role,
)
from server.sessions.ports import ToolOutcome, ToolRunner

# The id of the function call a ToolRunner.run is answering, set around each server call
# (its task's own context): decorators such as tracing read it; "" outside a call.
CALL_ID: ContextVar[str] = ContextVar("chatd_tool_call_id", default="")


@dataclass(frozen=True, slots=True)
class ToolResultInput:
    """The caller's answer to one pending call: a JSON result or an error message, and
    media returned with it."""

    call_id: str
    response: Mapping[str, object]
    is_error: bool
    parts: tuple[FunctionResponsePart, ...] = ()


def with_call_ids(message: Message) -> Message:
    """Gives every function call an id: the model's, or a stable one derived from the
    message's seq, so responses can always be matched to their call."""
    if not any(p.function_call is not None and not p.function_call.id for p in message.parts):
        return message
    parts = tuple(
        replace(p, function_call=replace(p.function_call, id=f"call-{message.seq}-{i}"))
        if p.function_call is not None and not p.function_call.id
        else p
        for i, p in enumerate(message.parts)
    )
    return replace(message, parts=parts)


def without_calls(message: Message) -> Message:
    parts = tuple(p for p in message.parts if p.function_call is None)
    return message if len(parts) == len(message.parts) else replace(message, parts=parts)


def calls_of(message: Message) -> tuple[FunctionCall, ...]:
    return tuple(p.function_call for p in message.parts if p.function_call is not None)


def responses_message(
    calls: Sequence[FunctionCall],
    responses: Mapping[str, FunctionResponse],
    *,
    seq: int,
    create_time: float,
    turn_id: str,
) -> Message:
    """All responses to one model message, in call order, as one user message (as Gemini
    expects them)."""
    parts = tuple(Part(function_response=responses[c.id]) for c in calls)
    return Message(Role.USER, parts, seq=seq, create_time=create_time, turn_id=turn_id)


async def run_server_calls(
    tools: ToolRunner, enabled: frozenset[str], calls: Sequence[FunctionCall]
) -> list[ToolCallAnswered]:
    """Runs the calls concurrently; a call to a tool the session has not enabled is answered
    with an error, as is every failure of the tool itself."""

    async def one(call: FunctionCall) -> ToolCallAnswered:
        start = time.perf_counter()
        if call.name in enabled:
            CALL_ID.set(call.id)
            outcome = await tools.run(call.name, call.args)
        else:
            outcome = ToolOutcome(
                {"error": f"function {call.name!r} is not available in this session"},
                is_error=True,
            )
        response = FunctionResponse(call.id, call.name, dict(outcome.response), outcome.parts)
        return ToolCallAnswered(response, outcome.is_error, time.perf_counter() - start)

    return list(await asyncio.gather(*(one(c) for c in calls)))


def check_tool_results(
    pending: PendingTurn | None, results: Sequence[ToolResultInput]
) -> dict[str, FunctionResponse]:
    """Every response of the paused round by call id: chatd's own plus the caller's.

    The caller must answer each awaited call exactly once and nothing else.
    """
    if pending is None:
        raise FailedPrecondition(
            "tool_results: the session has no pending tool calls to answer",
            reason="NO_PENDING_TOOL_CALLS",
        )
    calls = {c.id: c for c in pending.calls}
    awaiting = {c.id for c in pending.awaiting}
    responses = {r.id: r for r in pending.answered}
    for i, result in enumerate(results):
        field = f"tool_results[{i}].call_id"
        if result.call_id not in calls:
            raise InvalidArgument(
                field,
                f"{result.call_id[:64]!r} is not a pending tool call of this session",
                reason="TOOL_CALL_UNKNOWN",
            )
        if result.call_id not in awaiting or result.call_id in responses:
            raise InvalidArgument(
                field, f"call {result.call_id!r} is already answered", reason="TOOL_CALL_ANSWERED"
            )
        call = calls[result.call_id]
        responses[call.id] = FunctionResponse(
            call.id, call.name, dict(result.response), result.parts
        )
    missing = [c.id for c in pending.calls if c.id not in responses]
    if missing:
        raise InvalidArgument(
            "tool_results",
            f"missing results for pending calls: {', '.join(missing)}",
            reason="TOOL_RESULTS_MISSING",
        )
    return responses
