"""Conversion between chatd's domain values and google-genai types, in both directions."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from google.genai import types

from server.sessions.model import (
    Blob,
    FileData,
    FinishReason,
    FunctionCall,
    FunctionResponse,
    GenerationConfig,
    Message,
    Part,
    Role,
    Usage,
)
from server.sessions.ports import ModelChunk, ModelRequest

# The dummy signature Gemini documents for function calls it did not sign itself ("Can I
# transfer a conversation from another model...?": https://ai.google.dev/gemini-api/docs/
# thought-signatures). These are the bytes whose URL-safe base64 (what the SDK sends) is the
# documented string.
DUMMY_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
# Models that refuse an unsigned function call of the current turn (same source).
_SIGNED_CALL_MODELS = re.compile(r"(?:models/)?gemini-3")


def _to_sdk_part(part: Part, vertex: bool) -> types.Part:
    extra: dict[str, Any] = {}
    if part.thought:
        extra["thought"] = True
    if part.thought_signature:
        extra["thought_signature"] = part.thought_signature
    if part.media_resolution:
        extra["media_resolution"] = types.PartMediaResolution(
            level=part.media_resolution  # type: ignore[arg-type]
        )
    if part.text is not None:
        return types.Part(text=part.text, **extra)
    # The Gemini API's Blob and FileData have no display_name (Vertex AI's do): chatd keeps
    # it and sends it where it is accepted.
    if part.inline_data is not None:
        blob = part.inline_data
        inline = types.Blob(
            mime_type=blob.mime_type,
            data=blob.data,
            display_name=(blob.display_name or None) if vertex else None,
        )
        return types.Part(inline_data=inline, **extra)
    if part.file_data is not None:
        f = part.file_data
        file_data = types.FileData(
            mime_type=f.mime_type,
            file_uri=f.file_uri,
            display_name=(f.display_name or None) if vertex else None,
        )
        return types.Part(file_data=file_data, **extra)
    if part.function_call is not None:
        c = part.function_call
        call = types.FunctionCall(id=c.id or None, name=c.name, args=dict(c.args))
        return types.Part(function_call=call, **extra)
    if part.function_response is not None:
        r = part.function_response
        response = types.FunctionResponse(id=r.id or None, name=r.name, response=dict(r.response))
        return types.Part(function_response=response, **extra)
    return types.Part(**extra)


def _unsigned(message: Message) -> Message:
    """`message` without thought signatures; a part that was only a signature is dropped."""
    parts = tuple(
        replace(p, thought_signature=b"")
        for p in message.parts
        if not (p.text == "" and p.thought_signature)
    )
    return replace(message, parts=parts)


def _current_turn_start(messages: Sequence[Message]) -> int:
    """Index of the first message of the turn in progress: after the last user message that
    is not only function responses."""
    start = 0
    for index, m in enumerate(messages):
        if m.role is Role.USER and not all(p.function_response is not None for p in m.parts):
            start = index + 1
    return start


def _signed_first_call(message: Message) -> Message:
    """`message` with the documented dummy signature on its first function call, if that
    call has no signature of its own (Gemini 3 refuses it unsigned in the current turn)."""
    for index, part in enumerate(message.parts):
        if part.function_call is not None:
            if part.thought_signature:
                return message
            parts = list(message.parts)
            parts[index] = replace(part, thought_signature=DUMMY_SIGNATURE)
            return replace(message, parts=tuple(parts))
    return message


def wire_messages(messages: Sequence[Message], model: str) -> list[Message]:
    """The history as it goes to `model`.

    Thought signatures belong to the model that made them (reports say they do not carry
    across models), so a model message written by another model goes without them. On
    Gemini 3, a function call of the current turn must carry a signature
    (https://ai.google.dev/gemini-api/docs/thought-signatures); one that has none (history
    appended or written by another model) gets the dummy signature that page documents.
    """
    out = [
        _unsigned(m) if m.role is Role.MODEL and m.model and m.model != model else m
        for m in messages
    ]
    if _SIGNED_CALL_MODELS.match(model):
        for index in range(_current_turn_start(out), len(out)):
            if out[index].role is Role.MODEL:
                out[index] = _signed_first_call(out[index])
    return [m for m in out if m.parts]


def to_contents(
    messages: Sequence[Message], model: str = "", *, vertex: bool = False
) -> list[types.Content]:
    return [
        types.Content(role=m.role.value, parts=[_to_sdk_part(p, vertex) for p in m.parts])
        for m in wire_messages(messages, model)
    ]


def needs_v1beta(messages: Sequence[Message]) -> bool:
    """Per-part media resolution is served by the Gemini API's v1beta, not by v1
    (https://ai.google.dev/gemini-api/docs/media-resolution)."""
    return any(p.media_resolution for m in messages for p in m.parts)


def _config_fields(config: GenerationConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: getattr(config, name)
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "max_output_tokens",
            "seed",
            "response_mime_type",
            "response_json_schema",
            "presence_penalty",
            "frequency_penalty",
        )
        if getattr(config, name) is not None
    }
    if config.stop_sequences:
        fields["stop_sequences"] = list(config.stop_sequences)
    if config.thinking is not None:
        t = config.thinking
        fields["thinking_config"] = types.ThinkingConfig(
            include_thoughts=t.include_thoughts,
            thinking_budget=t.thinking_budget,
            thinking_level=t.thinking_level,  # type: ignore[arg-type]
        )
    if config.media_resolution is not None:
        fields["media_resolution"] = config.media_resolution
    if config.service_tier is not None:
        fields["service_tier"] = config.service_tier
    if config.cached_content is not None:
        fields["cached_content"] = config.cached_content
    return fields


def _tool_config(mode: str | None, names: Sequence[str] = ()) -> types.ToolConfig:
    calling = types.FunctionCallingConfig(
        mode=mode,  # type: ignore[arg-type]
        allowed_function_names=list(names) or None,
    )
    return types.ToolConfig(function_calling_config=calling)


# Google Cloud label rules (https://cloud.google.com/resource-manager/docs/labels-overview):
# keys start with a lowercase letter; keys and values hold lowercase letters, digits, _ and -.
_CLOUD_LABEL_KEY = re.compile(r"[a-z][a-z0-9_\-]{0,62}")
_CLOUD_LABEL_VALUE = re.compile(r"[a-z0-9_\-]{0,63}")


def upstream_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels Vertex AI accepts as request labels; the others stay chatd's own."""
    return {
        k: v
        for k, v in labels.items()
        if _CLOUD_LABEL_KEY.fullmatch(k) and _CLOUD_LABEL_VALUE.fullmatch(v)
    }


def to_config(
    request: ModelRequest, timeout: float, *, vertex: bool = False, forward_labels: bool = False
) -> types.GenerateContentConfig:
    """The SDK config for `request`; automatic function calling stays off: chatd runs tools.

    Request labels go upstream only on Vertex AI with `forward_labels` (see README)."""
    config = request.generation_config
    fields = _config_fields(config)
    # A cached content holds the system instruction and tools itself; Gemini refuses them
    # beside it (validation keeps sessions from having both).
    cached = config.cached_content is not None
    if request.system_instruction and not cached:
        fields["system_instruction"] = request.system_instruction
    if request.function_declarations and not cached:
        declarations = [
            types.FunctionDeclaration(
                name=d.name,
                description=d.description or None,
                parameters_json_schema=d.parameters,
            )
            for d in request.function_declarations
        ]
        fields["tools"] = [types.Tool(function_declarations=declarations)]
        if not request.allow_function_calls:
            # chatd's round limit: after the last round the model must answer in words,
            # whatever the session's tool_config says.
            fields["tool_config"] = _tool_config("NONE")
        elif (tools := config.tool_config) is not None and tools.mode is not None:
            fields["tool_config"] = _tool_config(tools.mode, tools.allowed_function_names)
    if vertex and forward_labels and (labels := upstream_labels(request.labels)):
        fields["labels"] = labels
    if request.safety_settings:
        fields["safety_settings"] = [
            types.SafetySetting(category=s.category, threshold=s.threshold)  # type: ignore[arg-type]
            for s in request.safety_settings
        ]
    if request.timeout is not None:
        timeout = max(0.001, min(timeout, request.timeout))
    http = types.HttpOptions(timeout=max(1, round(timeout * 1000)))
    if not vertex and needs_v1beta(request.contents):
        http = types.HttpOptions(timeout=http.timeout, api_version="v1beta")
    return types.GenerateContentConfig(
        **fields,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        http_options=http,
    )


# ----------------------------------------------------------------------------- SDK -> domain


def _from_sdk_part(part: types.Part) -> Part | None:
    extra: dict[str, Any] = {
        "thought": bool(part.thought),
        "thought_signature": part.thought_signature or b"",
    }
    resolution = part.media_resolution.level if part.media_resolution is not None else None
    if (
        resolution is not None
        and resolution != types.PartMediaResolutionLevel.MEDIA_RESOLUTION_UNSPECIFIED
    ):
        extra["media_resolution"] = resolution.value
    if part.text is not None:
        return Part(text=part.text, **extra)
    if part.inline_data is not None:
        b = part.inline_data
        return Part(
            inline_data=Blob(b.mime_type or "", b.data or b"", b.display_name or ""), **extra
        )
    if part.file_data is not None:
        f = part.file_data
        return Part(
            file_data=FileData(f.mime_type or "", f.file_uri or "", f.display_name or ""), **extra
        )
    if part.function_call is not None:
        c = part.function_call
        return Part(function_call=FunctionCall(c.id or "", c.name or "", c.args or {}), **extra)
    if part.function_response is not None:
        r = part.function_response
        response = FunctionResponse(r.id or "", r.name or "", r.response or {})
        return Part(function_response=response, **extra)
    if part.thought_signature:
        # A bare signature (no content) still has to go back to the model.
        return Part(text="", **extra)
    return None


def _usage(metadata: types.GenerateContentResponseUsageMetadata | None) -> Usage | None:
    if metadata is None:
        return None
    return Usage(
        prompt_tokens=metadata.prompt_token_count or 0,
        candidates_tokens=metadata.candidates_token_count or 0,
        total_tokens=metadata.total_token_count or 0,
        thoughts_tokens=metadata.thoughts_token_count or 0,
        cached_tokens=metadata.cached_content_token_count or 0,
        tool_use_prompt_tokens=metadata.tool_use_prompt_token_count or 0,
        prompt_details=_modalities(metadata.prompt_tokens_details),
        candidates_details=_modalities(metadata.candidates_tokens_details),
        cache_details=_modalities(metadata.cache_tokens_details),
        tool_use_prompt_details=_modalities(metadata.tool_use_prompt_tokens_details),
        traffic_type=_name(metadata.traffic_type),
    )


def _name(value: Any) -> str:
    """An SDK enum's value, or an unknown name the SDK kept as a plain string."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def _modalities(details: Sequence[types.ModalityTokenCount] | None) -> tuple[tuple[str, int], ...]:
    return tuple(
        (_name(d.modality) or "MODALITY_UNSPECIFIED", d.token_count or 0) for d in details or ()
    )


# Gemini's finish reasons; chatd's own (PROMPT_BLOCKED, TOOL_CALLS_PENDING, ...) never
# come from upstream, even if a future API version reused one of their names.
_UPSTREAM_FINISH = {
    r.value: r
    for r in FinishReason
    if r.value in types.FinishReason.__members__ and r is not FinishReason.UNSPECIFIED
}


def _finish_reason(reason: types.FinishReason | str | None) -> FinishReason | None:
    if reason is None:
        return None
    name = reason.value if isinstance(reason, types.FinishReason) else str(reason)
    if name == "FINISH_REASON_UNSPECIFIED":
        return None
    return _UPSTREAM_FINISH.get(name, FinishReason.OTHER)


def to_chunk(response: types.GenerateContentResponse) -> ModelChunk:
    parts: list[Part] = []
    finish = None
    if response.candidates:
        candidate = response.candidates[0]
        finish = _finish_reason(candidate.finish_reason)
        if candidate.content is not None:
            parts = [p for p in map(_from_sdk_part, candidate.content.parts or ()) if p is not None]
    block = ""
    if response.prompt_feedback is not None and response.prompt_feedback.block_reason is not None:
        block = response.prompt_feedback.block_reason.value
    return ModelChunk(
        parts=tuple(parts),
        usage=_usage(response.usage_metadata),
        finish_reason=finish,
        block_reason=block,
        model_version=response.model_version or "",
    )
