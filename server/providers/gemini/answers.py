"""Gemini's answers as chatd's domain values: one streamed `GenerateContentResponse`, as
JSON (camelCase, what `orjson.loads` gives for an SSE payload), to a ModelChunk.

The shapes are the REST references' GenerateContentResponse, of the Gemini API
(https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse) and of Vertex
AI (https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/GenerateContentResponse);
chatd reads the fields both share. No google-genai type is involved: the result is the one
google-genai 3.6.1's parse (`models._GenerateContentResponse_from_mldev` / `_from_vertex`,
then `GenerateContentResponse._from_response`) followed by chatd's former mapping of the
SDK's types gave (tests/test_wire_response_oracle.py holds the two side by side), except
where the JSON says more than the SDK reads. There chatd keeps what Gemini sent:

- Fields the SDK does not know, which it drops at every level (`_common._remove_extra_fields`),
  stay in `candidate_metadata` and `prompt_feedback`, and a part holding one is kept whole
  as `Part.gemini_part` (where the SDK would give a typed part without it).
- On the Gemini API the SDK copies only the candidate fields `_Candidate_from_mldev` lists
  (content, citationMetadata, tokenCount, finishReason, groundingMetadata, avgLogprobs,
  index, logprobsResult, safetyRatings, urlContextMetadata, continuationToken): others,
  `finishMessage` among them, are dropped by it and kept here.
- The SDK renames the Gemini API's `citationMetadata.citationSources` to `citations`
  (`_CitationMetadata_from_mldev`; Vertex AI sends `citations`). chatd keeps the name Gemini
  sent, so a Gemini API answer's metadata says `citationSources`.
- Bytes (inlineData.data, thoughtSignature) come as base64, standard or URL-safe, padded
  or not; typed parts hold the decoded bytes, while metadata and `gemini_part` keep the
  string as sent (the SDK's dumps re-encode it URL-safe).
- Enum names are taken as sent (proto JSON names, upper case); the SDK also accepts another
  letter case of a name it knows ("stop") and reports it upper case.
- A JSON null, which Gemini does not send (proto JSON leaves unset fields out), is absent
  where chatd reads a field, and kept as sent inside metadata and `gemini_part`.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from server.sessions.model import (
    Blob,
    CodeExecutionResult,
    ExecutableCode,
    FileData,
    FinishReason,
    FunctionCall,
    FunctionResponse,
    Part,
    ServerToolCall,
    ServerToolResponse,
    Usage,
)
from server.sessions.ports import ModelChunk

_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def b64_bytes(value: Any) -> bytes:
    """The bytes of a base64 string in standard or URL-safe alphabet, padded or not, as
    google-genai (pydantic's base64 bytes) reads them; b"" for None or "".

    Raises binascii.Error for a string that is not base64."""
    if not value:
        return b""
    text = str(value)
    if "-" in text or "_" in text:
        text = text.translate(_URLSAFE_TO_STANDARD)
    if pad := -len(text) % 4:
        text += "=" * pad
    return binascii.a2b_base64(text)


# Fields holding free JSON (google-genai's dict[str, Any]), where a null is a value.
_FREE_JSON = frozenset({"args", "response", "partMetadata"})


def _says_nothing(key: str, value: Any, free: bool = False) -> bool:
    """What chatd's part mapping has always treated as absent: false, an empty id or display
    name, an object of nothing but these, and null where it means unset (not inside free
    JSON such as a call's args, as `free` says)."""
    if value is None:
        return not free
    if value is False:
        return True
    if isinstance(value, dict):
        free = free or key in _FREE_JSON
        return all(_says_nothing(k, v, free) for k, v in value.items())
    return value == "" and (key == "id" or key == "displayName")


def _fits(value: Any, required: tuple[str, ...], optional: frozenset[str]) -> bool:
    """`value` is an object with every `required` key and nothing else that says something
    beyond the `optional` keys: chatd's typed part holds all of it."""
    if not isinstance(value, dict):
        return False
    for key in required:
        if value.get(key) is None:
            return False
    return all(
        key in optional or key in required or _says_nothing(key, v) for key, v in value.items()
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _inline(d: dict[str, Any]) -> Part:
    blob = Blob(d["mimeType"], b64_bytes(d["data"]), d.get("displayName") or "")
    return Part(inline_data=blob)


def _file(d: dict[str, Any]) -> Part:
    return Part(file_data=FileData(d["mimeType"], d["fileUri"], d.get("displayName") or ""))


def _call(d: dict[str, Any]) -> Part:
    return Part(function_call=FunctionCall(d.get("id") or "", d["name"], _object(d.get("args"))))


def _response(d: dict[str, Any]) -> Part:
    response = FunctionResponse(d.get("id") or "", d["name"], _object(d.get("response")))
    return Part(function_response=response)


def _code(d: dict[str, Any]) -> Part:
    return Part(executable_code=ExecutableCode(d["language"], d["code"], d.get("id") or ""))


def _result(d: dict[str, Any]) -> Part:
    result = CodeExecutionResult(d["outcome"], d["output"], d.get("id") or "")
    return Part(code_execution_result=result)


def _tool_call(d: dict[str, Any]) -> Part:
    call = ServerToolCall(d.get("id") or "", d["toolType"], _object(d.get("args")))
    return Part(tool_call=call)


def _tool_response(d: dict[str, Any]) -> Part:
    response = ServerToolResponse(d.get("id") or "", d["toolType"], _object(d.get("response")))
    return Part(tool_response=response)


_Kind = tuple[str, tuple[str, ...], frozenset[str], Callable[[dict[str, Any]], Part]]

# The part kinds chatd models, in the order its mapping always looked for them: the JSON
# key, the keys a typed part needs, the other keys it holds, and how to build it. Any
# other key that says something (partialArgs, willContinue: true, a function response's
# parts or scheduling, a field Gemini adds later) keeps the part whole as gemini_part.
_KINDS: tuple[_Kind, ...] = (
    ("inlineData", ("mimeType", "data"), frozenset({"displayName"}), _inline),
    ("fileData", ("mimeType", "fileUri"), frozenset({"displayName"}), _file),
    ("functionCall", ("name",), frozenset({"id", "args"}), _call),
    ("functionResponse", ("name",), frozenset({"id", "response"}), _response),
    ("executableCode", ("language", "code"), frozenset({"id"}), _code),
    ("codeExecutionResult", ("outcome", "output"), frozenset({"id"}), _result),
    ("toolCall", ("toolType",), frozenset({"id", "args"}), _tool_call),
    ("toolResponse", ("toolType",), frozenset({"id", "response"}), _tool_response),
)
# What a part says besides its data, all of which chatd models.
_PART_EXTRAS = frozenset({"thought", "thoughtSignature", "mediaResolution"})
_PLAIN_TEXT = frozenset({"text", "thought", "thoughtSignature"})
_NO_RESOLUTION = ("", "MEDIA_RESOLUTION_UNSPECIFIED")


def _extras(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A part's thought flag, signature and media resolution as Part fields; None when
    they say something chatd's Part cannot hold (an empty signature, a resolution with
    more than a level)."""
    extras: dict[str, Any] = {"thought": bool(raw.get("thought"))}
    signature = raw.get("thoughtSignature")
    if signature is not None:
        if signature == "":
            return None
        extras["thought_signature"] = b64_bytes(signature)
    resolution = raw.get("mediaResolution")
    if resolution is not None and not _says_nothing("mediaResolution", resolution):
        if not _fits(resolution, ("level",), frozenset()):
            return None
        level = resolution["level"]
        if not isinstance(level, str) or level in _NO_RESOLUTION:
            return None
        extras["media_resolution"] = level
    return extras


def part_from_json(raw: Mapping[str, Any]) -> Part | None:
    """The domain part for a part (Gemini JSON) of the model's answer; None for a part that
    says nothing (no field but empty or false ones, or an empty text without signature).

    Typed when chatd models every field in it; a part holding anything else (a kind, or a
    field of a kind, chatd does not model) is kept whole, as sent, in `gemini_part`. A part
    with nothing but a signature is a signature-only part. Raises binascii.Error for a
    bytes field that is not base64."""
    text = raw.get("text")
    if text is not None and raw.keys() <= _PLAIN_TEXT:
        # The common case, a chunk of text: nothing in it chatd does not model.
        signature = raw.get("thoughtSignature")
        return Part(
            text=text,
            thought=bool(raw.get("thought")),
            thought_signature=b64_bytes(signature) if signature else b"",
        )
    if not isinstance(raw, dict):
        raw = dict(raw)
    if _says_nothing("", raw):
        return None
    if text == "" and not raw.get("thoughtSignature"):
        # Empty text without a signature says nothing, and Gemini refuses it sent back (an
        # empty text chunk is dropped the same way when chunks are joined).
        return None
    return _typed(raw) or Part(gemini_part=raw)


def _typed(raw: dict[str, Any]) -> Part | None:
    """`raw` as a typed part, or None when a typed part would lose something of it."""
    extras = _extras(raw)
    if extras is None:
        return None
    text = raw.get("text")
    if text is not None:
        if not isinstance(text, str):
            return None
        chosen, typed = "text", Part(text=text)
    else:
        kind = next((k for k in _KINDS if raw.get(k[0]) is not None), None)
        if kind is None:
            chosen, typed = "", Part()
        else:
            chosen, required, optional, build = kind
            if not _fits(raw[chosen], required, optional):
                return None
            typed = build(raw[chosen])
    for key, value in raw.items():
        if key != chosen and key not in _PART_EXTRAS and not _says_nothing(key, value):
            return None
    return replace(typed, **extras)


def _counts(value: Any) -> tuple[tuple[str, int], ...]:
    """Token counts per modality, in the model's order ("MODALITY_UNSPECIFIED" when a count
    names none)."""
    return tuple(
        (d.get("modality") or "MODALITY_UNSPECIFIED", d.get("tokenCount") or 0) for d in value or ()
    )


def usage_from_json(usage: Mapping[str, Any] | None) -> Usage | None:
    """A response's usageMetadata (camelCase JSON) as Usage; None when there is none."""
    if usage is None:
        return None
    return Usage(
        prompt_tokens=usage.get("promptTokenCount") or 0,
        candidates_tokens=usage.get("candidatesTokenCount") or 0,
        total_tokens=usage.get("totalTokenCount") or 0,
        thoughts_tokens=usage.get("thoughtsTokenCount") or 0,
        cached_tokens=usage.get("cachedContentTokenCount") or 0,
        tool_use_prompt_tokens=usage.get("toolUsePromptTokenCount") or 0,
        prompt_details=_counts(usage.get("promptTokensDetails")),
        candidates_details=_counts(usage.get("candidatesTokensDetails")),
        cache_details=_counts(usage.get("cacheTokensDetails")),
        tool_use_prompt_details=_counts(usage.get("toolUsePromptTokensDetails")),
        traffic_type=usage.get("trafficType") or "",
    )


# Gemini's finish reasons that chatd's FinishReason names (google-genai 3.6.1's
# types.FinishReason members, https://ai.google.dev/api/generate-content#FinishReason);
# chatd's own (PROMPT_BLOCKED, TOOL_CALLS_PENDING, ...) never come from upstream, even if a
# future API version reused one of their names.
_UPSTREAM_FINISH = {
    r.value: r
    for r in (
        FinishReason.STOP,
        FinishReason.MAX_TOKENS,
        FinishReason.SAFETY,
        FinishReason.RECITATION,
        FinishReason.LANGUAGE,
        FinishReason.OTHER,
        FinishReason.BLOCKLIST,
        FinishReason.PROHIBITED_CONTENT,
        FinishReason.SPII,
        FinishReason.MALFORMED_FUNCTION_CALL,
        FinishReason.IMAGE_SAFETY,
        FinishReason.UNEXPECTED_TOOL_CALL,
        FinishReason.TOO_MANY_TOOL_CALLS,
        FinishReason.MISSING_THOUGHT_SIGNATURE,
        FinishReason.IMAGE_OTHER,
    )
}


def finish_reason_from_json(reason: Any) -> FinishReason | None:
    """A candidate's finishReason: chatd's value of the same name, OTHER for a reason chatd
    does not name (IMAGE_RECITATION, a later one), None when unset or unspecified."""
    if reason is None:
        return None
    name = str(reason)
    if name == "FINISH_REASON_UNSPECIFIED":
        return None
    return _UPSTREAM_FINISH.get(name, FinishReason.OTHER)


# What the domain models of a candidate itself, and the continuation token the provider
# follows (continuation.py); the rest is its metadata.
_CANDIDATE_CORE = frozenset({"content", "finishReason", "index", "continuationToken"})


def chunk_from_json(response: Mapping[str, Any]) -> ModelChunk:
    """One streamed GenerateContentResponse (camelCase JSON, either API's shape) as a
    ModelChunk: the first candidate's parts (see part_from_json), finish reason and other
    fields (candidate_metadata, as sent), the usage, the prompt feedback (as sent) and its
    block reason, and the model version.

    Raises binascii.Error for a bytes field that is not base64. Other fields of the wrong
    JSON type are read leniently (an object where a list belongs reads as empty), never
    validated: Gemini is trusted for its shapes."""
    parts: tuple[Part, ...] = ()
    finish = None
    metadata = None
    candidates = response.get("candidates")
    if candidates:
        candidate = candidates[0]
        finish = finish_reason_from_json(candidate.get("finishReason"))
        content = candidate.get("content")
        if content is not None:
            parts = tuple(
                p for p in map(part_from_json, content.get("parts") or ()) if p is not None
            )
        metadata = {k: v for k, v in candidate.items() if k not in _CANDIDATE_CORE} or None
    feedback = response.get("promptFeedback")
    return ModelChunk(
        parts=parts,
        usage=usage_from_json(response.get("usageMetadata")),
        finish_reason=finish,
        block_reason=(feedback.get("blockReason") or "") if feedback else "",
        model_version=response.get("modelVersion") or "",
        candidate_metadata=metadata,
        prompt_feedback=feedback or None,
    )
