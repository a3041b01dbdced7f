"""Cheap estimates of how many bytes a cached session or message holds."""

from __future__ import annotations

from collections.abc import Mapping

from server.sessions.model import Message, Part, Session

# Fixed costs approximate CPython object headers; exactness does not matter, only that
# the estimate grows with what a caller controls (text, bytes, JSON arguments).
MESSAGE_OVERHEAD = 200
PART_OVERHEAD = 120
SESSION_OVERHEAD = 1000


def json_size(value: object) -> int:
    """Roughly the encoded size of a JSON value, walked without encoding it."""
    if isinstance(value, str | bytes):
        return len(value) + 2
    if isinstance(value, Mapping):
        return 2 + sum(len(str(k)) + 4 + json_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return 2 + sum(json_size(v) + 1 for v in value)
    return 8


def part_size(part: Part) -> int:
    size = PART_OVERHEAD + len(part.thought_signature)
    if part.text is not None:
        size += len(part.text)
    if (blob := part.inline_data) is not None:
        size += len(blob.data) + len(blob.mime_type) + len(blob.display_name)
    if (file := part.file_data) is not None:
        size += len(file.file_uri) + len(file.mime_type) + len(file.display_name)
    if (call := part.function_call) is not None:
        size += len(call.id) + len(call.name) + json_size(call.args)
    if (resp := part.function_response) is not None:
        size += len(resp.id) + len(resp.name) + json_size(resp.response)
        for media in resp.parts:
            if media.inline_data is not None:
                size += PART_OVERHEAD + len(media.inline_data.data)
            if media.file_data is not None:
                size += PART_OVERHEAD + len(media.file_data.file_uri)
    if (code := part.executable_code) is not None:
        size += len(code.code) + len(code.language) + len(code.id)
    if (result := part.code_execution_result) is not None:
        size += len(result.output) + len(result.outcome) + len(result.id)
    if (tool_call := part.tool_call) is not None:
        size += len(tool_call.id) + len(tool_call.tool_type) + json_size(tool_call.args)
    if (answer := part.tool_response) is not None:
        size += len(answer.id) + len(answer.tool_type) + json_size(answer.response)
    if part.gemini_part is not None:
        size += json_size(part.gemini_part)
    return size


def message_size(message: Message) -> int:
    return (
        MESSAGE_OVERHEAD
        + len(message.turn_id)
        + len(message.model)
        + sum(part_size(p) for p in message.parts)
        + (json_size(message.candidate_metadata) if message.candidate_metadata else 0)
    )


def session_size(session: Session) -> int:
    s = session.settings
    return (
        SESSION_OVERHEAD
        + len(session.tenant)
        + len(session.session_id)
        + len(s.system_instruction)
        + json_size(s.labels)
        + json_size(s.tools)
        + sum(json_size(d.parameters) + len(d.description) for d in s.function_declarations)
        + json_size(s.generation_config.response_json_schema)
        + sum(json_size(c.args) for c in session.pending_tool_calls)
    )
