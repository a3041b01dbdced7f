"""Lossless conversion between domain values and compact JSON for storage rows.

Written out by hand rather than through a serialization library (dataclasses.asdict,
pydantic, cattrs, msgspec), because the stored JSON is a format chatd reads back for as
long as a database lives, and the domain's frozen dataclasses are not that format:

- keys are literals here, not the Python field names, so renaming a field changes
  nothing stored; defaults are left out (unset config fields, empty ids, false flags),
  which keeps rows small;
- what JSON cannot hold as it is gets a chosen encoding: bytes as base64, parts chatd
  does not model kept whole (`gemini_part`), lone surrogates kept in packed records;
  large integers are read back exactly (orjson only where it is exact, json otherwise);
- the cache's packed form (`pack_messages`) is a record per message with positional
  fields and text-only parts as bare strings, about 92 B a message for the benchmark's
  short ones (bench/README.md).

The domain imports only the standard library, so a schema library would either enter it
or describe every type a second time beside it; this module is that second description,
without one.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import orjson

from server.sessions.fast_json import loads_exact
from server.sessions.model import (
    Blob,
    BuiltinTools,
    CodeExecutionResult,
    Compaction,
    ContextPolicy,
    ExecutableCode,
    FileData,
    FinishReason,
    FunctionCall,
    FunctionDeclaration,
    FunctionResponse,
    FunctionResponsePart,
    GenerationConfig,
    Message,
    Part,
    PendingTurn,
    Role,
    SafetySetting,
    ServerToolCall,
    ServerToolResponse,
    SessionSettings,
    Summary,
    ThinkingConfig,
    ToolConfig,
    Usage,
)

Dict = dict[str, Any]

# Enum lookups by value through a dict: Enum(value) is several times slower per row.
ROLES = {r.value: r for r in Role}
FINISH_REASONS = {r.value: r for r in FinishReason}

_USAGE_FIELDS = tuple(f.name for f in fields(Usage))
_USAGE_DETAILS = (
    "prompt_details",
    "candidates_details",
    "cache_details",
    "tool_use_prompt_details",
)
_GEN_FLOATS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_GEN_INTS = ("top_k", "max_output_tokens", "seed")
_GEN_STRINGS = ("response_mime_type", "media_resolution", "service_tier", "cached_content")
_DEFAULT_GENERATION = GenerationConfig()
_DEFAULT_POLICY = ContextPolicy()


def _plain(value: object) -> object:
    # JSON objects reach us as any Mapping (e.g. MappingProxyType); json only knows dict.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_plain)


def dumps(value: object) -> str:
    return _ENCODER.encode(value)


def loads(text: str) -> Any:
    return json.loads(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# ----------------------------------------------------------------------------- parts


def _call_to_dict(name: str, call_id: str, payload_key: str, payload: Mapping[str, Any]) -> Dict:
    d: Dict = {"name": name}
    if call_id:
        d["id"] = call_id
    if payload:
        d[payload_key] = payload
    return d


def function_call_to_dict(call: FunctionCall) -> Dict:
    return _call_to_dict(call.name, call.id, "args", call.args)


def function_call_from_dict(d: Mapping[str, Any]) -> FunctionCall:
    return FunctionCall(id=d.get("id", ""), name=d["name"], args=d.get("args", {}))


def _blob_to_dict(blob: Blob) -> Dict:
    inline: Dict = {"mime_type": blob.mime_type, "data": _b64(blob.data)}
    if blob.display_name:
        inline["display_name"] = blob.display_name
    return inline


def _file_to_dict(file: FileData) -> Dict:
    file_d: Dict = {"mime_type": file.mime_type, "file_uri": file.file_uri}
    if file.display_name:
        file_d["display_name"] = file.display_name
    return file_d


def _blob_from_dict(d: Mapping[str, Any]) -> Blob:
    return Blob(d["mime_type"], _unb64(d["data"]), d.get("display_name", ""))


def _file_from_dict(d: Mapping[str, Any]) -> FileData:
    return FileData(d["mime_type"], d["file_uri"], d.get("display_name", ""))


def function_response_to_dict(resp: FunctionResponse) -> Dict:
    d = _call_to_dict(resp.name, resp.id, "response", resp.response)
    if resp.parts:
        parts: list[Dict] = []
        for p in resp.parts:
            if p.inline_data is not None:
                parts.append({"inline_data": _blob_to_dict(p.inline_data)})
            elif p.file_data is not None:
                parts.append({"file_data": _file_to_dict(p.file_data)})
        d["parts"] = parts
    return d


def function_response_from_dict(d: Mapping[str, Any]) -> FunctionResponse:
    parts = tuple(
        FunctionResponsePart(
            inline_data=_blob_from_dict(p["inline_data"]) if "inline_data" in p else None,
            file_data=_file_from_dict(p["file_data"]) if "file_data" in p else None,
        )
        for p in d.get("parts", ())
    )
    return FunctionResponse(d.get("id", ""), d["name"], d.get("response", {}), parts)


def _with_id(d: Dict, value: str) -> Dict:
    if value:
        d["id"] = value
    return d


def part_to_dict(part: Part) -> Dict:
    d: Dict = {}
    if part.text is not None:
        d["text"] = part.text
    if (blob := part.inline_data) is not None:
        d["inline_data"] = _blob_to_dict(blob)
    if (file := part.file_data) is not None:
        d["file_data"] = _file_to_dict(file)
    if (call := part.function_call) is not None:
        d["function_call"] = function_call_to_dict(call)
    if (resp := part.function_response) is not None:
        d["function_response"] = function_response_to_dict(resp)
    if (code := part.executable_code) is not None:
        d["executable_code"] = _with_id({"language": code.language, "code": code.code}, code.id)
    if (result := part.code_execution_result) is not None:
        d["code_execution_result"] = _with_id(
            {"outcome": result.outcome, "output": result.output}, result.id
        )
    if (tool_call := part.tool_call) is not None:
        d["tool_call"] = _with_id(
            {"tool_type": tool_call.tool_type, "args": tool_call.args}, tool_call.id
        )
    if (tool_response := part.tool_response) is not None:
        d["tool_response"] = _with_id(
            {"tool_type": tool_response.tool_type, "response": tool_response.response},
            tool_response.id,
        )
    if part.gemini_part is not None:
        d["gemini_part"] = part.gemini_part
    if part.thought:
        d["thought"] = True
    if part.thought_signature:
        d["thought_signature"] = _b64(part.thought_signature)
    if part.media_resolution:
        d["media_resolution"] = part.media_resolution
    return d


def part_from_dict(d: Mapping[str, Any]) -> Part:
    inline, file, call, resp = (
        d.get("inline_data"),
        d.get("file_data"),
        d.get("function_call"),
        d.get("function_response"),
    )
    signature = d.get("thought_signature")
    code, result = d.get("executable_code"), d.get("code_execution_result")
    tool_call, tool_response = d.get("tool_call"), d.get("tool_response")
    return Part(
        text=d.get("text"),
        inline_data=None if inline is None else _blob_from_dict(inline),
        file_data=None if file is None else _file_from_dict(file),
        function_call=None if call is None else function_call_from_dict(call),
        function_response=None if resp is None else function_response_from_dict(resp),
        thought=d.get("thought", False),
        thought_signature=b"" if signature is None else _unb64(signature),
        executable_code=None
        if code is None
        else ExecutableCode(code["language"], code["code"], code.get("id", "")),
        code_execution_result=None
        if result is None
        else CodeExecutionResult(result["outcome"], result["output"], result.get("id", "")),
        tool_call=None
        if tool_call is None
        else ServerToolCall(tool_call.get("id", ""), tool_call["tool_type"], tool_call["args"]),
        tool_response=None
        if tool_response is None
        else ServerToolResponse(
            tool_response.get("id", ""), tool_response["tool_type"], tool_response["response"]
        ),
        gemini_part=d.get("gemini_part"),
        media_resolution=d.get("media_resolution", ""),
    )


# ----------------------------------------------------------------------------- messages


def usage_to_dict(usage: Usage) -> Dict:
    # Modality details are kept as [[modality, count], ...].
    return {name: value for name in _USAGE_FIELDS if (value := getattr(usage, name))}


def usage_from_dict(d: Mapping[str, Any]) -> Usage:
    values = dict(d)
    for name in _USAGE_DETAILS:
        if name in values:
            values[name] = tuple((m, c) for m, c in values[name])
    return Usage(**values)


def message_body_to_dict(message: Message) -> Dict:
    """What a message row keeps besides its columns (role, seq, create_time, turn_id)."""
    d: Dict = {"parts": [part_to_dict(p) for p in message.parts]}
    if message.usage is not None:
        d["usage"] = usage_to_dict(message.usage)
    if message.finish_reason is not None:
        d["finish_reason"] = message.finish_reason.value
    if message.model:
        d["model"] = message.model
    if message.candidate_metadata is not None:
        d["candidate_metadata"] = message.candidate_metadata
    if message.summary is not None:
        d["summary"] = [message.summary.first_seq, message.summary.last_seq]
    return d


def message_from_body(
    body: Mapping[str, Any], *, role: str, seq: int, create_time: float, turn_id: str
) -> Message:
    usage, finish = body.get("usage"), body.get("finish_reason")
    return Message(
        role=ROLES[role],
        parts=tuple(part_from_dict(p) for p in body["parts"]),
        seq=seq,
        create_time=create_time,
        turn_id=turn_id,
        usage=None if usage is None else usage_from_dict(usage),
        finish_reason=None if finish is None else FINISH_REASONS[finish],
        model=body.get("model", ""),
        candidate_metadata=body.get("candidate_metadata"),
        summary=Summary(*body["summary"]) if "summary" in body else None,
    )


def pending_to_json(pending: PendingTurn | None) -> str | None:
    """A paused turn as JSON, or None (a NULL column) when the session is not paused."""
    if pending is None:
        return None
    return dumps(
        {
            "turn_id": pending.turn_id,
            "first_seq": pending.first_seq,
            "rounds": pending.rounds,
            "calls": [function_call_to_dict(c) for c in pending.calls],
            "answered": [part_to_dict(Part(function_response=r)) for r in pending.answered],
        }
    )


def pending_from_json(text: str | None) -> PendingTurn | None:
    if text is None:
        return None
    d = loads(text)
    answered = (part_from_dict(r).function_response for r in d.get("answered", ()))
    return PendingTurn(
        turn_id=d["turn_id"],
        first_seq=d["first_seq"],
        rounds=d["rounds"],
        calls=tuple(function_call_from_dict(c) for c in d["calls"]),
        answered=tuple(r for r in answered if r is not None),
    )


# ----------------------------------------------------------------------------- settings


def generation_config_to_dict(config: GenerationConfig) -> Dict:
    # None means "inherit" and 0 is a real setting, so only None fields are left out.
    d: Dict = {}
    for name in (*_GEN_FLOATS, *_GEN_INTS, *_GEN_STRINGS, "response_json_schema"):
        if (value := getattr(config, name)) is not None:
            d[name] = value
    if (tools := config.tool_config) is not None:
        d["tool_config"] = {"mode": tools.mode, "allowed": list(tools.allowed_function_names)}
    if config.stop_sequences is not None:
        d["stop_sequences"] = list(config.stop_sequences)
    if (thinking := config.thinking) is not None:
        d["thinking"] = {
            name: value
            for name in ("include_thoughts", "thinking_budget", "thinking_level")
            if (value := getattr(thinking, name)) is not None
        }
    return d


def generation_config_from_dict(d: Mapping[str, Any]) -> GenerationConfig:
    values: Dict = {name: float(d[name]) for name in _GEN_FLOATS if name in d}
    values.update((name, d[name]) for name in (*_GEN_INTS, *_GEN_STRINGS) if name in d)
    if (tools := d.get("tool_config")) is not None:
        values["tool_config"] = ToolConfig(tools["mode"], tuple(tools["allowed"]))
    if "response_json_schema" in d:
        values["response_json_schema"] = d["response_json_schema"]
    if "stop_sequences" in d:
        values["stop_sequences"] = tuple(d["stop_sequences"])
    if "thinking" in d:
        values["thinking"] = ThinkingConfig(**d["thinking"])
    return GenerationConfig(**values)


def _declaration_to_dict(decl: FunctionDeclaration) -> Dict:
    d: Dict = {"name": decl.name}
    if decl.description:
        d["description"] = decl.description
    if decl.parameters is not None:
        d["parameters"] = decl.parameters
    return d


def _builtin_tools_to_dict(tools: BuiltinTools) -> Dict:
    return {f.name: True for f in fields(BuiltinTools) if getattr(tools, f.name)}


def settings_to_dict(settings: SessionSettings) -> Dict:
    s = settings
    d: Dict = {}
    for name in ("model", "system_instruction", "display_name"):
        if value := getattr(s, name):
            d[name] = value
    if s.generation_config != _DEFAULT_GENERATION:
        d["generation_config"] = generation_config_to_dict(s.generation_config)
    if s.tools:
        d["tools"] = list(s.tools)
    if s.function_declarations:
        d["function_declarations"] = [_declaration_to_dict(f) for f in s.function_declarations]
    if s.labels:
        d["labels"] = s.labels
    if s.context_policy != _DEFAULT_POLICY:
        policy = s.context_policy
        d["context_policy"] = {
            name: value
            for name in ("max_messages", "max_tokens", "low_water_fraction")
            if (value := getattr(policy, name))
        }
        if policy.compaction is not None:
            d["context_policy"]["compaction"] = {
                f.name: value
                for f in fields(Compaction)
                if (value := getattr(policy.compaction, f.name))
            }
    if s.safety_settings:
        d["safety_settings"] = [[x.category, x.threshold] for x in s.safety_settings]
    if s.builtin_tools:
        d["builtin_tools"] = _builtin_tools_to_dict(s.builtin_tools)
    if s.ttl_seconds is not None:
        d["ttl_seconds"] = s.ttl_seconds
    if s.expire_time is not None:
        d["expire_time"] = s.expire_time
    return d


def _policy_from_dict(d: Mapping[str, Any]) -> ContextPolicy:
    compaction = d.get("compaction")
    values = {k: v for k, v in d.items() if k != "compaction"}
    return ContextPolicy(
        **values, compaction=None if compaction is None else Compaction(**compaction)
    )


def settings_from_dict(d: Mapping[str, Any]) -> SessionSettings:
    gen, ttl, expire = d.get("generation_config"), d.get("ttl_seconds"), d.get("expire_time")
    return SessionSettings(
        model=d.get("model", ""),
        system_instruction=d.get("system_instruction", ""),
        generation_config=_DEFAULT_GENERATION if gen is None else generation_config_from_dict(gen),
        tools=tuple(d.get("tools", ())),
        function_declarations=tuple(
            FunctionDeclaration(f["name"], f.get("description", ""), f.get("parameters"))
            for f in d.get("function_declarations", ())
        ),
        labels=dict(d.get("labels", {})),
        display_name=d.get("display_name", ""),
        context_policy=_policy_from_dict(d.get("context_policy", {})),
        safety_settings=tuple(SafetySetting(c, t) for c, t in d.get("safety_settings", ())),
        builtin_tools=BuiltinTools(**d.get("builtin_tools", {})),
        ttl_seconds=None if ttl is None else float(ttl),
        expire_time=None if expire is None else float(expire),
    )


# ----------------------------------------------------------------------------- packed


# A cache keeps cold history as one bytes value: a record per message, oldest first,
# separated by b"\n". A record is a JSON array, the message's columns first, then its
# body in the shortest form that still says everything:
#
#   [seq, role, create_time_micros, turn_id, parts]
#   [seq, role, create_time_micros, turn_id, parts, usage, finish_reason, model, metadata]
#
# where a part that is text and nothing else is that text (a string), any other part is
# part_to_dict's object, usage is null (no usage) or the list of Usage's fields in order
# with trailing defaults left out, and the tail after parts is left out when all four
# are defaults. JSON escapes every control character inside strings, so b"\n" never
# occurs within a record. Lone surrogates survive ("surrogatepass").

_RECORD_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, check_circular=False, default=_plain
)
_UTF8 = "utf-8"
_SURROGATES = "surrogatepass"
# Shared by every cached session and message that has them, instead of a copy each.
ZERO_USAGE = Usage()
DEFAULT_SETTINGS = SessionSettings()


def _usage_to_list(usage: Usage) -> list[Any]:
    u = usage
    values: list[Any] = [u.prompt_tokens, u.candidates_tokens, u.total_tokens]
    if (
        u.thoughts_tokens
        or u.cached_tokens
        or u.tool_use_prompt_tokens
        or u.prompt_details
        or u.candidates_details
        or u.cache_details
        or u.tool_use_prompt_details
        or u.traffic_type
    ):
        values = [getattr(u, name) for name in _USAGE_FIELDS]
    while values and not values[-1]:
        values.pop()
    return values


def _usage_from_list(values: list[Any]) -> Usage:
    if not values:
        return ZERO_USAGE
    if len(values) <= 3:
        return Usage(*values)
    values = list(values)
    for i in range(6, min(len(values), 10)):  # the four modality detail fields
        values[i] = tuple((m, c) for m, c in values[i])
    return Usage(*values)


def _plain_text(part: Part) -> bool:
    """The part is a text and nothing else (the common case, checked field by field)."""
    return (
        part.text is not None
        and part.inline_data is None
        and part.file_data is None
        and part.function_call is None
        and part.function_response is None
        and not part.thought
        and not part.thought_signature
        and part.executable_code is None
        and part.code_execution_result is None
        and part.tool_call is None
        and part.tool_response is None
        and part.gemini_part is None
        and not part.media_resolution
    )


def message_to_record(message: Message, micros: int) -> list[Any]:
    """One message as a packed record (see above); `micros` is its create_time in µs."""
    record: list[Any] = [
        message.seq,
        message.role.value,
        micros,
        message.turn_id,
        [p.text if _plain_text(p) else part_to_dict(p) for p in message.parts],
    ]
    usage, finish, model, metadata = (
        message.usage,
        message.finish_reason,
        message.model,
        message.candidate_metadata,
    )
    summary = message.summary
    if usage is not None or finish is not None or model or metadata is not None or summary:
        record.append(None if usage is None else _usage_to_list(usage))
        record.append(None if finish is None else finish.value)
        record.append(model)
        if metadata is not None or summary is not None:
            record.append(metadata)
        if summary is not None:
            record.append([summary.first_seq, summary.last_seq])
    return record


def _pack_one(message: Message) -> bytes:
    record = message_to_record(message, round(message.create_time * 1_000_000))
    # orjson is many times faster, but writes NaN as null: it gets only records with
    # no JSON values of the caller's (the text of a chat), and no lone surrogates.
    if (
        record[4]
        and message.candidate_metadata is None
        and all(p.__class__ is str for p in record[4])
    ):
        try:
            return orjson.dumps(record)
        except orjson.JSONEncodeError:
            pass
    return _RECORD_ENCODER.encode(record).encode(_UTF8, _SURROGATES)


def pack_messages(messages: Sequence[Message]) -> bytes:
    """Messages as packed records joined by b"\\n" (b"" for none), UTF-8.

    Times are written in whole microseconds, which is all a store keeps of them.
    """
    return b"\n".join([_pack_one(m) for m in messages])


def _record_to_message(record: list[Any], turn_id: str, model: str) -> Message:
    parts = tuple(Part(text=p) if p.__class__ is str else part_from_dict(p) for p in record[4])
    if len(record) == 5:
        return Message(ROLES[record[1]], parts, record[0], record[2] / 1_000_000, turn_id)
    usage, finish = record[5], record[6]
    return Message(
        ROLES[record[1]],
        parts,
        record[0],
        record[2] / 1_000_000,
        turn_id,
        None if usage is None else _usage_from_list(usage),
        None if finish is None else FINISH_REASONS[finish],
        model,
        record[8] if len(record) > 8 else None,
        Summary(*record[9]) if len(record) > 9 else None,
    )


def unpack_messages(data: bytes) -> list[Message]:
    """The messages of pack_messages' bytes, oldest first.

    The messages of one turn share one turn_id string and model names are interned, so
    many decoded messages hold fewer strings.
    """
    if not data:
        return []
    try:
        records = loads_exact(b"[" + data.replace(b"\n", b",") + b"]")
    except ValueError:  # lone surrogates, NaN and infinities (written by _RECORD_ENCODER)
        records = loads("[" + data.decode(_UTF8, _SURROGATES).replace("\n", ",") + "]")
    out: list[Message] = []
    turn_id = model = ""
    for record in records:
        if record[3] != turn_id:
            turn_id = record[3]
        if len(record) > 5 and record[7] != model:
            model = sys.intern(record[7])
        out.append(_record_to_message(record, turn_id, model if len(record) > 5 else ""))
    return out


def packed_seqs(data: bytes) -> list[int]:
    """The seq of every record in pack_messages' bytes, oldest first, without decoding them."""
    if not data:
        return []
    return [int(line[1 : line.index(b",")]) for line in data.split(b"\n")]
