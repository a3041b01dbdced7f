"""Proto <-> domain conversion for message content: parts, messages, usage, finish reasons."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import timestamp_pb2

from chatd.v1 import content_pb2 as pb
from server.providers.gemini.part_json import part_json_problem
from server.rpc.json_codec import object_input, object_output
from server.rpc.metadata_codec import candidate_metadata_to_pb
from server.sessions.errors import InvalidArgument
from server.sessions.ids import message_id, parse_message_id
from server.sessions.model import (
    JSON,
    Blob,
    CodeExecutionResult,
    ExecutableCode,
    FileData,
    FinishReason,
    FunctionCall,
    FunctionResponse,
    FunctionResponsePart,
    Message,
    Part,
    Role,
    ServerToolCall,
    ServerToolResponse,
    Summary,
    Usage,
)
from server.sessions.values import json_text, parse_json_text

FINISH_TO_PB = {r: pb.FinishReason.Value(f"FINISH_REASON_{r.value}") for r in FinishReason}
ROLE_TO_PB = {Role.USER: pb.ROLE_USER, Role.MODEL: pb.ROLE_MODEL}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}


def _gemini_part(text: str, field: str) -> JSON:
    """A part given as Gemini JSON, refused now if google-genai would not take it: it is
    sent through google-genai in every later turn, which would refuse each of them."""
    value = parse_json_text(text, field)
    if (problem := part_json_problem(value)) is not None:
        raise InvalidArgument(field, f"not a Gemini Part ({problem})", reason="INVALID_GEMINI_PART")
    return value


def seconds_of(value: timestamp_pb2.Timestamp, field: str) -> float:
    try:
        return value.ToMicroseconds() / 1e6
    except ValueError:
        raise InvalidArgument(
            field, "is not a valid timestamp", reason="TIMESTAMP_INVALID"
        ) from None


def timestamp(seconds: float, out: timestamp_pb2.Timestamp) -> None:
    out.FromMicroseconds(round(seconds * 1_000_000))


def _blob_to_pb(blob: Blob, out: pb.Blob) -> None:
    out.mime_type = blob.mime_type
    out.data = blob.data
    out.display_name = blob.display_name


def _file_to_pb(file: FileData, out: pb.FileData) -> None:
    out.mime_type = file.mime_type
    out.file_uri = file.file_uri
    out.display_name = file.display_name


def part_to_pb(part: Part, out: pb.Part) -> None:
    if part.text is not None:
        out.text = part.text
    elif part.inline_data is not None:
        _blob_to_pb(part.inline_data, out.inline_data)
    elif part.file_data is not None:
        _file_to_pb(part.file_data, out.file_data)
    elif part.function_call is not None:
        function_call_to_pb(part.function_call, out.function_call)
    elif part.function_response is not None:
        function_response_to_pb(part.function_response, out.function_response)
    elif (code := part.executable_code) is not None:
        out.executable_code.language = code.language
        out.executable_code.code = code.code
        out.executable_code.id = code.id
    elif (result := part.code_execution_result) is not None:
        out.code_execution_result.outcome = result.outcome
        out.code_execution_result.output = result.output
        out.code_execution_result.id = result.id
    elif (call := part.tool_call) is not None:
        out.tool_call.id = call.id
        out.tool_call.tool_type = call.tool_type
        out.tool_call.args_json = json_text(call.args)
    elif (answer := part.tool_response) is not None:
        out.tool_response.id = answer.id
        out.tool_response.tool_type = answer.tool_type
        out.tool_response.response_json = json_text(answer.response)
    elif part.gemini_part is not None:
        out.gemini_part = json_text(part.gemini_part)
    out.thought = part.thought
    out.thought_signature = part.thought_signature
    if part.media_resolution:
        out.media_resolution = pb.MediaResolution.Value(part.media_resolution)


def function_call_to_pb(call: FunctionCall, out: pb.FunctionCall) -> None:
    out.id = call.id
    out.name = call.name
    object_output(call.args, out, "args", "args_json")


def function_response_to_pb(response: FunctionResponse, out: pb.FunctionResponse) -> None:
    out.id = response.id
    out.name = response.name
    object_output(response.response, out, "response", "response_json")
    response_parts_to_pb(response.parts, out.parts)


def response_parts_to_pb(parts: Sequence[FunctionResponsePart], out: Any) -> None:
    """Appends each function response part to a repeated FunctionResponsePart field."""
    for part in parts:
        item = out.add()
        if part.inline_data is not None:
            _blob_to_pb(part.inline_data, item.inline_data)
        elif part.file_data is not None:
            _file_to_pb(part.file_data, item.file_data)


def response_parts_from_pb(
    parts: Sequence[pb.FunctionResponsePart], field: str
) -> tuple[FunctionResponsePart, ...]:
    out = []
    for i, part in enumerate(parts):
        match part.WhichOneof("data"):
            case "inline_data":
                b = part.inline_data
                out.append(
                    FunctionResponsePart(inline_data=Blob(b.mime_type, b.data, b.display_name))
                )
            case "file_data":
                f = part.file_data
                out.append(
                    FunctionResponsePart(
                        file_data=FileData(f.mime_type, f.file_uri, f.display_name)
                    )
                )
            case _:
                raise InvalidArgument(
                    f"{field}[{i}]", "set inline_data or file_data", reason="MEDIA_MISSING"
                )
    return tuple(out)


def function_call_from_pb(call: pb.FunctionCall, field: str) -> FunctionCall:
    args = object_input(call, "args", "args_json", field) or {}
    return FunctionCall(call.id, call.name, args)


def function_response_from_pb(response: pb.FunctionResponse, field: str) -> FunctionResponse:
    value = object_input(response, "response", "response_json", field) or {}
    parts = response_parts_from_pb(response.parts, f"{field}.parts")
    return FunctionResponse(response.id, response.name, value, parts)


def _json_object(text: str, field: str) -> dict[str, Any]:
    value: dict[str, Any] = parse_json_text(text, field) if text else {}
    return value


def part_from_pb(part: pb.Part, field: str) -> Part:
    kind = part.WhichOneof("data")
    extra: dict[str, Any] = {
        "thought": part.thought,
        "thought_signature": part.thought_signature,
        "media_resolution": media_resolution_from_pb(part.media_resolution),
    }
    if kind == "text":
        return Part(text=part.text, **extra)
    if kind == "inline_data":
        blob = part.inline_data
        return Part(inline_data=Blob(blob.mime_type, blob.data, blob.display_name), **extra)
    if kind == "file_data":
        f = part.file_data
        return Part(file_data=FileData(f.mime_type, f.file_uri, f.display_name), **extra)
    if kind == "function_call":
        call = function_call_from_pb(part.function_call, f"{field}.function_call")
        return Part(function_call=call, **extra)
    if kind == "function_response":
        response = function_response_from_pb(part.function_response, f"{field}.function_response")
        return Part(function_response=response, **extra)
    if kind == "executable_code":
        c = part.executable_code
        return Part(executable_code=ExecutableCode(c.language, c.code, c.id), **extra)
    if kind == "code_execution_result":
        r = part.code_execution_result
        return Part(code_execution_result=CodeExecutionResult(r.outcome, r.output, r.id), **extra)
    if kind == "tool_call":
        t = part.tool_call
        args = _json_object(t.args_json, f"{field}.tool_call.args_json")
        return Part(tool_call=ServerToolCall(t.id, t.tool_type, args), **extra)
    if kind == "tool_response":
        t2 = part.tool_response
        response_value = _json_object(t2.response_json, f"{field}.tool_response.response_json")
        return Part(tool_response=ServerToolResponse(t2.id, t2.tool_type, response_value), **extra)
    if kind == "gemini_part":
        return Part(gemini_part=_gemini_part(part.gemini_part, f"{field}.gemini_part"))
    if part.thought_signature:
        # A signature-only part, as the model sends them.
        return Part(**extra)
    raise InvalidArgument(
        field,
        "has no content: set one of text, inline_data, file_data, function_call, "
        "function_response, executable_code, code_execution_result, tool_call, "
        "tool_response or gemini_part (or only a thought_signature)",
        reason="PART_EMPTY",
    )


_RESOLUTIONS: dict[int, str] = {
    value: name
    for name, value in pb.MediaResolution.items()
    if value != pb.MEDIA_RESOLUTION_UNSPECIFIED
}


def media_resolution_from_pb(value: int) -> str:
    """The MediaResolution name, "" when unset (an unknown number is left unset too)."""
    return _RESOLUTIONS.get(value, "")


def parts_from_pb(parts: Sequence[pb.Part], field: str) -> tuple[Part, ...]:
    return tuple(part_from_pb(p, f"{field}[{i}]") for i, p in enumerate(parts))


def usage_to_pb(usage: Usage, out: pb.UsageMetadata) -> None:
    out.prompt_token_count = usage.prompt_tokens
    out.candidates_token_count = usage.candidates_tokens
    out.total_token_count = usage.total_tokens
    out.thoughts_token_count = usage.thoughts_tokens
    out.cached_content_token_count = usage.cached_tokens
    out.tool_use_prompt_token_count = usage.tool_use_prompt_tokens
    for name, attribute in _DETAILS:
        for modality, count in getattr(usage, attribute):
            getattr(out, name).add(modality=modality, token_count=count)
    out.traffic_type = usage.traffic_type


_DETAILS = (
    ("prompt_tokens_details", "prompt_details"),
    ("candidates_tokens_details", "candidates_details"),
    ("cache_tokens_details", "cache_details"),
    ("tool_use_prompt_tokens_details", "tool_use_prompt_details"),
)


def message_to_pb(message: Message, out: pb.Message) -> None:
    out.message_id = message_id(message.seq)
    out.role = ROLE_TO_PB[message.role]
    for part in message.parts:
        part_to_pb(part, out.parts.add())
    timestamp(message.create_time, out.create_time)
    out.turn_id = message.turn_id
    if message.usage is not None:
        usage_to_pb(message.usage, out.usage)
    if message.finish_reason is not None:
        out.finish_reason = FINISH_TO_PB[message.finish_reason]
    out.model = message.model
    if message.candidate_metadata is not None:
        candidate_metadata_to_pb(message.candidate_metadata, out.candidate_metadata)
    if message.summary is not None:
        out.summary.first_message_id = message_id(message.summary.first_seq)
        out.summary.last_message_id = message_id(message.summary.last_seq)


def messages_to_pb(messages: Iterable[Message], out: Any) -> None:
    """Appends each message to a repeated Message field."""
    for message in messages:
        message_to_pb(message, out.add())


def contents_from_pb(contents: Sequence[pb.Content], field: str) -> tuple[Message, ...]:
    """Caller-supplied history: each content needs a role and at least one part."""
    messages = []
    for i, content in enumerate(contents):
        where = f"{field}[{i}]"
        role = ROLE_FROM_PB.get(content.role)
        if role is None:
            raise InvalidArgument(
                f"{where}.role", "must be ROLE_USER or ROLE_MODEL", reason="ROLE_INVALID"
            )
        if not content.parts:
            raise InvalidArgument(
                f"{where}.parts", "must hold at least one part", reason="PARTS_EMPTY"
            )
        messages.append(Message(role, parts_from_pb(content.parts, f"{where}.parts")))
    return tuple(messages)


def content_to_pb(message: Message, out: pb.Content) -> None:
    out.role = ROLE_TO_PB[message.role]
    for part in message.parts:
        part_to_pb(part, out.parts.add())


def usage_from_pb(usage: pb.UsageMetadata) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_token_count,
        candidates_tokens=usage.candidates_token_count,
        total_tokens=usage.total_token_count,
        thoughts_tokens=usage.thoughts_token_count,
        cached_tokens=usage.cached_content_token_count,
        tool_use_prompt_tokens=usage.tool_use_prompt_token_count,
        **{
            attribute: tuple((d.modality, d.token_count) for d in getattr(usage, name))
            for name, attribute in _DETAILS
        },
        traffic_type=usage.traffic_type,
    )


FINISH_FROM_PB = {v: k for k, v in FINISH_TO_PB.items()}


def message_from_pb(message: pb.Message, field: str, *, keep_ids: bool) -> Message:
    """A caller-supplied message; with `keep_ids` (an import) every stored field is read."""
    role = ROLE_FROM_PB.get(message.role)
    if role is None:
        raise InvalidArgument(
            f"{field}.role", "must be ROLE_USER or ROLE_MODEL", reason="ROLE_INVALID"
        )
    parts = parts_from_pb(message.parts, f"{field}.parts")
    if not keep_ids:
        return Message(role, parts)
    seq = parse_message_id(f"{field}.message_id", message.message_id)
    return Message(
        role,
        parts,
        seq=seq,
        create_time=seconds_of(message.create_time, f"{field}.create_time"),
        turn_id=message.turn_id,
        usage=usage_from_pb(message.usage) if message.HasField("usage") else None,
        finish_reason=FINISH_FROM_PB.get(message.finish_reason) if message.finish_reason else None,
        model=message.model,
        candidate_metadata=(
            parse_json_text(message.candidate_metadata.json, f"{field}.candidate_metadata.json")
            if message.candidate_metadata.json
            else None
        ),
        summary=(
            _summary_from_pb(message.summary, seq, f"{field}.summary")
            if message.HasField("summary")
            else None
        ),
    )


def _summary_from_pb(summary: pb.Summary, seq: int, field: str) -> Summary:
    """An imported summary's range: it must end before the summary itself."""
    first = parse_message_id(f"{field}.first_message_id", summary.first_message_id)
    last = parse_message_id(f"{field}.last_message_id", summary.last_message_id)
    if not first <= last < seq:
        raise InvalidArgument(
            field,
            "first_message_id must not be after last_message_id, which must be before "
            "the summary's own message_id",
            reason="SUMMARY_INVALID",
        )
    return Summary(first, last)
