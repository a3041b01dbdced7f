"""Proto <-> domain conversion for turns: the caller's input, stream events and the reply."""

from __future__ import annotations

from chatd.v1 import chat_service_pb2 as pb
from server.rpc.content_codec import (
    FINISH_TO_PB,
    dict_to_struct,
    function_call_to_pb,
    json_value,
    message_to_pb,
    messages_to_pb,
    parts_from_pb,
    usage_to_pb,
)
from server.rpc.session_codec import generation_config_from_pb
from server.sessions.engine import TurnInput
from server.sessions.errors import InvalidArgument
from server.sessions.events import (
    MessageCompleted,
    TextDelta,
    ToolCallAnswered,
    ToolCallRequested,
    TurnCompleted,
    TurnEvent,
    TurnReply,
)
from server.sessions.model import Part
from server.sessions.tool_calls import ToolResultInput

TurnRequest = pb.SendMessageRequest | pb.StreamReplyRequest


def turn_input(request: TurnRequest, timeout: float | None, *, stream_text: bool) -> TurnInput:
    """The turn a SendMessage or StreamReply request asks for (both share field numbers)."""
    if request.text and request.parts:
        raise InvalidArgument("parts", "set either text or parts, not both")
    parts = (Part(text=request.text),) if request.text else parts_from_pb(request.parts, "parts")
    override = None
    if request.HasField("generation_config"):
        override = generation_config_from_pb(request.generation_config)
    return TurnInput(
        parts=parts,
        tool_results=tuple(tool_result_from_pb(r, i) for i, r in enumerate(request.tool_results)),
        config_override=override,
        timeout=timeout,
        stream_text=stream_text,
    )


def tool_result_from_pb(result: pb.ToolResult, index: int) -> ToolResultInput:
    field = f"tool_results[{index}]"
    if not result.call_id:
        raise InvalidArgument(f"{field}.call_id", "is required")
    match result.WhichOneof("outcome"):
        case "result":
            value = json_value(result.result, f"{field}.result")
            return ToolResultInput(result.call_id, {"result": value}, is_error=False)
        case "error":
            return ToolResultInput(result.call_id, {"error": result.error}, is_error=True)
    raise InvalidArgument(field, "set result (any JSON value) or error (a message)")


def reply_to_pb(reply: TurnReply, out: pb.Reply) -> None:
    out.turn_id = reply.turn_id
    out.text = reply.text
    messages_to_pb(reply.messages, out.messages)
    out.finish_reason = FINISH_TO_PB[reply.finish_reason]
    usage_to_pb(reply.usage, out.usage)
    for call in reply.pending_tool_calls:
        function_call_to_pb(call, out.pending_tool_calls.add())
    out.model = reply.model
    out.block_reason = reply.block_reason


def event_to_pb(event: TurnEvent, sequence_number: int) -> pb.StreamReplyResponse:
    out = pb.StreamReplyResponse(sequence_number=sequence_number)
    match event:
        case TextDelta(text=text, thought=thought):
            out.text_delta.text = text
            out.text_delta.thought = thought
        case MessageCompleted(message=message):
            message_to_pb(message, out.message)
            # The turn is not stored yet and may never be: an id announced now could
            # later name other content. The final reply carries the stored ids.
            out.message.message_id = ""
        case TurnCompleted(reply=reply):
            reply_to_pb(reply, out.reply)
        case ToolCallRequested(call=call, caller_executed=caller_executed):
            function_call_to_pb(call, out.tool_call.function_call)
            out.tool_call.caller_executed = caller_executed
        case ToolCallAnswered(response=response, is_error=is_error, duration=duration):
            result = out.tool_result
            result.function_response.id = response.id
            result.function_response.name = response.name
            dict_to_struct(response.response, result.function_response.response)
            result.is_error = is_error
            result.duration.FromNanoseconds(round(duration * 1e9))
    return out
