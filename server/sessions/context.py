"""The context policy: which tail of history is sent to the model (history itself stays whole)."""

from __future__ import annotations

from collections.abc import Sequence

from server.sessions.model import ContextPolicy, Message, Role
from server.sessions.tokens import message_tokens


def is_turn_start(message: Message) -> bool:
    """A user message that is not a tool result: the only place a window may begin.

    Tool results travel in messages of their own, so the first part tells.
    """
    return (
        message.role is Role.USER
        and bool(message.parts)
        and message.parts[0].function_response is None
    )


def history_needed(policy: ContextPolicy) -> int | None:
    """How many stored messages the window can use at most (None = all of them).

    Every message costs at least one token, so a token budget bounds it too.
    """
    limits = [n for n in (policy.max_messages, policy.max_tokens) if n > 0]
    return min(limits) if limits else None


def select_window(messages: Sequence[Message], policy: ContextPolicy) -> Sequence[Message]:
    """The newest whole turns that fit the policy's message and token limits.

    `messages` ends with the current turn, which is always sent whole, even when it
    alone exceeds a limit. The window starts at a turn start, so a function call is
    never separated from its response. Token counts are the model's recorded counts for
    model messages and chatd's estimate for the rest.
    """
    if policy.max_messages <= 0 and policy.max_tokens <= 0:
        return messages
    starts = [i for i, m in enumerate(messages) if is_turn_start(m)]
    if not starts:
        return messages
    start = starts[-1]
    count = len(messages) - start
    # Without a token limit no count is needed: only the message limit decides.
    counted = policy.max_tokens > 0
    tokens = sum(message_tokens(m) for m in messages[start:]) if counted else 0
    for earlier in reversed(starts[:-1]):
        turn = messages[earlier:start]
        more_count = count + len(turn)
        more_tokens = tokens + sum(message_tokens(m) for m in turn) if counted else 0
        if 0 < policy.max_messages < more_count or 0 < policy.max_tokens < more_tokens:
            break
        start, count, tokens = earlier, more_count, more_tokens
    return messages[start:]
