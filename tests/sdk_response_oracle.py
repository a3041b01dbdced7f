"""The oracle's response side: google-genai's own parse of a streamed Gemini answer, and
chatd's former mapping of the SDK's types to a ModelChunk.

This is how chatd read its answers before it parsed Gemini's JSON itself
(server/providers/gemini/answers.py); tests/test_wire_response_oracle.py feeds the same
SSE body to google-genai's response path (a genai.Client on an httpx2.MockTransport) and to
chatd's, and compares the ModelChunks. `sdk_segments` is the SDK's own split of an SSE body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx2
from google import genai
from google.genai import _api_client, types

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
from tests.sdk_oracle import to_sdk_part

MODEL = "gemini-oracle"


async def _chunks(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def sse_response(chunks: Sequence[bytes]) -> httpx2.Response:
    """A streamed 200 response whose body arrives in exactly these reads."""
    return httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content=_chunks(chunks)
    )


async def sdk_segments(chunks: Sequence[bytes]) -> list[Any]:
    """The JSON segments google-genai reads from an SSE body cut into `chunks`
    (HttpResponse.async_segments: its line decoder, event split and json.loads)."""
    response = _api_client.HttpResponse({}, sse_response(chunks))
    return [segment async for segment in response.async_segments()]


async def sdk_raw_segments(chunks: Sequence[bytes]) -> list[str]:
    """The segments' text, before json.loads (HttpResponse._aiter_response_stream)."""
    response = _api_client.HttpResponse({}, sse_response(chunks))
    return [segment async for segment in response._aiter_response_stream()]


class SdkStream:
    """google-genai's generate_content_stream answered by a MockTransport: `parse(body)`
    is the list of GenerateContentResponse the SDK makes of an SSE body."""

    def __init__(self, *, vertex: bool) -> None:
        self.body = b""
        self._http = httpx2.AsyncClient(transport=httpx2.MockTransport(self._answer))
        options = types.HttpOptions(
            base_url="http://gemini.oracle",
            httpx_async_client=self._http,
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        # Vertex AI in express mode (an API key, no project) needs no Google credentials.
        self._client = genai.Client(
            api_key="oracle-key", vertexai=vertex or None, http_options=options
        )

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        assert b"streamGenerateContent" in request.url.raw_path
        return sse_response([self.body])

    async def parse(self, body: bytes) -> list[types.GenerateContentResponse]:
        self.body = body
        # Without automatic continuation (on by default in google-genai 3.x), which would
        # post again for a candidate's continuationToken: the oracle is the SDK's parse.
        config = types.GenerateContentConfig(automatic_continuation=False)
        stream = await self._client.aio.models.generate_content_stream(
            model=MODEL, contents="hi", config=config
        )
        return [response async for response in stream]

    async def close(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()


def _typed_part(part: types.Part) -> Part:
    """The domain part for an SDK part, reading only the fields chatd models."""
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
    if part.executable_code is not None:
        code = part.executable_code
        language = _name(code.language)
        return Part(
            executable_code=ExecutableCode(language, code.code or "", code.id or ""), **extra
        )
    if part.code_execution_result is not None:
        result = part.code_execution_result
        outcome = _name(result.outcome)
        return Part(
            code_execution_result=CodeExecutionResult(
                outcome, result.output or "", result.id or ""
            ),
            **extra,
        )
    if part.tool_call is not None:
        t = part.tool_call
        tool_type = _name(t.tool_type)
        return Part(tool_call=ServerToolCall(t.id or "", tool_type, t.args or {}), **extra)
    if part.tool_response is not None:
        t2 = part.tool_response
        tool_type = _name(t2.tool_type)
        return Part(
            tool_response=ServerToolResponse(t2.id or "", tool_type, t2.response or {}), **extra
        )
    return Part(**extra)


def _dump(part: types.Part) -> dict[str, Any]:
    dumped: dict[str, Any] = part.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def _essential(value: Any) -> Any:
    """`value` without what says nothing (false flags, empty ids, empty objects), so that a
    part and its typed copy compare equal when chatd models everything in it."""
    if isinstance(value, dict):
        kept = {k: _essential(v) for k, v in value.items()}
        return {
            k: v
            for k, v in kept.items()
            if v is not False and v != {} and not (v == "" and k in ("id", "displayName"))
        }
    if isinstance(value, list):
        return [_essential(v) for v in value]
    return value


_PLAIN_TEXT = frozenset({"text", "thought", "thought_signature"})


def _from_sdk_part(part: types.Part) -> Part | None:
    """The domain part for a part of the model's answer. A part holding anything chatd
    does not model (a kind, or a field of a kind) is kept whole as its Gemini JSON, never
    re-shaped; a part carrying only a signature stays a signature-only part."""
    if part.model_fields_set <= _PLAIN_TEXT and part.text is not None:
        # The common case, a chunk of text: nothing in it chatd does not model.
        return _typed_part(part)
    typed = _typed_part(part)
    original = _dump(part)
    if not _essential(original):
        return None
    if part.text == "" and not part.thought_signature:
        # Empty text without a signature says nothing, and Gemini refuses it sent back (an
        # empty text chunk is dropped the same way when chunks are joined).
        return None
    # Written back with everything chatd keeps (display names included, as on Vertex AI).
    if _essential(_dump(to_sdk_part(typed, vertex=True))) == _essential(original):
        return typed
    return Part(gemini_part=original)


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


def chunk_from_sdk(response: types.GenerateContentResponse) -> ModelChunk:
    """chatd's former mapping of a response google-genai parsed."""
    parts: list[Part] = []
    finish = None
    metadata = None
    if response.candidates:
        candidate = response.candidates[0]
        finish = _finish_reason(candidate.finish_reason)
        if candidate.content is not None:
            parts = [p for p in map(_from_sdk_part, candidate.content.parts or ()) if p is not None]
        metadata = _candidate_metadata(candidate)
    block = ""
    if response.prompt_feedback is not None and response.prompt_feedback.block_reason is not None:
        block = _name(response.prompt_feedback.block_reason)
    return ModelChunk(
        parts=tuple(parts),
        usage=_usage(response.usage_metadata),
        finish_reason=finish,
        block_reason=block,
        model_version=response.model_version or "",
        candidate_metadata=metadata,
        prompt_feedback=_prompt_feedback(response.prompt_feedback),
    )


def _prompt_feedback(
    feedback: types.GenerateContentResponsePromptFeedback | None,
) -> dict[str, Any] | None:
    """The response's promptFeedback as the SDK reads it (camelCase JSON)."""
    if feedback is None:
        return None
    dumped: dict[str, Any] = feedback.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped or None


# What the domain models of a candidate itself; the rest is its metadata.
# The continuation token is what the provider follows (continuation.py), not metadata.
_CANDIDATE_CORE = {"content", "finish_reason", "index", "continuation_token"}


def _candidate_metadata(candidate: types.Candidate) -> dict[str, Any] | None:
    """Everything the candidate says besides its content, as the SDK reads it (camelCase
    JSON): grounding, URL context, citations, safety ratings, finish message, ..."""
    if candidate.model_fields_set <= _CANDIDATE_CORE:
        return None
    metadata: dict[str, Any] = candidate.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude=_CANDIDATE_CORE
    )
    return metadata or None
