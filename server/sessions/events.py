"""What a running turn reports, in order, to whoever streams or awaits it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from server.sessions.model import (
    FinishReason,
    FunctionCall,
    FunctionResponse,
    JSONObject,
    Message,
    Part,
    Usage,
)


class TextDelta(NamedTuple):
    """A piece of the model's text as it arrives (one per streamed chunk: a NamedTuple,
    cheaper to make than a frozen dataclass)."""

    text: str
    thought: bool = False


@dataclass(frozen=True, slots=True)
class PartReceived:
    """A part of the model's answer other than text and function calls (executable code,
    a code execution result, Gemini's own tool calls, data), as soon as it arrives."""

    part: Part


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    call: FunctionCall
    caller_executed: bool


@dataclass(frozen=True, slots=True)
class ToolCallAnswered:
    response: FunctionResponse
    is_error: bool
    duration: float


@dataclass(frozen=True, slots=True)
class MessageCompleted:
    message: Message


@dataclass(frozen=True, slots=True)
class TurnReply:
    """The outcome of a turn: what SendMessage returns and StreamReply ends with."""

    turn_id: str
    text: str
    messages: tuple[Message, ...]
    finish_reason: FinishReason
    usage: Usage
    pending_tool_calls: tuple[FunctionCall, ...] = ()
    model: str = ""
    block_reason: str = ""
    # The last model answer's candidate metadata (grounding, citations, ...).
    candidate_metadata: JSONObject | None = None
    # The model's last answer had no content; `no_content_reason` says what happened.
    no_content: bool = False
    no_content_reason: str = ""
    # Nothing of the turn was stored; the user's message that was not.
    unstored_message: Message | None = None
    # What the model said about the prompt of its last call (camelCase JSON).
    prompt_feedback: JSONObject | None = None
    # The reply (this run of the turn) it ends.
    reply_id: str = ""


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    reply: TurnReply


@dataclass(frozen=True, slots=True)
class ReplyStarted:
    """Comes before a reply's events: the id it is known by (not an event of the reply
    itself: it has no sequence number)."""

    reply_id: str


TurnEvent = (
    TextDelta
    | PartReceived
    | ToolCallRequested
    | ToolCallAnswered
    | MessageCompleted
    | TurnCompleted
)
