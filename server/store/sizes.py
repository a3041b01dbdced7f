"""Cheap estimates of how many bytes a cached session or message holds.

The fixed costs are CPython 3.11's (64-bit) as tracemalloc measures them, plus what
the allocator rounds up (pymalloc hands out 16-byte size classes up to 512 bytes):
a `Message` with its parts tuple and `create_time` float about 200 bytes, a `Part`
about 150, a `Usage` about 150, a `Session` with its own strings and times about 300
and its settings, unless they are the shared defaults, about 330. Strings count what
`sys.getsizeof` says they hold. An estimate may be high, never much too low: the cache
bounds these, and the process's memory follows them (bench/README.md, "Memory").
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from server.sessions.model import Message, Part, Session
from server.store.codec import DEFAULT_SETTINGS, ZERO_USAGE

MESSAGE_OVERHEAD = 216  # Message 112, its parts tuple 64, create_time 32, a list slot 8
PART_OVERHEAD = 160
USAGE_SIZE = 160
SESSION_OVERHEAD = 320  # Session 144, two times 64, uid and id beyond their text ~112
SETTINGS_OVERHEAD = 400  # SessionSettings and the labels, policy and tools in it
# An entry and its place in the cache: the Entry, its empty list, the key and the
# ordered dict's slot and node for it.
ENTRY_OVERHEAD = 360
BYTES_OVERHEAD = 48  # a bytes object's header, rounded up
STR_OVERHEAD = 57  # an ASCII str's header (49), and half a size class
JSON_FACTOR = 4  # decoded JSON (dicts, lists, strings) per byte of its encoding
_sizeof = sys.getsizeof


def _str(text: str) -> int:
    # getsizeof is exact but slower; ASCII text, the usual kind, is one byte a character.
    return len(text) + STR_OVERHEAD if text.isascii() else _sizeof(text) + 8


def with_headroom(size: int) -> int:
    """What `size` bytes of live objects cost the process (RSS): 30 % more.

    The allocators' pools and chunks, and the holes churn leaves in them: with
    bench.memory's sessions RSS grew by about 1.2x what tracemalloc counted, and the
    rest leaves room for what reading a large database costs beyond the cache.
    """
    return size + size * 3 // 10


def packed_size(data: bytes) -> int:
    """Bytes a packed history of `data` holds (0 for the shared empty bytes)."""
    return len(data) + BYTES_OVERHEAD if data else 0


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
    if (text := part.text) is not None:
        size += len(text) + STR_OVERHEAD if text.isascii() else _str(text)
    if (blob := part.inline_data) is not None:
        size += len(blob.data) + len(blob.mime_type) + len(blob.display_name)
    if (file := part.file_data) is not None:
        size += len(file.file_uri) + len(file.mime_type) + len(file.display_name)
    if (call := part.function_call) is not None:
        size += len(call.id) + len(call.name) + json_size(call.args) * JSON_FACTOR
    if (resp := part.function_response) is not None:
        size += len(resp.id) + len(resp.name) + json_size(resp.response) * JSON_FACTOR
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
        size += (
            len(tool_call.id) + len(tool_call.tool_type) + json_size(tool_call.args) * JSON_FACTOR
        )
    if (answer := part.tool_response) is not None:
        size += len(answer.id) + len(answer.tool_type) + json_size(answer.response) * JSON_FACTOR
    if part.gemini_part is not None:
        size += json_size(part.gemini_part) * JSON_FACTOR
    return size


def message_size(message: Message) -> int:
    """Bytes one decoded message holds, its turn id and model name included."""
    turn_id = message.turn_id
    size = MESSAGE_OVERHEAD + (len(turn_id) + STR_OVERHEAD if turn_id.isascii() else _str(turn_id))
    for part in message.parts:
        size += part_size(part)
    if (usage := message.usage) is not None and usage is not ZERO_USAGE:
        size += USAGE_SIZE
    if model := message.model:
        size += _str(model)
    if message.candidate_metadata:
        size += json_size(message.candidate_metadata) * JSON_FACTOR
    return size


def session_size(session: Session) -> int:
    """Bytes one cached session holds beyond what it shares with others."""
    size = SESSION_OVERHEAD + len(session.session_id) + len(session.uid)
    if session.usage is not ZERO_USAGE:
        size += USAGE_SIZE
    if session.pending is not None:
        size += 2 * sum(json_size(c.args) + SETTINGS_OVERHEAD for c in session.pending.calls)
    s = session.settings
    if s is DEFAULT_SETTINGS:
        return size
    return (
        size
        + SETTINGS_OVERHEAD
        + len(s.model)
        + len(s.system_instruction)
        + len(s.display_name)
        + json_size(s.labels)
        + json_size(s.tools)
        + sum(json_size(d.parameters) + len(d.description) for d in s.function_declarations)
        + json_size(s.generation_config.response_json_schema)
    )
