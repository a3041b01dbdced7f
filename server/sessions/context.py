"""The context policy: which tail of history is sent to the model (history itself stays whole)."""

from __future__ import annotations

from collections.abc import Sequence

from server.sessions.model import ContextPolicy, Message, Role


def is_turn_start(message: Message) -> bool:
    """A user message that is not a tool result: the only place a window may begin."""
    return message.role is Role.USER and not any(
        p.function_response is not None for p in message.parts
    )


def history_needed(policy: ContextPolicy) -> int | None:
    """How many stored messages the window can use at most (None = all of them)."""
    return policy.max_messages if policy.max_messages > 0 else None


def select_window(messages: Sequence[Message], policy: ContextPolicy) -> Sequence[Message]:
    """The latest whole turns that fit the policy.

    `messages` ends with the current turn's messages. The window starts at a turn
    start, so a function call is never separated from its response. The current
    turn is always sent whole, even when it alone exceeds the limit.
    """
    if policy.max_messages <= 0 or len(messages) <= policy.max_messages:
        start = 0
    else:
        start = len(messages) - policy.max_messages
    for i in range(start, len(messages)):
        if is_turn_start(messages[i]):
            return messages[i:]
    # No turn starts inside the limit: send the current turn from its own start.
    for i in range(start - 1, -1, -1):
        if is_turn_start(messages[i]):
            return messages[i:]
    return messages
