"""The oracle's input side: chatd's domain values as google-genai types.

This is how chatd built its requests before it encoded them itself; the oracle tests hand
these SDK values to google-genai's own request path and compare the body it sends with
the one chatd's provider assembles (tests/test_wire_request_oracle.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from google import genai
from google.genai import _common, types
from google.genai import models as sdk_models

from server.providers.gemini.wire import (
    DUMMY_SIGNATURE,
    shortest_float32,
    upstream_labels,
)
from server.sessions.model import (
    BuiltinTools,
    FunctionResponsePart,
    GenerationConfig,
    Message,
    Part,
    Role,
)
from server.sessions.ports import ModelRequest

_FLOAT_SETTINGS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def _response_part(part: FunctionResponsePart, vertex: bool) -> types.FunctionResponsePart:
    if part.inline_data is not None:
        b = part.inline_data
        return types.FunctionResponsePart(
            inline_data=types.FunctionResponseBlob(
                mime_type=b.mime_type,
                data=b.data,
                display_name=(b.display_name or None) if vertex else None,
            )
        )
    assert part.file_data is not None
    f = part.file_data
    return types.FunctionResponsePart(
        file_data=types.FunctionResponseFileData(
            mime_type=f.mime_type,
            file_uri=f.file_uri,
            display_name=(f.display_name or None) if vertex else None,
        )
    )


def to_sdk_part(part: Part, vertex: bool) -> types.Part:
    if part.gemini_part is not None:
        # Kept as Gemini sent it, signature included: it goes back the same way.
        kept = types.Part.model_validate(part.gemini_part)
        call = kept.function_call
        if call is not None and (call.partial_args is not None or call.will_continue is not None):
            # How a call was streamed, not part of it: a request's FunctionCall holds only
            # its id, name and args (google-genai refuses these on the Gemini API).
            update = {"partial_args": None, "will_continue": None}
            kept = kept.model_copy(update={"function_call": call.model_copy(update=update)})
        if vertex:
            return kept
        # The Gemini API's Blob and FileData have no display_name, as for typed parts.
        media: dict[str, Any] = {}
        if kept.inline_data is not None and kept.inline_data.display_name is not None:
            media["inline_data"] = kept.inline_data.model_copy(update={"display_name": None})
        if kept.file_data is not None and kept.file_data.display_name is not None:
            media["file_data"] = kept.file_data.model_copy(update={"display_name": None})
        return kept.model_copy(update=media) if media else kept
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
        response = types.FunctionResponse(
            id=r.id or None,
            name=r.name,
            response=dict(r.response),
            parts=[_response_part(p, vertex) for p in r.parts] or None,
        )
        return types.Part(function_response=response, **extra)
    if part.executable_code is not None:
        code = part.executable_code
        executable = types.ExecutableCode(
            language=code.language,  # type: ignore[arg-type]
            code=code.code,
            id=code.id or None,
        )
        return types.Part(executable_code=executable, **extra)
    if part.code_execution_result is not None:
        result = part.code_execution_result
        ran = types.CodeExecutionResult(
            outcome=result.outcome,  # type: ignore[arg-type]
            output=result.output,
            id=result.id or None,
        )
        return types.Part(code_execution_result=ran, **extra)
    if part.tool_call is not None:
        t = part.tool_call
        tool_call = types.ToolCall(
            id=t.id or None,
            tool_type=t.tool_type,  # type: ignore[arg-type]
            args=dict(t.args),
        )
        return types.Part(tool_call=tool_call, **extra)
    if part.tool_response is not None:
        t2 = part.tool_response
        tool_response = types.ToolResponse(
            id=t2.id or None,
            tool_type=t2.tool_type,  # type: ignore[arg-type]
            response=dict(t2.response),
        )
        return types.Part(tool_response=tool_response, **extra)
    # A signature-only part.
    return types.Part(**extra)


# The history rules as the provider applied them before wire.py (a plain walk of the
# whole history each turn), kept here so that the oracle does not share the encoder's
# memoized version of them (tests/test_wire_request_oracle.py also holds wire_messages
# and needs_v1beta equal to these).
_SIGNED_CALL_MODELS = re.compile(r"(?:models/)?gemini-3")


_SIGNATURE_KEYS = ("thoughtSignature", "thought_signature")


def _without_signature(part: Part) -> Part | None:
    """`part` without its thought signature; None when nothing else was in it."""
    if part.signature_only or (part.text == "" and part.thought_signature):
        return None
    if part.gemini_part is not None:
        rest = {k: v for k, v in part.gemini_part.items() if k not in _SIGNATURE_KEYS}
        # Empty text went only with its signature: Gemini refuses it unsigned.
        if not rest or rest.get("text") == "":
            return None
        return replace(part, gemini_part=rest)
    return replace(part, thought_signature=b"")


def _unsigned(message: Message) -> Message:
    """`message` without thought signatures; a part that was only a signature is dropped."""
    parts = tuple(p for p in map(_without_signature, message.parts) if p is not None)
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


def needs_v1beta(messages: Sequence[Message]) -> bool:
    """Per-part media resolution is served by the Gemini API's v1beta, not by v1
    (https://ai.google.dev/gemini-api/docs/media-resolution), a part kept as Gemini JSON's
    included."""
    return any(
        p.media_resolution
        or (p.gemini_part is not None and _PART_MEDIA_RESOLUTION_KEYS & p.gemini_part.keys())
        for m in messages
        for p in m.parts
    )


_PART_MEDIA_RESOLUTION_KEYS = frozenset({"mediaResolution", "media_resolution"})


def to_contents(
    messages: Sequence[Message], model: str = "", *, vertex: bool = False
) -> list[types.Content]:
    return [
        types.Content(role=m.role.value, parts=[to_sdk_part(p, vertex) for p in m.parts])
        for m in wire_messages(messages, model)
    ]


def _config_fields(config: GenerationConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: getattr(config, name)
        for name in (
            "top_k",
            "max_output_tokens",
            "seed",
            "response_mime_type",
            "response_json_schema",
        )
        if getattr(config, name) is not None
    }
    for name in _FLOAT_SETTINGS:
        if (value := getattr(config, name)) is not None:
            fields[name] = shortest_float32(value)
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


def _builtin_tools(tools: BuiltinTools) -> list[types.Tool]:
    """Gemini's own tools, one Tool each, as the API documents them."""
    out = []
    if tools.google_search:
        out.append(types.Tool(google_search=types.GoogleSearch()))
    if tools.code_execution:
        out.append(types.Tool(code_execution=types.ToolCodeExecution()))
    if tools.url_context:
        out.append(types.Tool(url_context=types.UrlContext()))
    if tools.google_maps:
        maps = types.GoogleMaps(enable_widget=True if tools.google_maps_widget else None)
        out.append(types.Tool(google_maps=maps))
    return out


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
    if request.builtin_tools and not cached:
        fields["tools"] = [*fields.get("tools", ()), *_builtin_tools(request.builtin_tools)]
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


def count_generate_payload(
    client: genai.Client,
    model: str,
    contents: list[types.Content],
    config: types.GenerateContentConfig,
) -> dict[str, Any]:
    """The body chatd's countTokens sent on the Gemini API before it encoded it itself: a
    `generateContentRequest` built by the SDK's own generate-request code
    (`models._GenerateContentParameters_to_mldev`), as google-genai serializes it."""
    api = client.aio._api_client
    parameters = types._GenerateContentParameters(model=model, contents=contents, config=config)
    body = sdk_models._GenerateContentParameters_to_mldev(api, parameters, None, parameters)
    inner = {k: v for k, v in body.items() if not k.startswith("_") and k != "config"}
    inner["model"] = body["_url"]["model"]
    payload: dict[str, Any] = _common.encode_unserializable_types(
        _common.convert_to_dict({"generateContentRequest": inner})
    )
    return payload


def vertex_count_config(config: types.GenerateContentConfig) -> types.CountTokensConfig:
    """What chatd's countTokens gave google-genai's count_tokens on Vertex AI."""
    return types.CountTokensConfig(
        system_instruction=config.system_instruction,
        tools=config.tools,  # type: ignore[arg-type]
        http_options=config.http_options,
    )
