"""Fake Gemini REST server (stdlib, plus cryptography for its token endpoint) that
google-genai talks to over real HTTP in tests.

Usage::

    with FakeGemini() as fake:  # or: fake_gemini_fixture wrapped in pytest.fixture
        fake.push(Reply(text="Hello there", chunks=3, chunk_delay=0.01))
        fake.push(HttpError(429, retry_delay="7s"), times=2)  # the next two requests fail
        client = genai.Client(
            api_key="k", http_options=types.HttpOptions(base_url=fake.base_url)
        )
        ...
        assert fake.requests[0].api_key == "k"
        assert fake.requests[0].texts() == ["hi"]
        fake.wait_for_disconnect(timeout=0.5)  # a client gave up on a stream

The fake is strict by default: a request the real API refuses (unknown field names, a
thinking budget beside a level, empty unsigned text, an unsigned current-turn call on
Gemini 3, ...; see ``check_request``) gets HTTP 400 INVALID_ARGUMENT with a message like
the API's, and its record carries ``rejection``. A test that sends such a request on
purpose sets ``fake.strict = False``. Gemini API paths (``/v1|v1beta|v1alpha/models/M:...``)
and Vertex AI paths (``.../publishers/google/models/M:...``, ``record.vertex``) are served.

The fake checks credentials the way the services do (``check_credentials``): Gemini API and
Vertex AI express paths need an API key (any non-empty key, unless ``expected_api_key`` is
set); Vertex AI paths with a project need ``Authorization: Bearer`` with a token the fake's
own OAuth 2.0 token endpoint (``POST /token``, the JWT-bearer grant of service-account
credentials) issued and that has not expired. ``service_account`` makes a key file whose
key the fake trusts, for ``GOOGLE_APPLICATION_CREDENTIALS``.

Scripts are consumed in order: per method if pushed with ``method=...``, else from a queue
shared by generateContent and streamGenerateContent; ``Tokens`` goes to countTokens. With
nothing queued the fake echoes the last user text (``set_default`` changes that). A script
may also be a callable taking the ``RecordedRequest`` and returning a script.

- ``Reply``: a model answer (text/parts, finish reason, usage, blocked prompt), streamed as
  ``chunks`` slices per text part, with delays, a mid-stream error event (``error_after``)
  or a mid-stream connection drop (``drop_after``); ``hold`` stops it after
  ``hold_after`` events until the test opens the ``Hold`` (a client hang-up still ends it).
- ``HttpError``: an HTTP error with a Google-style body (RetryInfo when ``retry_delay``).
- ``Drop``: close the connection without answering.  ``Tokens``: a countTokens answer.
- ``Raw``: GenerateContentResponse dicts sent verbatim.
- Implicit caching (``implicit_caching=True``, see ``ImplicitCache``): every answer's
  usageMetadata reports ``cachedContentTokenCount``, the tokens of the longest prefix of
  the request that an earlier request already sent, as Gemini's implicit caching does.
- Explicit caches (``fake.caches``, tests/fake_gemini_caches.py): cachedContents create,
  get, patch and delete, and what a request naming a cache is refused for and billed.
- Part builders ``text_part``, ``thought_part``, ``call_part``; ``usage`` builds
  usageMetadata. Requests keep their raw JSON; ``get_field`` and ``b64decode`` read it
  whatever the key casing or base64 alphabet.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import http
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

if TYPE_CHECKING:
    from tests.fake_gemini_caches import FakeCaches

Json: TypeAlias = dict[str, Any]
Method: TypeAlias = Literal["generateContent", "streamGenerateContent", "countTokens"]
_T = TypeVar("_T")

_log = logging.getLogger(__name__)

# The versions each API serves (https://ai.google.dev/gemini-api/docs/api-versions; Vertex AI:
# https://cloud.google.com/vertex-ai/docs/reference/rest); anything else is a 404 there too.
_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
_VERTEX_PATH = re.compile(
    r"^/(?:v1|v1beta1)/(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
    r"publishers/google/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)
TOKEN_PATH = "/token"
_METHODS: tuple[Method, ...] = ("generateContent", "streamGenerateContent", "countTokens")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# --------------------------------------------------------------------------- helpers


def b64encode(data: bytes) -> str:
    """Encodes bytes the way the Gemini API sends them (standard alphabet, padded)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decodes base64 in the standard or URL-safe alphabet, padded or not."""
    # The SDK sends URL-safe base64; the API and hand-written tests use the standard one.
    normalized = text.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {text!r}") from exc


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def get_field(obj: Any, *path: str | int, default: Any = None) -> Any:
    """Walks ``path`` through dicts/lists, matching each key in camelCase or snake_case."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(obj, list) or not -len(obj) <= key < len(obj):
                return default
            obj = obj[key]
            continue
        if not isinstance(obj, dict):
            return default
        for candidate in (key, _camel(key), _snake(key)):
            if candidate in obj:
                obj = obj[candidate]
                break
        else:
            return default
    return obj


def text_part(text: str, *, signature: bytes | None = None) -> Json:
    """A text part, optionally carrying a thought signature."""
    return _with_signature({"text": text}, signature)


def thought_part(text: str, *, signature: bytes | None = None) -> Json:
    """A thought-summary part (``thought: true``)."""
    return _with_signature({"text": text, "thought": True}, signature)


def call_part(
    name: str,
    args: Json | None = None,
    *,
    id: str | None = None,  # mirrors the API field name
    signature: bytes | None = None,
) -> Json:
    """A functionCall part with optional id and thought signature."""
    call: Json = {"name": name, "args": args or {}}
    if id is not None:
        call["id"] = id
    return _with_signature({"functionCall": call}, signature)


def code_part(
    code: str, *, language: str = "PYTHON", id: str | None = None, signature: bytes | None = None
) -> Json:
    """An executableCode part (code execution tool)."""
    body: Json = {"language": language, "code": code}
    if id is not None:
        body["id"] = id
    return _with_signature({"executableCode": body}, signature)


def code_result_part(output: str, *, outcome: str = "OUTCOME_OK", id: str | None = None) -> Json:
    """A codeExecutionResult part."""
    body: Json = {"outcome": outcome, "output": output}
    if id is not None:
        body["id"] = id
    return {"codeExecutionResult": body}


def signature_part(signature: bytes) -> Json:
    """A part carrying only a thought signature, as the API streams them."""
    return {"thoughtSignature": b64encode(signature)}


def grounding(*sources: tuple[str, str], queries: Sequence[str] = ()) -> Json:
    """A groundingMetadata dict with web sources (uri, title), each supporting one segment."""
    return {
        "webSearchQueries": list(queries),
        "groundingChunks": [{"web": {"uri": uri, "title": title}} for uri, title in sources],
        "groundingSupports": [
            {
                "segment": {"startIndex": i, "endIndex": i + 1, "text": "x"},
                "groundingChunkIndices": [i],
                "confidenceScores": [0.5],
            }
            for i in range(len(sources))
        ],
        "searchEntryPoint": {"renderedContent": "<div>suggestions</div>"},
    }


def _with_signature(part: Json, signature: bytes | None) -> Json:
    if signature is not None:
        part["thoughtSignature"] = b64encode(signature)
    return part


def usage(prompt: int = 0, candidates: int = 0, thoughts: int = 0) -> Json:
    """A usageMetadata dict; the total is the sum, as the API reports it."""
    meta: Json = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
    }
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return meta


def _split_text(text: str, pieces: int) -> list[str]:
    count = max(1, min(pieces, len(text)))
    size, extra = divmod(len(text), count)
    out: list[str] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        out.append(text[start:end])
        start = end
    return out


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


# --------------------------------------------------------------------------- implicit caching


def fake_tokens(value: Any) -> int:
    """The fake's token count of a JSON value: one token per 4 characters of its compact
    JSON with sorted keys (at least 1), so the same value always counts the same."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return max(-(-len(text) // 4), 1)


class ImplicitCache:
    """The fake's model of Gemini's implicit context caching.

    Gemini 2.5 and newer models cache request prefixes implicitly and bill a request's
    tokens that hit such a cache as ``usageMetadata.cachedContentTokenCount``; a request
    hits when it begins with the same content as an earlier one, and only requests of at
    least a model's minimum input token count are cached (the docs list 2,048 tokens for
    Gemini 2.5 Flash and Pro and 4,096 for newer models; older revisions of the page
    said 1,024 for Flash). Source: https://ai.google.dev/gemini-api/docs/caching
    ("Implicit caching").

    Here a request is the sequence (header, contents[0], contents[1], ...) where the
    header is the model, ``systemInstruction``, ``tools`` and ``toolConfig``: what comes
    before the contents in the prompt. Every prefix of every request is remembered (no
    expiry: the docs give none for implicit caches). A request's cached tokens are the
    ``fake_tokens`` of its longest remembered prefix, system instruction and tools
    included; 0 when that prefix is not even the header, or when it is shorter than
    ``min_tokens`` (a prefix below the minimum is never cached). Prompt tokens are the
    ``fake_tokens`` of the header's systemInstruction and tools plus every content.
    """

    def __init__(self, min_tokens: int = 2048) -> None:
        self.min_tokens = min_tokens
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()

    def usage(self, request: RecordedRequest, answer: Sequence[Json]) -> Json:
        """usageMetadata for ``request`` answered with ``answer`` parts; remembers its
        prefixes for later requests."""
        body = request.generate_request
        header_fields = [
            get_field(body, name, default=None)
            for name in ("systemInstruction", "tools", "toolConfig")
        ]
        header = [request.model, *header_fields]
        sizes = [sum(fake_tokens(f) for f in header_fields if f is not None)]
        sizes += [fake_tokens(content) for content in request.contents]
        chain: list[bytes] = []
        digest = hashlib.sha256()
        for item in (header, *request.contents):
            digest.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())
            chain.append(digest.copy().digest())
        with self._lock:
            hits = 0
            while hits < len(chain) and chain[hits] in self._seen:
                hits += 1
            self._seen.update(chain)
        cached = sum(sizes[:hits])
        if cached < self.min_tokens:
            cached = 0
        prompt = sum(sizes)
        candidates = sum(fake_tokens(part) for part in answer)
        meta: Json = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates,
        }
        if cached:
            meta["cachedContentTokenCount"] = cached
        return meta

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


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


# --------------------------------------------------------------------------- HTTP plumbing


class _ClientGone(Exception):
    """The client closed the connection while the fake was still answering."""


class _Connection:
    """One HTTP/1.1 keep-alive connection: reads requests, writes responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True
        self.events_sent = 0  # SSE events written for the response in progress
        self._eof: asyncio.Task[None] | None = None

    async def read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        """Returns (verb, target, headers, body), or None when the client is done."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        verb, target, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        # httpx sends a Content-Length for the SDK's JSON bodies; chunked uploads never occur.
        length = int(headers.get("content-length", "0"))
        try:
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return verb, target, headers, body

    def watch_for_eof(self) -> None:
        """Starts noticing a client hang-up while the response is in progress."""
        self.events_sent = 0
        self._eof = asyncio.ensure_future(self._read_until_eof())

    async def _read_until_eof(self) -> None:
        # Reading is the only prompt way to see a FIN: writes to a closed peer can still
        # succeed into the kernel buffer. httpx never pipelines, so bytes here are unexpected.
        while True:
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            self.reusable = False  # we swallowed bytes of a pipelined request

    async def stop_watching(self) -> None:
        if self._eof is None:
            return
        if self._eof.done():
            self.reusable = False
        self._eof.cancel()
        # Wait for the cancellation to land: a StreamReader allows only one pending read.
        with contextlib.suppress(asyncio.CancelledError):
            await self._eof
        self._eof = None

    async def pause(self, seconds: float) -> None:
        """Sleeps, raising _ClientGone as soon as the client hangs up."""
        if self._eof is None:
            await asyncio.sleep(seconds)
            return
        done, _ = await asyncio.wait({self._eof}, timeout=max(seconds, 0.0))
        if done:
            raise _ClientGone

    async def write(self, data: bytes) -> None:
        if self._eof is not None and self._eof.done():
            raise _ClientGone
        try:
            self.writer.write(data)
            await self.writer.drain()  # flush now so each SSE event arrives live
        except (ConnectionError, OSError) as exc:
            raise _ClientGone from exc

    async def send_json(self, code: int, body: Json) -> None:
        payload = json.dumps(body).encode()
        head = _status_line(code) + (
            "Content-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        await self.write(head.encode() + payload)

    async def start_sse(self) -> None:
        # Chunked encoding keeps the connection reusable and lets httpx see each event as
        # it is written; a missing terminating chunk is how a mid-stream drop looks.
        head = _status_line(200) + (
            "Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await self.write(head.encode())

    async def send_event(self, body: Json) -> None:
        # Exactly what the SDK's parser accepts: `data: ` + JSON, then a blank line.
        event = b"data: " + json.dumps(body).encode() + b"\r\n\r\n"
        await self.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        self.events_sent += 1

    async def end_sse(self) -> None:
        await self.write(b"0\r\n\r\n")

    def close(self) -> None:
        if self._eof is not None:
            self._eof.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()


def _status_line(code: int) -> str:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {code} {phrase}\r\n"


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


# --------------------------------------------------------------------------- credentials
#
# How Google answers requests without valid credentials. Google's error model puts the
# machine-readable cause in a google.rpc.ErrorInfo detail (https://cloud.google.com/apis/
# design/errors#error_info); the reasons are those of google/api/error_reason.proto
# (https://github.com/googleapis/googleapis/blob/master/google/api/error_reason.proto).

# Service accounts sign their grant assertion for this audience, whatever their token_uri
# (https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests).
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Google refuses assertions that live longer than an hour or are not current.
_MAX_ASSERTION_LIFETIME = 3600
_CLOCK_SKEW = 300
_DEVCONSOLE = "See https://developers.google.com/identity/sign-in/web/devconsole-project."


@dataclass(frozen=True)
class IssuedToken:
    """An access token the fake's token endpoint issued."""

    token: str
    client_email: str  # the service account it was issued to
    scope: str  # space-separated scopes of the grant
    expires_at: float  # time.monotonic() when the fake stops accepting it


class CredentialsRefused(Exception):
    """A request refused for its credentials: the HTTP status and Google's error body."""

    def __init__(self, code: int, message: str, reason: str | None, service: str) -> None:
        super().__init__(message)
        self.code = code
        details: list[Json] = []
        if reason is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "googleapis.com",
                    "metadata": {"service": service},
                }
            )
        self.error = HttpError(code, message, details=details)


class _GrantRefused(Exception):
    """A token request refused as an OAuth 2.0 error (RFC 6749 section 5.2)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.body: Json = {"error": error, "error_description": description}


def _check_api_key(key: str | None, expected: str | None, service: str) -> None:
    if not key:
        if service == "generativelanguage.googleapis.com":
            # What the Gemini API answers a request with no key (HTTP 403 PERMISSION_DENIED;
            # https://ai.google.dev/gemini-api/docs/troubleshooting#error-codes).
            raise CredentialsRefused(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to "
                "call this API.",
                None,
                service,
            )
        raise CredentialsRefused(
            401,
            "Request is missing required authentication credential. Expected OAuth 2 access "
            f"token, login cookie or other valid authentication credential. {_DEVCONSOLE}",
            "CREDENTIALS_MISSING",
            service,
        )
    if expected is not None and key != expected:
        # Google answers a key it does not know with 400 INVALID_ARGUMENT, not 401/403.
        raise CredentialsRefused(
            400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID", service
        )


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.cache
def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    """An RSA key for test service accounts (index 1 is a second key, for a wrong signature)."""
    del index  # one cached key per index
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --------------------------------------------------------------------------- the server


class FakeGemini:
    """A fake Gemini REST endpoint served from its own thread and event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        strict: bool = True,
        expected_api_key: str | None = None,
        implicit_caching: bool = False,
    ) -> None:
        self._host = host
        # When set, every Reply's usageMetadata is the cache's (see ImplicitCache).
        self.implicit_cache: ImplicitCache | None = ImplicitCache() if implicit_caching else None
        # cachedContents, and the checks and usage of requests naming one.
        from tests.fake_gemini_caches import FakeCaches

        self.caches: FakeCaches = FakeCaches()
        # Strict: refuse with HTTP 400 what the real API refuses (see check_request).
        self.strict = strict
        # None: any non-empty API key is valid; else only this one (400 API_KEY_INVALID).
        self.expected_api_key = expected_api_key
        # Seconds an issued access token lives, as the token endpoint's expires_in.
        self.token_lifetime = 3600
        # When set, the token endpoint refuses every grant: invalid_grant with this text.
        self.token_refusal: str | None = None
        self._trusted: dict[str, rsa.RSAPublicKey] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._port = 0
        self._scripts = _ScriptQueues()
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._disconnects: list[Disconnect] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._startup_error: BaseException | None = None

    # ---- lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, for ``types.HttpOptions(base_url=...)``."""
        if not self._port:
            raise RuntimeError("FakeGemini is not started")
        return f"http://{self._host}:{self._port}"

    def start(self) -> FakeGemini:
        """Binds a free port and starts serving in a daemon thread."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="fake-gemini", daemon=True
        )
        self._thread.start()
        if not ready.wait(10) or self._startup_error is not None:
            raise RuntimeError("FakeGemini failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Closes every connection and stops the server thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- scripting

    def push(self, script: ScriptSource, *, times: int = 1, method: Method | None = None) -> None:
        """Queues ``script`` for the next ``times`` requests (of ``method``, if given)."""
        self._scripts.push(script, times, method)

    def set_default(self, default: Callable[[RecordedRequest], Script] | None) -> None:
        """Sets what answers when no script is queued (None restores the echo default)."""
        self._scripts.default = default or echo_default

    def reset(self) -> None:
        """Forgets queued scripts, recorded requests and disconnects."""
        self._scripts.clear()
        with self._cond:
            self._requests.clear()
            self._disconnects.clear()

    # ---- credentials

    def service_account(
        self, email: str = "chatd@test-project.iam.gserviceaccount.com", *, trusted: bool = True
    ) -> Json:
        """A service-account key file's JSON whose ``token_uri`` is this fake's token
        endpoint (https://cloud.google.com/iam/docs/keys-create-delete#creating). The fake
        verifies the grant assertions it signs; ``trusted=False`` registers another public
        key for ``email``, so its grants fail with ``Invalid JWT Signature.``."""
        key = _rsa_key(0)
        with self._cond:
            self._trusted[email] = (key if trusted else _rsa_key(1)).public_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "type": "service_account",
            "project_id": email.split("@")[-1].split(".")[0],
            "private_key_id": "fake-key-1",
            "private_key": pem.decode("ascii"),
            "client_email": email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.base_url + TOKEN_PATH,
            "universe_domain": "googleapis.com",
        }

    def issue_token(
        self, client_email: str = "direct", scope: str = "", lifetime: float | None = None
    ) -> str:
        """Issues an access token as the token endpoint would; ``lifetime`` in seconds
        (default ``token_lifetime``)."""
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        seconds = self.token_lifetime if lifetime is None else lifetime
        issued = IssuedToken(token, client_email, scope, time.monotonic() + seconds)
        with self._cond:
            self._tokens[token] = issued
        return token

    @property
    def issued_tokens(self) -> list[IssuedToken]:
        """The access tokens issued so far, oldest first."""
        with self._cond:
            return list(self._tokens.values())

    def expire_tokens(self) -> None:
        """Makes every issued token expired, as if its lifetime had passed."""
        now = time.monotonic()
        with self._cond:
            for token, issued in self._tokens.items():
                self._tokens[token] = IssuedToken(
                    issued.token, issued.client_email, issued.scope, now
                )

    def check_credentials(self, path: str, headers: dict[str, str]) -> None:
        """Raises CredentialsRefused where the service would refuse the request's
        credentials: an API key on Gemini API and Vertex AI express paths, a bearer token
        this fake issued (and that has not expired) on Vertex AI paths with a project."""
        target = urlsplit(path)
        vertex = _VERTEX_PATH.match(target.path)
        key = headers.get("x-goog-api-key") or (parse_qs(target.query).get("key") or [""])[0]
        if vertex is None:
            _check_api_key(key, self.expected_api_key, "generativelanguage.googleapis.com")
            return
        if vertex["project"] is None:
            _check_api_key(key, self.expected_api_key, "aiplatform.googleapis.com")
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            _check_api_key(None, None, "aiplatform.googleapis.com")
        with self._cond:
            issued = self._tokens.get(token.strip())
        if issued is None or issued.expires_at <= time.monotonic():
            # https://cloud.google.com/docs/authentication/rest: an expired or unknown
            # access token is 401 UNAUTHENTICATED.
            raise CredentialsRefused(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                f"token, login cookie or other valid authentication credential. {_DEVCONSOLE}",
                "ACCESS_TOKEN_EXPIRED" if issued is not None else None,
                "aiplatform.googleapis.com",
            )

    def _grant(self, raw: bytes) -> Json:
        """The token endpoint: a service account's JWT-bearer grant, verified the way
        Google verifies it (https://developers.google.com/identity/protocols/oauth2/
        service-account#httprest); returns the token response or raises _GrantRefused."""
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != JWT_BEARER_GRANT:
            raise _GrantRefused(
                "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}"
            )
        if self.token_refusal is not None:
            raise _GrantRefused("invalid_grant", self.token_refusal)
        claims = self._verified_claims(form.get("assertion", ""))
        if not str(claims.get("scope", "")).strip():
            raise _GrantRefused(
                "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        token = self.issue_token(str(claims["iss"]), str(claims["scope"]))
        return {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}

    def _verified_claims(self, assertion: str) -> Json:
        try:
            head, payload, signature = assertion.split(".")
            header = json.loads(_b64url_decode(head))
            claims = json.loads(_b64url_decode(payload))
            signed = _b64url_decode(signature)
        except (ValueError, binascii.Error) as exc:
            raise _GrantRefused("invalid_grant", "Invalid JWT: malformed assertion") from exc
        if not isinstance(header, dict) or header.get("alg") != "RS256":
            raise _GrantRefused("invalid_grant", "Invalid JWT: the algorithm must be RS256")
        if not isinstance(claims, dict):
            raise _GrantRefused("invalid_grant", "Invalid JWT: malformed assertion")
        with self._cond:
            key = self._trusted.get(str(claims.get("iss")))
        if key is None:
            raise _GrantRefused("invalid_grant", "Invalid grant: account not found")
        try:
            key.verify(signed, f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise _GrantRefused("invalid_grant", "Invalid JWT Signature.") from exc
        if claims.get("aud") != TOKEN_AUDIENCE:
            raise _GrantRefused("invalid_grant", f"Invalid JWT: aud must be {TOKEN_AUDIENCE}")
        now = time.time()
        issued_at, expires = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(issued_at, int)
            or not isinstance(expires, int)
            or expires - issued_at > _MAX_ASSERTION_LIFETIME
            or expires < now - _CLOCK_SKEW
            or issued_at > now + _CLOCK_SKEW
        ):
            raise _GrantRefused(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        return claims

    # ---- observation

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def disconnects(self) -> list[Disconnect]:
        """A snapshot of the client hang-ups seen during unfinished responses."""
        with self._cond:
            return list(self._disconnects)

    def wait_for_request(self, count: int = 1, timeout: float = 1.0) -> RecordedRequest:
        """Blocks until ``count`` requests have arrived; returns the ``count``-th."""
        return self._wait(self._requests, count, timeout, "requests")

    def wait_for_disconnect(self, count: int = 1, timeout: float = 1.0) -> Disconnect:
        """Blocks until ``count`` disconnects were seen; returns the ``count``-th."""
        return self._wait(self._disconnects, count, timeout, "disconnects")

    # The wait runs in a worker thread, where asyncio.timeout could not interrupt it.
    async def await_disconnect(self, count: int = 1, timeout: float = 1.0) -> Disconnect:
        """``wait_for_disconnect`` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for_disconnect, count, timeout)

    def _wait(self, items: list[_T], count: int, timeout: float, what: str) -> _T:
        with self._cond:
            if not self._cond.wait_for(lambda: len(items) >= count, timeout):
                raise TimeoutError(f"saw {len(items)} {what} in {timeout}s, wanted {count}")
            return items[count - 1]

    def _record(self, items: list[_T], item: _T) -> None:
        with self._cond:
            items.append(item)
            self._cond.notify_all()

    # ---- server thread

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            server = loop.run_until_complete(asyncio.start_server(self._on_connect, self._host, 0))
            self._port = server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._startup_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown(server))
            loop.close()

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Connection(reader, writer)
        try:
            while conn.reusable and (parsed := await conn.read_request()) is not None:
                await self._answer(conn, *parsed)
        except (_ClientGone, asyncio.CancelledError):
            # Cancellation comes from stop(); re-raising it would make asyncio's start_server
            # callback log every open connection as an error.
            pass
        except Exception:
            # Surface bugs in the fake itself; the client just sees a dropped connection.
            _log.exception("fake gemini: unexpected error")
        finally:
            conn.close()
            self._tasks.discard(task)

    async def _answer(
        self, conn: _Connection, verb: str, target: str, headers: dict[str, str], raw: bytes
    ) -> None:
        path = urlsplit(target).path
        if verb == "POST" and path == TOKEN_PATH:
            try:
                await conn.send_json(200, self._grant(raw))
            except _GrantRefused as exc:
                await conn.send_json(400, exc.body)
            return
        if self.caches.serves(path):
            try:
                self.check_credentials(target, headers)
            except CredentialsRefused as exc:
                await conn.send_json(exc.code, exc.error.body())
                return
            hold = self.caches.holds.get(verb)
            if hold is not None:
                conn.watch_for_eof()
                try:
                    hold.reached.set()
                    while not hold.is_open:
                        await conn.pause(0.005)  # raises _ClientGone if the client hangs up
                finally:
                    await conn.stop_watching()
            await conn.send_json(*self.caches.answer(verb, path, raw))
            return
        vertex_match = _VERTEX_PATH.match(path)
        match = _PATH.match(path) or vertex_match
        method, model = (match["method"], match["model"]) if match else ("", "")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        routed = verb == "POST" and method in _METHODS
        rejection = refused = None
        if routed:
            # Credentials are checked before the body, as the services do.
            try:
                self.check_credentials(target, headers)
            except CredentialsRefused as exc:
                refused = exc
        if routed and self.strict and refused is None:
            try:
                check_request(method, model, body, vertex=vertex_match is not None)
            except InvalidRequest as exc:
                rejection = str(exc)
        refusal = None
        if routed and refused is None and rejection is None:
            refusal = self.caches.refusal(model, method, body)
            rejection = refusal.message if refusal is not None else None
        request = RecordedRequest(
            method,
            model,
            target,
            headers,
            body,
            raw,
            time.monotonic(),
            vertex=vertex_match is not None,
            rejection=rejection,
            project=vertex_match["project"] if vertex_match else None,
            location=vertex_match["location"] if vertex_match else None,
            auth_failure=str(refused) if refused is not None else None,
        )
        self._record(self._requests, request)

        if not routed:
            await conn.send_json(404, HttpError(404, f"fake: no route {verb} {target}").body())
            return
        if refused is not None:
            await conn.send_json(refused.code, refused.error.body())
            return
        if rejection is not None:
            error = refusal or HttpError(400, rejection)
            await conn.send_json(error.code, error.body())
            return

        script = self._scripts.take(request)
        if isinstance(script, Reply) and request.method != "countTokens":
            answer, implicit = script.all_parts(), self.implicit_cache
            meta = self.caches.usage(request, answer, implicit)
            if meta is None and implicit is not None:
                meta = implicit.usage(request, answer)
            if meta is not None:
                script = replace(script, usage=meta)
        conn.watch_for_eof()
        try:
            await self._play(conn, request, script)
        except _ClientGone:
            self._record(self._disconnects, Disconnect(request, conn.events_sent, time.monotonic()))
            raise
        finally:
            await conn.stop_watching()

    async def _play(self, conn: _Connection, request: RecordedRequest, script: Script) -> None:
        match script:
            case Drop(delay=delay):
                await conn.pause(delay)
                conn.reusable = False
            case HttpError(delay=delay):
                await conn.pause(delay)
                await conn.send_json(script.code, script.body())
            case Tokens(total=total) if request.method == "countTokens":
                await conn.send_json(200, {"totalTokens": total})
            case Reply() | Raw() if request.method == "streamGenerateContent":
                await self._stream(conn, request, script)
            case Reply(delay=delay) if request.method == "generateContent":
                await conn.pause(delay)
                await conn.send_json(200, script.response(request.model))
            case Raw(responses=responses) if request.method == "generateContent":
                await conn.send_json(200, responses[0])
            case _:
                message = f"fake: {type(script).__name__} cannot answer {request.method}"
                await conn.send_json(500, HttpError(500, message).body())

    async def _stream(
        self, conn: _Connection, request: RecordedRequest, script: Reply | Raw
    ) -> None:
        if isinstance(script, Raw):
            events, delay, error_after = list(script.responses), 0.0, None
            drop_after = script.drop_after
        else:
            events, delay = script.events(request.model), script.delay
            error_after, drop_after = script.error_after, script.drop_after
        cut = error_after if error_after is not None else drop_after
        await conn.pause(delay)
        await conn.start_sse()
        for index, event in enumerate(events[:cut]):
            if index:
                await conn.pause(script.chunk_delay)
            if isinstance(script, Reply) and script.hold is not None and index == script.hold_after:
                script.hold.reached.set()
                while not script.hold.is_open:
                    await conn.pause(0.005)  # raises _ClientGone as soon as the client hangs up
            await conn.send_event(event)
        if isinstance(script, Reply) and error_after is not None:
            if conn.events_sent:
                await conn.pause(script.chunk_delay)
            await conn.send_event(script.error.body())
        elif drop_after is not None:
            conn.reusable = False  # closing now leaves the chunked body unterminated
            return
        await conn.end_sse()


def fake_gemini_fixture() -> Iterator[FakeGemini]:
    """Generator for a pytest fixture: ``fake_gemini = pytest.fixture(fake_gemini_fixture)``."""
    with FakeGemini() as fake:
        yield fake
