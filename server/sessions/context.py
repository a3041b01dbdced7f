"""The context policy: which tail of history is sent to the model (history itself stays whole).

Two ways to keep under the policy's limits:

- Sliding (`low_water_fraction` 0): the newest whole turns that fit. Once the limit is
  reached, every new turn pushes the oldest turn out, so the first content sent changes
  on every turn.
- Stepped (`low_water_fraction` in (0, 1)): the window starts only at *checkpoints*, and
  starts at the earliest checkpoint from which everything up to the current turn fits.
  It therefore keeps its start turn after turn and, when the limit is reached, moves
  forward by a whole step of turns at once. What is sent then begins with the same
  prefix for many turns in a row, which Gemini's implicit context caching bills as cached
  (https://ai.google.dev/gemini-api/docs/caching).

Checkpoints are a pure function of the stored messages' seqs and token counts, so
every request (every replica, every tool round) computes the same ones, and no state is
kept beside history. A step is `max_messages - floor(low_water_fraction *
max_messages)` messages, or the same share of `max_tokens` in tokens. Seq space is cut
into blocks of one message step (of `span` seqs without a message limit, `span` being
the most messages a window can hold, see history_needed). In each block the first turn
start is a checkpoint, and after it every turn start at which a token step has passed
since the previous checkpoint. A block's checkpoints depend only on its own messages,
so appending messages only adds checkpoints at the end, and choosing among them needs
at most the last `span` messages plus one block.

When a limit is exceeded the window moves past at least one whole step, so it drops to
about the low-water mark (the low-water fraction of the limit plus the newest turn).
Either way the window begins at a turn start, so a function call is never separated from
its response, and the current turn is always sent whole.
"""

from __future__ import annotations

import math
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


def _span(policy: ContextPolicy) -> int | None:
    limits = [n for n in (policy.max_messages, policy.max_tokens) if n > 0]
    return min(limits) if limits else None


def history_needed(policy: ContextPolicy) -> int | None:
    """How many stored messages the window can use at most (None = all of them).

    Every message costs at least one token, so a token budget bounds it too. A stepped
    window needs more: its checkpoints are counted from the start of the block
    the oldest possible window start lies in (one block more). Compaction needs the
    newest summary and what follows its range too (server.sessions.compaction's
    load_history reads that much).
    """
    span = _span(policy)
    if span is None:
        return None
    return span + _block(policy, span) if policy.stepped else span


def _block(policy: ContextPolicy, span: int) -> int:
    """How many seqs a block of checkpoints covers: a message step, else `span`."""
    return _step(policy.max_messages, policy.low_water_fraction) or span


def select_window(messages: Sequence[Message], policy: ContextPolicy) -> Sequence[Message]:
    """The whole turns of `messages` to send under the policy's limits.

    `messages` ends with the current turn, which is always sent whole, even when it
    alone exceeds a limit. The window starts at a turn start, so a function call is
    never separated from its response. Token counts are the model's recorded counts for
    model messages and chatd's estimate for the rest. With `low_water_fraction` set the
    window moves in steps (see the module docstring), else it slides.
    """
    if policy.max_messages <= 0 and policy.max_tokens <= 0:
        return messages
    starts = [i for i, m in enumerate(messages) if is_turn_start(m)]
    if not starts:
        return messages
    if policy.stepped:
        return messages[_stepped_start(messages, starts, policy) :]
    return messages[_sliding_start(messages, starts, policy) :]


def _sliding_start(messages: Sequence[Message], starts: list[int], policy: ContextPolicy) -> int:
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
    return start


def _step(limit: int, fraction: float) -> int:
    """How much a step drops from `limit` (0 = no such limit): at least 1."""
    return max(limit - math.floor(fraction * limit), 1) if limit > 0 else 0


def _stepped_start(messages: Sequence[Message], starts: list[int], policy: ContextPolicy) -> int:
    span = _span(policy)
    assert span is not None
    step_tokens = _step(policy.max_tokens, policy.low_water_fraction)
    counted = policy.max_tokens > 0
    # tokens[i] = tokens of messages[:i]
    tokens = [0] * (len(messages) + 1)
    if counted:
        for i, m in enumerate(messages):
            tokens[i + 1] = tokens[i] + message_tokens(m)
    size = _block(policy, span)
    # Blocks wholly older than the block of the message `span` messages back cannot hold
    # a window start that fits (a window holds at most `span` messages), so none of theirs
    # are candidates. Counted by position, not by seq: seqs only increase (an imported
    # history may leave gaps), so `end - span` could lie past every message that fits.
    first_block = messages[max(len(messages) - span, 0)].seq // size
    current = starts[-1]
    checkpoints: list[int] = []
    block = -1
    for i in starts:
        seq_block = messages[i].seq // size
        if seq_block < first_block:
            continue
        if seq_block != block:
            block = seq_block
            checkpoints.append(i)
            continue
        last = checkpoints[-1]
        if step_tokens and tokens[i] - tokens[last] >= step_tokens:
            checkpoints.append(i)
    count_end = len(messages)
    for c in checkpoints:
        if c >= current:
            break
        if 0 < policy.max_messages < count_end - c:
            continue
        if 0 < policy.max_tokens < tokens[count_end] - tokens[c]:
            continue
        return c
    return current
