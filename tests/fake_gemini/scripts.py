"""What the fake answers (scripts: Reply, HttpError, Hold, Raw, Drop, Tokens, and their queues)
and what it records of each request.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit

from tests.fake_gemini.common import _METHODS, _STATUS_NAMES, Json, Method
from tests.fake_gemini.parts import _split_text, get_field, text_part

# --------------------------------------------------------------------------- scripts


@dataclass(frozen=True)
class HttpError:
    """An HTTP error reply with a Google-style ``{"error": {...}}`` body."""

    code: int
    message: str = "fake error"
    status: str | None = None  # defaults to the canonical name for ``code``
    retry_delay: str | None = None  # e.g. "7s": adds a google.rpc.RetryInfo detail
    details: Sequence[Json] = ()
    delay: float = 0.0  # seconds before the response headers

    def body(self) -> Json:
        details = list(self.details)
        if self.retry_delay is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": self.retry_delay,
                }
            )
        error: Json = {
            "code": self.code,
            "message": self.message,
            "status": self.status or _STATUS_NAMES.get(self.code, "UNKNOWN"),
        }
        if details:
            error["details"] = details
        return {"error": error}


class Hold:
    """A point where a streamed Reply stops until the test opens it (thread-safe).

    ``reached`` is set when a stream arrives at the hold with its first ``hold_after``
    events sent; ``await hold.wait_reached()`` waits for that from the test's loop."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_reached(self, timeout: float = 10.0) -> None:
        if not await asyncio.to_thread(self.reached.wait, timeout):
            raise TimeoutError(f"no stream reached the hold in {timeout}s")


@dataclass(frozen=True)
class Reply:
    """A model answer; ``chunks``, ``chunk_delay``, ``error_after``, ``drop_after`` only
    affect streaming (generateContent always gets the whole answer at once)."""

    text: str | None = None  # shorthand for a leading text_part(text)
    parts: Sequence[Json] = ()
    finish_reason: str | None = "STOP"
    usage: Json | None = None
    block_reason: str | None = None  # blocked prompt: no candidates, promptFeedback only
    chunks: int = 1  # each text part is streamed as this many slices
    delay: float = 0.0  # seconds before the response headers
    chunk_delay: float = 0.0  # seconds before each SSE event after the first
    error_after: int | None = None  # send `data: {"error": ...}` after this many events
    error: HttpError = HttpError(500, "fake mid-stream error")
    drop_after: int | None = None  # close the socket after this many events (if no error_after)
    candidate: Json | None = None  # more fields of the final candidate (groundingMetadata, ...)
    hold: Hold | None = None  # after `hold_after` events, wait until it is opened
    hold_after: int = 1

    def all_parts(self) -> list[Json]:
        leading = [text_part(self.text)] if self.text is not None else []
        return leading + [dict(part) for part in self.parts]

    def response(self, model: str) -> Json:
        """The whole answer as one GenerateContentResponse."""
        if self.block_reason is not None:
            return self._envelope(model, None, final=True)
        return self._envelope(model, self._candidate(self.all_parts(), final=True), final=True)

    def events(self, model: str) -> list[Json]:
        """The answer as streamed GenerateContentResponse chunks (finish/usage on the last)."""
        if self.block_reason is not None:
            return [self.response(model)]
        pieces: list[Json] = []
        for part in self.all_parts():
            if "text" not in part or self.chunks <= 1:
                pieces.append(part)
                continue
            slices = _split_text(part["text"], self.chunks)
            for index, piece in enumerate(slices):
                sliced = {**part, "text": piece}
                # The signature belongs to the part as a whole: send it once, at its end.
                if index < len(slices) - 1:
                    sliced.pop("thoughtSignature", None)
                pieces.append(sliced)
        groups: list[list[Json]] = [[piece] for piece in pieces] or [[]]
        last = len(groups) - 1
        return [
            self._envelope(model, self._candidate(group, final=i == last), final=i == last)
            for i, group in enumerate(groups)
        ]

    def _candidate(self, parts: list[Json], *, final: bool) -> Json:
        candidate: Json = {"index": 0}
        if parts:
            candidate["content"] = {"role": "model", "parts": parts}
        if final and self.finish_reason is not None:
            candidate["finishReason"] = self.finish_reason
        if final and self.candidate is not None:
            candidate.update(self.candidate)
        return candidate

    def _envelope(self, model: str, candidate: Json | None, *, final: bool) -> Json:
        response: Json = {"modelVersion": model}
        if candidate is not None:
            response["candidates"] = [candidate]
        else:
            response["promptFeedback"] = {"blockReason": self.block_reason}
        if final and self.usage is not None:
            response["usageMetadata"] = self.usage
        return response


@dataclass(frozen=True)
class Raw:
    """GenerateContentResponse dicts sent verbatim: each as one SSE event when streaming;
    generateContent gets the first one."""

    responses: Sequence[Json]
    chunk_delay: float = 0.0
    drop_after: int | None = None  # close the socket after this many events


@dataclass(frozen=True)
class Drop:
    """Close the connection after reading the request, without sending a byte."""

    delay: float = 0.0


@dataclass(frozen=True)
class Tokens:
    """A countTokens answer."""

    total: int


Script: TypeAlias = Reply | Raw | HttpError | Drop | Tokens
ScriptSource: TypeAlias = Script | Callable[["RecordedRequest"], Script]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake received it."""

    method: str  # generateContent, streamGenerateContent, countTokens ("" if unrouted)
    model: str
    path: str  # the request target, query string included
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON (None if the body was not JSON)
    raw_body: bytes
    time: float  # time.monotonic() when the request was read
    vertex: bool = False  # sent to a Vertex AI path (publishers/google/models/...)
    rejection: str | None = None  # the 400 message, when the strict fake refused it
    project: str | None = None  # Vertex AI: the path's projects/P (None in express mode)
    location: str | None = None  # Vertex AI: the path's locations/L
    # The error message, when the fake refused the credentials (the body is then unchecked).
    auth_failure: str | None = None

    @property
    def api_key(self) -> str | None:
        """The ``x-goog-api-key`` header."""
        return self.headers.get("x-goog-api-key")

    @property
    def url_key(self) -> str | None:
        """An API key passed as the ``key`` query parameter (the SDK never does)."""
        values = parse_qs(urlsplit(self.path).query).get("key")
        return values[0] if values else None

    @property
    def bearer_token(self) -> str | None:
        """The token of an ``Authorization: Bearer`` header."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None

    @property
    def user_project(self) -> str | None:
        """The ``x-goog-user-project`` header: the project billed for quota."""
        return self.headers.get("x-goog-user-project")

    @property
    def generate_request(self) -> Any:
        """The GenerateContentRequest part of the body: the body itself, or a countTokens
        body's ``generateContentRequest``."""
        return get_field(self.body, "generateContentRequest", default=self.body)

    @property
    def contents(self) -> list[Json]:
        contents = get_field(self.generate_request, "contents", default=[])
        return contents if isinstance(contents, list) else []

    def field(self, *path: str | int, default: Any = None) -> Any:
        """``get_field`` on the body, e.g. ``req.field("generationConfig", "temperature")``."""
        return get_field(self.body, *path, default=default)

    def texts(self, role: str | None = "user") -> list[str]:
        """Text of every text part in ``contents`` whose role is ``role`` (None: any)."""
        return [
            part["text"]
            for content in self.contents
            if role is None or content.get("role") == role
            for part in content.get("parts", [])
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]


@dataclass(frozen=True)
class Disconnect:
    """A client that closed its connection before the response was complete."""

    request: RecordedRequest
    events_sent: int  # SSE events written before the client went away
    time: float  # time.monotonic() when the fake noticed


def echo_default(request: RecordedRequest) -> Script:
    """Default script: countTokens counts words, generation echoes the last user text."""
    if request.method == "countTokens":
        # Words of the contents and, when the body carries them, of the system instruction.
        instruction = get_field(request.generate_request, "systemInstruction", "parts", default=[])
        texts = request.texts(role=None) + [get_field(p, "text", default="") for p in instruction]
        return Tokens(sum(len(text.split()) for text in texts))
    texts = request.texts()
    return Reply(text=f"echo: {texts[-1] if texts else ''}")


# --------------------------------------------------------------------------- script queues


class _ScriptQueues:
    """Thread-safe FIFO queues of scripts, one per method plus one shared by generation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str | None, deque[ScriptSource]] = {}
        self.default: Callable[[RecordedRequest], Script] = echo_default

    def push(self, script: ScriptSource, times: int, method: Method | None) -> None:
        if method is None and isinstance(script, Tokens):
            method = "countTokens"
        if method is not None and method not in _METHODS:
            raise ValueError(f"unknown method {method!r}")
        with self._lock:
            self._queues.setdefault(method, deque()).extend([script] * times)

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()

    def take(self, request: RecordedRequest) -> Script:
        keys: list[str | None] = [request.method]
        if request.method != "countTokens":
            keys.append(None)  # the shared generation queue
        with self._lock:
            source = next(
                (queue.popleft() for key in keys if (queue := self._queues.get(key))), None
            )
        if source is None:
            return self.default(request)
        return source(request) if callable(source) else source
