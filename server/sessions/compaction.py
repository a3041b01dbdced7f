"""Context compaction: older turns summarised by the model instead of dropped.

A session whose context policy has a `compaction` keeps its history whole, and adds to
it *summary* messages (Message.summary set, role MODEL, written by the model). A
summary covers a range of seqs: everything from the start of history (or of the
previous summary's range, which it re-summarises) up to the last message before the
newest `keep_recent_turns` turns. What is sent to the model is then the newest
summary's text, as one user message, followed by the messages after its range; the
summary text does not change until the next compaction, so every request in between
begins with the same prefix (which Gemini's implicit caching bills as cached,
https://ai.google.dev/gemini-api/docs/caching).

Compaction runs when a turn begins and what it would send reaches a trigger (the engine
may have begun the summary in the background after the previous turn). The
range always ends just before a turn start, so a function call is never separated
from its response. When summarising fails, the turn goes on without a new summary
and the context policy's window limits what is sent (server.sessions.context).
"""

from __future__ import annotations

from collections.abc import Sequence

from server.sessions.context import history_needed, is_turn_start, select_window
from server.sessions.model import Compaction, ContextPolicy, Message, Part, Role, Summary
from server.sessions.ports import SessionStore
from server.sessions.tokens import message_tokens

DEFAULT_KEEP_RECENT_TURNS = 2
DEFAULT_INSTRUCTIONS = (
    "Summarise the conversation below for your own later use: keep every fact, name, "
    "number, decision, open question and commitment a later answer may need, and the "
    "user's preferences. Write plain prose, no preamble."
)
# What the summary sent in place of the messages it covers begins with.
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
# The longest a function call's arguments or result is quoted in a transcript.
MAX_QUOTED = 2_000
# How many of the newest messages load_history reads first, beyond what the window needs.
FIRST_READ = 64


def latest_summary(messages: Sequence[Message]) -> Message | None:
    """The newest summary message in `messages`, if any."""
    for message in reversed(messages):
        if message.summary is not None:
            return message
    return None


def _covers_enough(messages: Sequence[Message]) -> bool:
    """Whether `messages` (a tail of history) hold the newest summary and every message
    after its range: what contents_to_send and plan need of history."""
    summary = latest_summary(messages)
    if summary is None or summary.summary is None:
        return False
    return messages[0].seq <= summary.summary.last_seq


async def load_history(
    store: SessionStore, tenant: str, session_id: str, policy: ContextPolicy, at_least: int = 0
) -> list[Message]:
    """The tail of a session's history that a request under `policy` needs, oldest first:
    at least the newest `at_least` messages and what the window needs (history_needed),
    and with compaction on, the newest summary and every message after its range.

    With compaction the read starts at FIRST_READ messages beyond the window's need and
    doubles until it holds the newest summary and the start of what follows its range,
    or the whole history (which only a session without a summary, or one whose
    summaries keep failing, needs). Raises NotFound as the store does.
    """
    need = history_needed(policy)
    if policy.compaction is None:
        return await store.recent_messages(
            tenant, session_id, None if need is None else max(need, at_least)
        )
    # Without window limits the window is everything after the newest summary.
    limit = max(need or 0, at_least) + FIRST_READ
    while True:
        messages = await store.recent_messages(tenant, session_id, limit)
        if len(messages) < limit or _covers_enough(messages):
            return messages
        limit *= 2


def summary_content(summary: Message) -> Message:
    """A summary as it is sent: a user message holding its text (same seq)."""
    return Message(
        Role.USER, (Part(text=SUMMARY_PREFIX + summary.text),), summary.seq, summary.create_time
    )


def _after(messages: Sequence[Message], summary: Message | None) -> list[Message]:
    """The messages that are not summaries and that `summary` does not cover."""
    last = summary.summary.last_seq if summary is not None and summary.summary else -1
    return [m for m in messages if m.summary is None and m.seq > last]


def contents_to_send(messages: Sequence[Message], policy: ContextPolicy) -> Sequence[Message]:
    """What a request sends of `messages` (history then the current turn).

    Summary messages are never sent as such. With a summary and compaction on, the
    summary's text comes first, then the messages after its range, unless those alone
    exceed the window's limits: then, as without a summary, the window decides.
    """
    summary = latest_summary(messages) if policy.compaction is not None else None
    rest = _after(messages, summary)
    window = select_window(rest, policy)
    if summary is None or len(window) < len(rest):
        return window
    return [summary_content(summary), *rest]


def _keep(compaction: Compaction) -> int:
    return compaction.keep_recent_turns or DEFAULT_KEEP_RECENT_TURNS


def reaches_trigger(sent: Sequence[Message], compaction: Compaction) -> bool:
    """Whether what would be sent reaches a trigger (tokens as server.sessions.tokens)."""
    if 0 < compaction.trigger_messages <= len(sent):
        return True
    if compaction.trigger_tokens <= 0:
        return False
    return sum(message_tokens(m) for m in sent) >= compaction.trigger_tokens


def plan(
    messages: Sequence[Message], compaction: Compaction
) -> tuple[Summary, list[Message]] | None:
    """The range a new summary would cover and the messages to summarise, oldest first.

    The messages are the previous summary (if any) and the messages after its range up
    to the newest `keep_recent_turns` turns (which begin at a turn start). None when
    there are no more turns than those to keep.
    """
    previous = latest_summary(messages)
    rest = _after(messages, previous)
    starts = [i for i, m in enumerate(rest) if is_turn_start(m)]
    keep = _keep(compaction)
    if len(starts) <= keep or starts[-keep] == 0:
        return None
    older = rest[: starts[-keep]]
    first = previous.summary.first_seq if previous and previous.summary else older[0].seq
    head = [previous] if previous is not None else []
    return Summary(first, older[-1].seq), [*head, *older]


def _quote(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "..."


def _line(message: Message) -> str:
    if message.summary is not None:
        return f"[earlier summary]\n{message.text}"
    said: list[str] = []
    for part in message.parts:
        if part.thought:
            continue
        if part.text is not None:
            said.append(part.text)
        elif part.function_call is not None:
            call = part.function_call
            said.append(f"[called {call.name} with {_quote(call.args)}]")
        elif part.function_response is not None:
            response = part.function_response
            said.append(f"[{response.name} returned {_quote(response.response)}]")
        elif part.inline_data is not None or part.file_data is not None:
            blob = part.inline_data or part.file_data
            assert blob is not None
            said.append(f"[{blob.mime_type} content]")
    who = "user" if message.role is Role.USER else "model"
    return f"{who}: {' '.join(said)}"


def transcript(messages: Sequence[Message]) -> str:
    """The messages to summarise as plain text, one speaker's message a paragraph.

    Function calls and results are quoted in words (at most MAX_QUOTED characters
    each), so the summarising request needs no tools and carries no thought signatures.
    """
    return "\n\n".join(_line(m) for m in messages)


def summarising_request_text(messages: Sequence[Message], compaction: Compaction) -> str:
    """The one user message that asks the model for a summary of `messages`."""
    instructions = compaction.instructions or DEFAULT_INSTRUCTIONS
    return f"{instructions}\n\n<conversation>\n\n{transcript(messages)}\n\n</conversation>"
