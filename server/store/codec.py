"""Lossless conversion between domain values and compact JSON for storage rows."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from server.sessions.model import (
    Blob,
    ContextPolicy,
    FileData,
    FinishReason,
    FunctionCall,
    FunctionDeclaration,
    FunctionResponse,
    GenerationConfig,
    Message,
    Part,
    PendingTurn,
    Role,
    SafetySetting,
    SessionSettings,
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


def part_to_dict(part: Part) -> Dict:
    d: Dict = {}
    if part.text is not None:
        d["text"] = part.text
    if (blob := part.inline_data) is not None:
        inline: Dict = {"mime_type": blob.mime_type, "data": _b64(blob.data)}
        if blob.display_name:
            inline["display_name"] = blob.display_name
        d["inline_data"] = inline
    if (file := part.file_data) is not None:
        file_d: Dict = {"mime_type": file.mime_type, "file_uri": file.file_uri}
        if file.display_name:
            file_d["display_name"] = file.display_name
        d["file_data"] = file_d
    if (call := part.function_call) is not None:
        d["function_call"] = function_call_to_dict(call)
    if (resp := part.function_response) is not None:
        d["function_response"] = _call_to_dict(resp.name, resp.id, "response", resp.response)
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
    return Part(
        text=d.get("text"),
        inline_data=None
        if inline is None
        else Blob(inline["mime_type"], _unb64(inline["data"]), inline.get("display_name", "")),
        file_data=None
        if file is None
        else FileData(file["mime_type"], file["file_uri"], file.get("display_name", "")),
        function_call=None if call is None else function_call_from_dict(call),
        function_response=None
        if resp is None
        else FunctionResponse(resp.get("id", ""), resp["name"], resp.get("response", {})),
        thought=d.get("thought", False),
        thought_signature=b"" if signature is None else _unb64(signature),
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
            for name in ("max_messages", "max_tokens")
            if (value := getattr(policy, name))
        }
    if s.safety_settings:
        d["safety_settings"] = [[x.category, x.threshold] for x in s.safety_settings]
    if s.ttl_seconds is not None:
        d["ttl_seconds"] = s.ttl_seconds
    if s.expire_time is not None:
        d["expire_time"] = s.expire_time
    return d


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
        context_policy=ContextPolicy(**d.get("context_policy", {})),
        safety_settings=tuple(SafetySetting(c, t) for c, t in d.get("safety_settings", ())),
        ttl_seconds=None if ttl is None else float(ttl),
        expire_time=None if expire is None else float(expire),
    )
