"""What a history must look like for Gemini to accept it, checked on caller-supplied messages."""

from __future__ import annotations

from collections.abc import Sequence

from server.sessions.errors import InvalidArgument
from server.sessions.model import FunctionCall, FunctionResponse, Message, Role
from server.sessions.tool_calls import calls_of


def _responses(message: Message) -> list[FunctionResponse]:
    return [p.function_response for p in message.parts if p.function_response is not None]


def _answer(calls: Sequence[FunctionCall], responses: Sequence[FunctionResponse]) -> bool:
    """Whether `responses` answer exactly `calls`: by id, or by name for a response
    without an id (the model sends calls without ids, and they are answered so)."""
    open_calls = list(calls)
    for response in responses:
        match = next(
            (
                c
                for c in open_calls
                if (c.id == response.id if response.id else c.name == response.name)
            ),
            None,
        )
        if match is None:
            return False
        open_calls.remove(match)
    return not open_calls


def _describe(calls: Sequence[FunctionCall]) -> str:
    return ", ".join(c.id or c.name for c in calls)


def check_history(
    messages: Sequence[Message],
    field: str,
    previous: Message | None,
    *,
    open_calls_allowed: bool = False,
    carried: Sequence[FunctionCall] | None = None,
) -> list[FunctionCall]:
    """`messages` continue a history ending in `previous` (None: an empty history).

    The history starts with a user message. Roles need not alternate: Gemini serves
    consecutive user or model contents, and the SDK's own chat keeps a streamed reply as
    one model content per chunk. The function calls of a run of model messages are
    answered, all and only them, by the next message, which holds nothing but those
    responses; a response is matched to its call by id, or by name when it has no id
    (calls the model made without ids). With `open_calls_allowed` the last calls may stay
    unanswered (a paused turn). Returns the calls left unanswered at the end; `carried`
    passes them on when a long history is checked a slice at a time (a run of model
    messages may cross slices).
    """
    prev = previous
    open_calls: list[FunctionCall] = (
        list(carried)
        if carried is not None
        else list(calls_of(previous))
        if previous is not None
        else []
    )
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not message.parts:
            raise InvalidArgument(
                f"{where}.parts", "must hold at least one part", reason="HISTORY_MALFORMED"
            )
        calls = calls_of(message)
        responses = _responses(message)
        if message.role is Role.USER:
            if calls:
                raise InvalidArgument(
                    where, "a user message cannot carry function calls", reason="HISTORY_MALFORMED"
                )
            if responses and len(responses) != len(message.parts):
                raise InvalidArgument(
                    where,
                    "function responses go in a message of their own",
                    reason="HISTORY_MALFORMED",
                )
            if responses and not open_calls:
                raise InvalidArgument(
                    where,
                    "function responses must follow a model message's function calls",
                    reason="HISTORY_MALFORMED",
                )
            if open_calls and not _answer(open_calls, responses):
                raise InvalidArgument(
                    where,
                    f"must answer exactly the function calls {_describe(open_calls)}",
                    reason="HISTORY_MALFORMED",
                )
            open_calls = []
        else:
            if responses:
                raise InvalidArgument(
                    where,
                    "a model message cannot carry function responses",
                    reason="HISTORY_MALFORMED",
                )
            if prev is None:
                raise InvalidArgument(
                    where, "the history must start with a user message", reason="HISTORY_MALFORMED"
                )
            open_calls.extend(calls)
        prev = message
    if open_calls and not open_calls_allowed:
        raise InvalidArgument(
            field, "the last message's function calls are unanswered", reason="HISTORY_MALFORMED"
        )
    return open_calls


def check_pending_ids(open_calls: Sequence[FunctionCall], field: str) -> None:
    """A paused turn's calls are answered by id with tool_results, so each needs one."""
    if any(not c.id for c in open_calls):
        raise InvalidArgument(
            field, "the pending function calls need their id", reason="HISTORY_MALFORMED"
        )
