"""What a running turn reports, in order, to whoever streams or awaits it."""

from __future__ import annotations

from dataclasses import dataclass

from server.sessions.model import FinishReason, FunctionCall, FunctionResponse, Message, Usage


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    thought: bool = False


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


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    reply: TurnReply


TurnEvent = TextDelta | ToolCallRequested | ToolCallAnswered | MessageCompleted | TurnCompleted
