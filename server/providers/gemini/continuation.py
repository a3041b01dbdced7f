"""Automatic continuation of a streamed answer, as google-genai 3.6.1 does it.

A model may end a stream with `finishReason: CONTINUATION` and a `continuationToken` on
its candidate, or send checkpoint tokens part way through a long answer; the client then
asks again with the same request plus `"continuationToken"` and the answer goes on.
google-genai does this by default in `generate_content_stream`
(`models.AsyncModels._generate_content_stream_with_continuation`, with its rules in
`_extra_utils.StreamContinuation`); chatd posts its own request bodies, so it keeps the
same rules here:

- a hop (one HTTP request) that ends with CONTINUATION and a new token is followed by
  another hop from that token, and the intermediate finish reason is not passed on;
- a hop whose stream breaks (a transport failure, an error event) after a checkpoint goes
  on from the latest token; one that breaks before any content is retried from the token
  it started with, at most MAX_RECONNECTS_WITHOUT_PROGRESS times in a row;
- a request refused before any event (an HTTP error status) is never retried here: that
  is the SDK's `HttpOptions.retry_options`;
- usage is the hop's running total (the latest chunk's) plus the finished hops' usage.

Without tokens (what the Gemini API sends today for most models) a stream is one hop
and nothing here changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from server.sessions import errors
from server.sessions.model import Usage
from server.sessions.ports import ModelChunk

# google-genai's MAX_STREAM_RECONNECTS_WITHOUT_PROGRESS.
MAX_RECONNECTS_WITHOUT_PROGRESS = 3
_CONTINUATION = "CONTINUATION"


def with_token(body: bytes, token: str | None) -> bytes:
    """The request `body` (a JSON object) resumed from `token`, sent back as Gemini wrote
    it: GenerateContentRequest takes it as the top-level `continuationToken`
    (google-genai's `_GenerateContentConfig_to_mldev` puts it there)."""
    if token is None:
        return body
    return body[:-1] + b',"continuationToken":' + orjson.dumps(token) + b"}"


def add_usage(earlier: Usage, later: Usage) -> Usage:
    """Two hops' usage together: counts added, per modality too, and the later hop's
    traffic type (google-genai's `merge_pydantic_models`)."""
    return replace(earlier + later, traffic_type=later.traffic_type or earlier.traffic_type)


@dataclass(slots=True)
class _Hop:
    start_token: str | None
    token: str | None = None
    finish_reason: str | None = None
    prompt_feedback: bool = False
    received_any: bool = False
    yielded_content: bool = False
    usage: Usage | None = None


class Continuation:
    """The state of one streamed call across its hops; see the module docstring.

    Use: `token = c.start()`; post `with_token(body, token)`; pass each event through
    `c.observe(event, chunk)`; then `c.end(error)` says whether to start another hop, or
    raises the error that ends the call."""

    def __init__(self) -> None:
        self._usage: Usage | None = None
        self._resume: str | None = None
        self._reconnects = 0
        self._last_error: errors.ChatdError | None = None
        self._hop = _Hop(None)

    def start(self) -> str | None:
        """Starts a hop; the token to resume from (None for the first request)."""
        self._hop = _Hop(self._resume)
        return self._resume

    def observe(self, event: Mapping[str, Any], chunk: ModelChunk) -> ModelChunk:
        """Records one event of the hop; the chunk to pass on (its intermediate finish
        reason cleared, its usage counting the earlier hops)."""
        hop = self._hop
        hop.received_any = True
        if event.get("promptFeedback") is not None:
            hop.prompt_feedback = True
        candidates = event.get("candidates")
        if candidates and isinstance(candidates[0], Mapping):
            candidate = candidates[0]
            content = candidate.get("content")
            if isinstance(content, Mapping) and content.get("parts"):
                hop.yielded_content = True
            finish = candidate.get("finishReason")
            if finish:
                hop.finish_reason = str(finish)
            token = candidate.get("continuationToken")
            if token:
                hop.token = str(token)
            elif finish and finish != _CONTINUATION:
                hop.token = None
            if finish and self._can_resume(hop.token, str(finish), False):
                chunk = chunk._replace(finish_reason=None)
        if chunk.usage is not None:
            if self._usage is not None:
                chunk = chunk._replace(usage=add_usage(self._usage, chunk.usage))
            hop.usage = chunk.usage
        return chunk

    def end(self, error: errors.ChatdError | None, *, refused: bool = False) -> bool:
        """Ends the hop, which failed with `error` if not None (`refused`: Gemini answered
        the request with an error status). True to start another hop; False when the call
        is over; raises the error that ends it."""
        hop = self._hop
        if hop.usage is not None:
            self._usage = hop.usage
        if error is not None and refused and not hop.received_any:
            raise error
        progress = hop.yielded_content or bool(hop.token and hop.token != hop.start_token)
        if error is not None:
            self._last_error = error
        elif progress:
            self._last_error = None
        self._resume, self._reconnects = self._next_token()
        if self._can_resume(self._resume, hop.finish_reason, hop.prompt_feedback):
            return True
        if error is not None:
            raise error
        gave_up = hop.finish_reason is None and not hop.prompt_feedback
        if gave_up and self._last_error is not None:
            raise self._last_error
        return False

    def _next_token(self) -> tuple[str | None, int]:
        hop = self._hop
        if hop.finish_reason is not None or hop.prompt_feedback:
            if (
                hop.finish_reason == _CONTINUATION
                and not hop.prompt_feedback
                and hop.token
                and hop.token != hop.start_token
            ):
                return hop.token, 0
            return None, 0
        if hop.token and hop.token != hop.start_token:
            return hop.token, 0
        if hop.yielded_content or self._reconnects >= MAX_RECONNECTS_WITHOUT_PROGRESS:
            return None, self._reconnects
        return hop.start_token, self._reconnects + 1

    @staticmethod
    def _can_resume(token: str | None, finish_reason: str | None, feedback: bool) -> bool:
        return bool(token) and not feedback and finish_reason in (None, _CONTINUATION)
