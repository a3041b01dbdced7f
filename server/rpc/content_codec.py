"""Proto <-> domain conversion for message content: parts, messages, usage, finish reasons."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from chatd.v1 import content_pb2 as pb
from server.sessions.errors import InvalidArgument
from server.sessions.ids import message_id, parse_message_id
from server.sessions.model import (
    Blob,
    FileData,
    FinishReason,
    FunctionCall,
    FunctionResponse,
    Message,
    Part,
    Role,
    Usage,
)

FINISH_TO_PB = {r: pb.FinishReason.Value(f"FINISH_REASON_{r.value}") for r in FinishReason}
ROLE_TO_PB = {Role.USER: pb.ROLE_USER, Role.MODEL: pb.ROLE_MODEL}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}


def struct_to_dict(value: struct_pb2.Struct, field: str) -> dict[str, Any]:
    converted: dict[str, Any] = json_value(value, field)
    return converted


class _Unreadable(Exception):
    """A Value inside a caller's Struct or Value that is not JSON; `path` locates it."""

    def __init__(self, problem: str, path: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path


def json_value(value: struct_pb2.Struct | struct_pb2.Value, field: str) -> Any:
    """A Struct or Value as plain JSON, refusing what JSON (and so Gemini and chatd's
    storage) cannot hold, naming the field: NaN or Infinity, and a Value with no kind set
    (what a client sends for a value it never filled in; an explicit null_value is JSON's
    null)."""
    try:
        if isinstance(value, struct_pb2.Struct):
            return _struct(value)
        return _value(value)
    except _Unreadable as bad:
        where = f" at {field}{bad.path}" if bad.path else ""
        raise InvalidArgument(field, f"{bad.problem}{where}") from None


def _struct(value: struct_pb2.Struct) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.fields.items():
        try:
            out[key] = _value(item)
        except _Unreadable as bad:
            bad.path = f".{key}{bad.path}"
            raise
    return out


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise _Unreadable("numbers must be finite (no NaN or Infinity)")
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        items = []
        for i, item in enumerate(value.list_value.values):
            try:
                items.append(_value(item))
            except _Unreadable as bad:
                bad.path = f"[{i}]{bad.path}"
                raise
        return items
    if kind == "null_value":
        return None
    raise _Unreadable(
        "a google.protobuf.Value has no kind set: set one of null_value, number_value, "
        "string_value, bool_value, struct_value or list_value"
    )


def seconds_of(value: timestamp_pb2.Timestamp, field: str) -> float:
    try:
        return value.ToMicroseconds() / 1e6
    except ValueError:
        raise InvalidArgument(field, "is not a valid timestamp") from None


def dict_to_struct(value: Any, out: struct_pb2.Struct) -> None:
    out.Clear()
    out.update(value)


def timestamp(seconds: float, out: timestamp_pb2.Timestamp) -> None:
    out.FromMicroseconds(round(seconds * 1_000_000))


def part_to_pb(part: Part, out: pb.Part) -> None:
    if part.text is not None:
        out.text = part.text
    elif part.inline_data is not None:
        blob = part.inline_data
        out.inline_data.mime_type = blob.mime_type
        out.inline_data.data = blob.data
        out.inline_data.display_name = blob.display_name
    elif part.file_data is not None:
        out.file_data.mime_type = part.file_data.mime_type
        out.file_data.file_uri = part.file_data.file_uri
        out.file_data.display_name = part.file_data.display_name
    elif part.function_call is not None:
        function_call_to_pb(part.function_call, out.function_call)
    elif part.function_response is not None:
        out.function_response.id = part.function_response.id
        out.function_response.name = part.function_response.name
        dict_to_struct(part.function_response.response, out.function_response.response)
    out.thought = part.thought
    out.thought_signature = part.thought_signature
    if part.media_resolution:
        out.media_resolution = pb.MediaResolution.Value(part.media_resolution)


def function_call_to_pb(call: FunctionCall, out: pb.FunctionCall) -> None:
    out.id = call.id
    out.name = call.name
    dict_to_struct(call.args, out.args)


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
        c = part.function_call
        args = struct_to_dict(c.args, f"{field}.function_call.args")
        return Part(function_call=FunctionCall(c.id, c.name, args), **extra)
    if kind == "function_response":
        r = part.function_response
        response = FunctionResponse(
            r.id, r.name, struct_to_dict(r.response, f"{field}.function_response.response")
        )
        return Part(function_response=response, **extra)
    raise InvalidArgument(field, "has no content: set one of text, inline_data, file_data, ...")


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
            raise InvalidArgument(f"{where}.role", "must be ROLE_USER or ROLE_MODEL")
        if not content.parts:
            raise InvalidArgument(f"{where}.parts", "must hold at least one part")
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
        raise InvalidArgument(f"{field}.role", "must be ROLE_USER or ROLE_MODEL")
    parts = parts_from_pb(message.parts, f"{field}.parts")
    if not keep_ids:
        return Message(role, parts)
    return Message(
        role,
        parts,
        seq=parse_message_id(f"{field}.message_id", message.message_id),
        create_time=seconds_of(message.create_time, f"{field}.create_time"),
        turn_id=message.turn_id,
        usage=usage_from_pb(message.usage) if message.HasField("usage") else None,
        finish_reason=FINISH_FROM_PB.get(message.finish_reason) if message.finish_reason else None,
        model=message.model,
    )
