"""What the real Gemini API refuses, checked on every request the fake receives."""

from __future__ import annotations

from typing import Any

from tests.fake_gemini.parts import _camel, _snake, get_field

# --------------------------------------------------------------------------- request rules
#
# The strict fake refuses what the real API refuses, each rule in one place below with its
# source. A test that must send something invalid on purpose sets ``fake.strict = False``.


class InvalidRequest(Exception):
    """A request the real API answers with HTTP 400 INVALID_ARGUMENT."""


# A message's fields by their proto-JSON (lowerCamel) names, each with the message type of
# its value (a key of _MESSAGES), ANY for a value the fake does not look into, or a scalar.
# The REST API accepts a field under its JSON name or its original snake_case proto name
# (proto3 JSON mapping), and refuses any other name:
#   Invalid JSON payload received. Unknown name "x" at 'contents[0].parts[0]': Cannot find field.
# Sources: https://ai.google.dev/api/generate-content#request-body,
# https://ai.google.dev/api/caching#Content, https://ai.google.dev/api/caching#Tool, and what
# google-genai 3.6.1 sends (models.py _GenerateContentParameters_to_mldev and friends).
ANY = "any"
SCALAR = "scalar"
_GEMINI_REQUEST = {
    "model": SCALAR,
    "contents": "Content",
    "systemInstruction": "Content",
    "tools": "Tool",
    "toolConfig": "ToolConfig",
    "safetySettings": "SafetySetting",
    "generationConfig": "GenerationConfig",
    "cachedContent": SCALAR,
    "serviceTier": SCALAR,
    "store": SCALAR,
    # Resumes an answer from a candidate's continuationToken (google-genai 3.6.1's
    # automatic continuation: `_GenerateContentConfig_to_mldev` sends it at the top level).
    "continuationToken": SCALAR,
}
_MESSAGES: dict[str, dict[str, str]] = {
    "GeminiRequest": _GEMINI_REQUEST,
    # Vertex AI's GenerateContentRequest also takes request labels (billing); the Gemini
    # Developer API's does not. https://cloud.google.com/vertex-ai/generative-ai/docs/
    # multimodal/add-labels-to-api-calls
    "VertexRequest": {**_GEMINI_REQUEST, "labels": ANY},
    "Content": {"role": SCALAR, "parts": "Part"},
    "Part": {
        "text": SCALAR,
        "inlineData": "Blob",
        "fileData": "FileData",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "executableCode": ANY,
        "codeExecutionResult": ANY,
        "toolCall": ANY,
        "toolResponse": ANY,
        "thought": SCALAR,
        "thoughtSignature": SCALAR,
        "partMetadata": ANY,
        "videoMetadata": ANY,
        "mediaResolution": "PartMediaResolution",
    },
    "PartMediaResolution": {"level": SCALAR},
    # The Gemini API's Blob and FileData have no display name (Vertex AI's do).
    "Blob": {"mimeType": SCALAR, "data": SCALAR},
    "FileData": {"mimeType": SCALAR, "fileUri": SCALAR},
    "VertexBlob": {"mimeType": SCALAR, "data": SCALAR, "displayName": SCALAR},
    "VertexFileData": {"mimeType": SCALAR, "fileUri": SCALAR, "displayName": SCALAR},
    "FunctionCall": {"id": SCALAR, "name": SCALAR, "args": ANY},
    "FunctionResponse": {
        "id": SCALAR,
        "name": SCALAR,
        "response": ANY,
        "parts": ANY,
        "willContinue": SCALAR,
        "scheduling": SCALAR,
    },
    "GenerationConfig": {
        "stopSequences": SCALAR,
        "responseMimeType": SCALAR,
        "responseSchema": ANY,
        "responseJsonSchema": ANY,
        "responseModalities": SCALAR,
        "candidateCount": SCALAR,
        "maxOutputTokens": SCALAR,
        "temperature": SCALAR,
        "topP": SCALAR,
        "topK": SCALAR,
        "seed": SCALAR,
        "presencePenalty": SCALAR,
        "frequencyPenalty": SCALAR,
        "responseLogprobs": SCALAR,
        "logprobs": SCALAR,
        "enableEnhancedCivicAnswers": SCALAR,
        "speechConfig": ANY,
        "thinkingConfig": "ThinkingConfig",
        "imageConfig": ANY,
        "mediaResolution": SCALAR,
    },
    "ThinkingConfig": {
        "includeThoughts": SCALAR,
        "thinkingBudget": SCALAR,
        "thinkingLevel": SCALAR,
    },
    "Tool": {
        "functionDeclarations": "FunctionDeclaration",
        "googleSearchRetrieval": ANY,
        "codeExecution": ANY,
        "googleSearch": ANY,
        "computerUse": ANY,
        "urlContext": ANY,
        "fileSearch": ANY,
        "googleMaps": ANY,
    },
    "FunctionDeclaration": {
        "name": SCALAR,
        "description": SCALAR,
        "behavior": SCALAR,
        "parameters": ANY,
        "parametersJsonSchema": ANY,
        "response": ANY,
        "responseJsonSchema": ANY,
    },
    "ToolConfig": {"functionCallingConfig": "FunctionCallingConfig", "retrievalConfig": ANY},
    "FunctionCallingConfig": {"mode": SCALAR, "allowedFunctionNames": SCALAR},
    "SafetySetting": {"category": SCALAR, "threshold": SCALAR},
    # countTokens: https://ai.google.dev/api/tokens#method:-models.counttokens
    "GeminiCountTokens": {"contents": "Content", "generateContentRequest": "GeminiRequest"},
    # Vertex AI's countTokens takes the instruction and tools beside the contents.
    "VertexCountTokens": {
        "contents": "Content",
        "systemInstruction": "Content",
        "tools": "Tool",
        "generationConfig": "GenerationConfig",
        "model": SCALAR,
    },
}
# Closed enums the fake checks (names as google-genai 3.6.1 knows them).
_ENUMS: dict[tuple[str, str], frozenset[str]] = {
    ("ThinkingConfig", "thinkingLevel"): frozenset(
        {"THINKING_LEVEL_UNSPECIFIED", "MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH"}
    ),
    ("GenerationConfig", "mediaResolution"): frozenset(
        {
            "MEDIA_RESOLUTION_UNSPECIFIED",
            "MEDIA_RESOLUTION_LOW",
            "MEDIA_RESOLUTION_MEDIUM",
            "MEDIA_RESOLUTION_HIGH",
        }
    ),
    ("PartMediaResolution", "level"): frozenset(
        {
            "MEDIA_RESOLUTION_UNSPECIFIED",
            "MEDIA_RESOLUTION_LOW",
            "MEDIA_RESOLUTION_MEDIUM",
            "MEDIA_RESOLUTION_HIGH",
            "MEDIA_RESOLUTION_ULTRA_HIGH",
        }
    ),
    ("FunctionCallingConfig", "mode"): frozenset(
        {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}
    ),
    ("Content", "role"): frozenset({"user", "model"}),
}
_VERTEX_TYPES = {
    "Blob": "VertexBlob",
    "FileData": "VertexFileData",
    "GeminiRequest": "VertexRequest",
}


def _field_name(message: str, key: str) -> str | None:
    """The JSON name of ``key`` in ``message``: itself, or the field whose snake_case
    original name it is; None for an unknown name."""
    known = _MESSAGES[message]
    if key in known:
        return key
    camel = _camel(key)
    return camel if camel in known and _snake(camel) == key else None


def _check_fields(value: Any, message: str, where: str, vertex: bool) -> None:
    if vertex:
        message = _VERTEX_TYPES.get(message, message)
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"Invalid JSON payload received. Expected an object at '{where or 'request'}'."
        )
    for key, item in value.items():
        name = _field_name(message, key)
        if name is None:
            at = f" at '{where}'" if where else ""
            raise InvalidRequest(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
            )
        child = _MESSAGES[message][name]
        path = f"{where}.{key}" if where else key
        allowed = _ENUMS.get((message.removeprefix("Vertex"), name))
        if allowed is not None and item not in allowed:
            raise InvalidRequest(
                f"Invalid value at '{path}' ({message.removeprefix('Vertex')}.{name}), \"{item}\""
            )
        if child in (ANY, SCALAR):
            continue
        if isinstance(item, list):
            for index, element in enumerate(item):
                _check_fields(element, child, f"{path}[{index}]", vertex)
        else:
            _check_fields(item, child, path, vertex)


def _check_thinking(config: Any) -> None:
    # https://ai.google.dev/gemini-api/docs/gemini-3: "cannot use both thinking_level and the
    # legacy thinking_budget parameter in the same request. Doing so will return a 400 error".
    thinking = get_field(config, "thinkingConfig")
    if (
        isinstance(thinking, dict)
        and get_field(thinking, "thinkingBudget") is not None
        and get_field(thinking, "thinkingLevel") is not None
    ):
        raise InvalidRequest(
            "Unable to submit request because thinking_budget and thinking_level are not "
            "supported together."
        )


def _check_empty_text(contents: list[Any]) -> None:
    # Reported: a text part that is "" without a thought signature is refused ("Unable to
    # submit request because it has an empty text parameter"); the API itself streams
    # {"text": "", "thoughtSignature": ...} and accepts it back (docs/gemini-wire.md).
    for i, content in enumerate(contents):
        for j, part in enumerate(get_field(content, "parts", default=[]) or []):
            if get_field(part, "text") == "" and not get_field(part, "thoughtSignature"):
                raise InvalidRequest(
                    "Unable to submit request because it has an empty text parameter. Add a "
                    f"value to the parameter and try again. (contents[{i}].parts[{j}])"
                )


# Part.data is a oneof: https://ai.google.dev/api/caching#Part ("data can be only one of").
_PART_DATA = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "toolCall",
    "toolResponse",
)


def _check_parts(contents: list[Any]) -> None:
    # A content needs parts (reported: "contents.parts must not be empty"), and a part holds
    # at most one data field (the JSON parser refuses a second member of the oneof).
    for i, content in enumerate(contents):
        parts = get_field(content, "parts", default=[]) or []
        if not parts:
            raise InvalidRequest(
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )
        for j, part in enumerate(parts):
            present = [name for name in _PART_DATA if get_field(part, name) is not None]
            if len(present) > 1:
                raise InvalidRequest(
                    f"Invalid JSON payload received. Oneof field 'data' is already set. Cannot "
                    f"set '{present[1]}' (contents[{i}].parts[{j}])"
                )


def _only_function_responses(content: Any) -> bool:
    parts = get_field(content, "parts", default=[]) or []
    return bool(parts) and all(get_field(p, "functionResponse") is not None for p in parts)


def _check_current_turn_signatures(model: str, contents: list[Any]) -> None:
    # https://ai.google.dev/gemini-api/docs/thought-signatures: on Gemini 3 models "missing
    # thought signatures on function calls in the current turn result in a 400 error"; the
    # current turn is everything after the last user content that is not only function
    # responses, and of parallel calls the first call part of each model content carries it.
    if not model.startswith("gemini-3"):
        return
    start = 0
    for index, content in enumerate(contents):
        if get_field(content, "role") == "user" and not _only_function_responses(content):
            start = index + 1
    for i in range(start, len(contents)):
        content = contents[i]
        if get_field(content, "role") != "model":
            continue
        parts = get_field(content, "parts", default=[]) or []
        calls = [j for j, p in enumerate(parts) if get_field(p, "functionCall") is not None]
        if calls and not get_field(parts[calls[0]], "thoughtSignature"):
            name = get_field(parts[calls[0]], "functionCall", "name")
            raise InvalidRequest(
                f"Function call is missing a thought_signature in functionCall parts. This is "
                f"required for tools to work correctly. Additional data, function call "
                f"`default_api:{name}` , position {calls[0] + 1} (contents[{i}]). Please refer "
                "to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
            )


def _check_cached_content(request: Any) -> None:
    # Reported: "CachedContent can not be used with GenerateContent request setting
    # system_instruction, tools or tool_config. Proposed fix: move those values to
    # CachedContent from GenerateContent request."
    if get_field(request, "cachedContent") is None:
        return
    if any(
        get_field(request, key) is not None for key in ("systemInstruction", "tools", "toolConfig")
    ):
        raise InvalidRequest(
            "CachedContent can not be used with GenerateContent request setting "
            "system_instruction, tools or tool_config.\n\nProposed fix: move those values to "
            "CachedContent from GenerateContent request."
        )


def _check_generate(model: str, request: Any, vertex: bool) -> None:
    contents = get_field(request, "contents")
    if not isinstance(contents, list) or not contents:
        # https://ai.google.dev/api/generate-content#request-body: contents is required.
        raise InvalidRequest("* GenerateContentRequest.contents: contents is not specified")
    _check_thinking(get_field(request, "generationConfig", default={}))
    _check_parts(contents)
    _check_empty_text(contents)
    _check_current_turn_signatures(model, contents)
    _check_cached_content(request)


def check_request(method: str, model: str, body: Any, vertex: bool) -> None:
    """Raises InvalidRequest where the real API answers 400 INVALID_ARGUMENT."""
    if method == "countTokens":
        _check_fields(body, "VertexCountTokens" if vertex else "GeminiCountTokens", "", vertex)
        if vertex:
            _check_generate(model, body, vertex)
            return
        # https://ai.google.dev/api/tokens#method:-models.counttokens: contents and
        # generateContentRequest are mutually exclusive.
        inner = get_field(body, "generateContentRequest")
        has_contents = get_field(body, "contents") is not None
        if (inner is None) == (not has_contents):
            raise InvalidRequest(
                "contents and generate_content_request are mutually exclusive; set exactly one"
            )
        if inner is not None:
            if get_field(inner, "model") is None:
                raise InvalidRequest("* GenerateContentRequest.model: model is not specified")
            _check_generate(model, inner, vertex)
        else:
            _check_empty_text(body.get("contents", []))
        return
    _check_fields(body, "GeminiRequest", "", vertex)
    _check_generate(model, body, vertex)
