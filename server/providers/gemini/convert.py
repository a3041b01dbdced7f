"""Conversion between chatd's domain values and google-genai types, in both directions."""

from __future__ import annotations

from collections.abc import Sequence
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
    Usage,
)
from server.sessions.ports import ModelChunk, ModelRequest


def _to_sdk_part(part: Part) -> types.Part:
    extra: dict[str, Any] = {}
    if part.thought:
        extra["thought"] = True
    if part.thought_signature:
        extra["thought_signature"] = part.thought_signature
    if part.text is not None:
        return types.Part(text=part.text, **extra)
    if part.inline_data is not None:
        blob = part.inline_data
        inline = types.Blob(
            mime_type=blob.mime_type, data=blob.data, display_name=blob.display_name or None
        )
        return types.Part(inline_data=inline, **extra)
    if part.file_data is not None:
        f = part.file_data
        file_data = types.FileData(
            mime_type=f.mime_type, file_uri=f.file_uri, display_name=f.display_name or None
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


def to_contents(messages: Sequence[Message]) -> list[types.Content]:
    return [
        types.Content(role=m.role.value, parts=[_to_sdk_part(p) for p in m.parts]) for m in messages
    ]


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
    return fields


def to_config(request: ModelRequest, timeout: float) -> types.GenerateContentConfig:
    """The SDK config for `request`; automatic function calling stays off: chatd runs tools."""
    fields = _config_fields(request.generation_config)
    if request.system_instruction:
        fields["system_instruction"] = request.system_instruction
    if request.function_declarations:
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
            fields["tool_config"] = types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(mode="NONE")  # type: ignore[arg-type]
            )
    if request.safety_settings:
        fields["safety_settings"] = [
            types.SafetySetting(category=s.category, threshold=s.threshold)  # type: ignore[arg-type]
            for s in request.safety_settings
        ]
    if request.timeout is not None:
        timeout = max(0.001, min(timeout, request.timeout))
    return types.GenerateContentConfig(
        **fields,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        http_options=types.HttpOptions(timeout=max(1, round(timeout * 1000))),
    )


# ----------------------------------------------------------------------------- SDK -> domain


def _from_sdk_part(part: types.Part) -> Part | None:
    extra: dict[str, Any] = {
        "thought": bool(part.thought),
        "thought_signature": part.thought_signature or b"",
    }
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
