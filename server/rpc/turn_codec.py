"""Proto <-> domain conversion for turns: the caller's input, stream events and the reply."""

from __future__ import annotations

from chatd.v1 import chat_service_pb2 as pb
from server.rpc.content_codec import (
    function_call_to_pb,
    function_response_to_pb,
    message_to_pb,
    messages_to_pb,
    part_to_pb,
    parts_from_pb,
    response_parts_from_pb,
)
from server.rpc.generation_codec import answer_to_pb
from server.rpc.json_codec import json_value
from server.rpc.session_codec import generation_config_from_pb
from server.sessions.engine import TurnInput
from server.sessions.errors import InvalidArgument
from server.sessions.events import (
    MessageCompleted,
    PartReceived,
    TextDelta,
    ToolCallAnswered,
    ToolCallRequested,
    TurnCompleted,
    TurnEvent,
    TurnReply,
)
from server.sessions.model import Part
from server.sessions.tool_calls import ToolResultInput
from server.sessions.values import parse_json_text

TurnRequest = pb.SendMessageRequest | pb.StreamReplyRequest


def turn_input(request: TurnRequest, timeout: float | None, *, stream_text: bool) -> TurnInput:
    """The turn a SendMessage or StreamReply request asks for (both share field numbers)."""
    if request.text and request.parts:
        raise InvalidArgument(
            "parts", "set either text or parts, not both", reason="FIELDS_CONFLICT"
        )
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
        raise InvalidArgument(f"{field}.call_id", "is required", reason="FIELD_REQUIRED")
    parts = response_parts_from_pb(result.parts, f"{field}.parts")
    match result.WhichOneof("outcome"):
        case "result":
            value = json_value(result.result, f"{field}.result")
            return ToolResultInput(result.call_id, {"result": value}, False, parts)
        case "result_json":
            value = parse_json_text(result.result_json, f"{field}.result_json", want_object=False)
            return ToolResultInput(result.call_id, {"result": value}, False, parts)
        case "error":
            return ToolResultInput(result.call_id, {"error": result.error}, True, parts)
    raise InvalidArgument(
        field,
        "set result (a google.protobuf.Value), result_json (JSON text) or error (a message)",
        reason="TOOL_RESULT_INVALID",
    )


def reply_to_pb(reply: TurnReply, out: pb.Reply) -> None:
    out.turn_id = reply.turn_id
    out.text = reply.text
    messages_to_pb(reply.messages, out.messages)
    answer_to_pb(reply, out)
    for call in reply.pending_tool_calls:
        function_call_to_pb(call, out.pending_tool_calls.add())
    out.no_content_reason = reply.no_content_reason
    out.reply_id = reply.reply_id
    if reply.unstored_message is not None:
        out.not_stored = True
        message_to_pb(reply.unstored_message, out.unstored_message)
        out.unstored_message.message_id = ""


def event_to_pb(event: TurnEvent, sequence_number: int) -> pb.StreamReplyResponse:
    out = pb.StreamReplyResponse(sequence_number=sequence_number)
    match event:
        case TextDelta(text=text, thought=thought):
            out.text_delta.text = text
            out.text_delta.thought = thought
        case PartReceived(part=part):
            part_to_pb(part, out.part)
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
            function_response_to_pb(response, result.function_response)
            result.is_error = is_error
            result.duration.FromNanoseconds(round(duration * 1e9))
    return out
