"""What a history must look like for Gemini to accept it, checked on caller-supplied messages."""

from __future__ import annotations

from collections.abc import Sequence

from server.sessions.errors import InvalidArgument
from server.sessions.model import Message, Role
from server.sessions.tool_calls import calls_of


def _responses(message: Message) -> list[str]:
    return [p.function_response.id for p in message.parts if p.function_response is not None]


def check_history(
    messages: Sequence[Message],
    field: str,
    previous: Message | None,
    *,
    open_calls_allowed: bool = False,
) -> None:
    """`messages` continue a history ending in `previous` (None: an empty history).

    The history starts with a user message; a model message follows a user message; a
    model message's function calls are answered, all and only them, by the next message,
    which holds nothing but those responses. With `open_calls_allowed` the last message's
    calls may stay unanswered (a paused turn).
    """
    prev = previous
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not message.parts:
            raise InvalidArgument(f"{where}.parts", "must hold at least one part")
        calls = calls_of(message)
        responses = _responses(message)
        if any(not c.id for c in calls) or any(not r for r in responses):
            raise InvalidArgument(where, "function calls and responses need their id")
        expected = [c.id for c in calls_of(prev)] if prev is not None else []
        if message.role is Role.USER:
            if calls:
                raise InvalidArgument(where, "a user message cannot carry function calls")
            if responses and len(responses) != len(message.parts):
                raise InvalidArgument(where, "function responses go in a message of their own")
            if sorted(responses) != sorted(expected):
                if responses and not expected:
                    raise InvalidArgument(
                        where, "function responses must follow a model message's function calls"
                    )
                raise InvalidArgument(
                    where, f"must answer exactly the function calls {', '.join(expected)}"
                )
        else:
            if responses:
                raise InvalidArgument(where, "a model message cannot carry function responses")
            if prev is None or prev.role is Role.MODEL:
                raise InvalidArgument(where, "a model message must follow a user message")
            if expected:
                raise InvalidArgument(where, "the previous function calls are unanswered")
        prev = message
    if prev is not None and not open_calls_allowed and calls_of(prev):
        raise InvalidArgument(field, "the last message's function calls are unanswered")
