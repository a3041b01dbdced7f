"""The gemini provider: Gemini through google-genai's async client, chatd owning history and tools.

What google-genai does here, and what chatd does itself:
- The SDK is the source of truth for where and how a request goes: the `genai.Client`
  resolves the credentials (an API key for the Gemini API or Vertex AI express mode;
  Application Default Credentials, refreshed as they expire, for Vertex AI with a
  project), the endpoint and API version (`t_model`, `BaseApiClient._build_request`), the
  headers, the retries before the first byte (`HttpRetryOptions`, through
  `BaseApiClient._async_request`) and the error statuses, raised as `errors.APIError`
  (`raise_for_async_response`, and `raise_error_async` for an error inside a stream).
- chatd encodes the request body itself (wire.py): google-genai builds and validates
  pydantic models for the whole history on every call, about 0.75 ms of CPU per history
  message (bench/README.md, "The gemini path"). chatd encodes each stored message once and
  assembles the body from those bytes, so a turn costs what its new message costs; the
  oracle tests (tests/test_wire_request_oracle.py) hold the body equal, as a JSON value, to
  the one google-genai's own request path builds for the same inputs.
- chatd parses the SSE stream itself (sse.py, answers.py), with orjson and no pydantic
  (about 1 ms of CPU per chunk in the SDK); tests/test_wire_response_oracle.py holds the
  parse equal to the SDK's.
- `_build_request` and `_async_request` are not public; they are the SDK's own request
  path, used so that nothing about auth, URLs or errors is re-implemented. The oracle and
  auth tests (tests/test_gemini_auth.py) fail if a google-genai release changes them.

Only this package imports google.genai.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import httpx2
import orjson
import structlog
from google import genai
from google.auth import exceptions as auth_errors
from google.genai import _transformers, types
from google.genai import errors as genai_errors
from google.genai._api_client import BaseApiClient, HttpResponse

from server.providers.gemini.answers import chunk_from_json
from server.providers.gemini.context_cache import (
    CacheGone,
    CacheSettings,
    ContextCaches,
)
from server.providers.gemini.continuation import Continuation, with_token
from server.providers.gemini.sse import sse_payloads
from server.providers.gemini.upstream import map_api_error, map_auth_error, map_transport_error
from server.providers.gemini.wire import GenerateParts, RequestEncoder
from server.sessions import errors
from server.sessions.fast_json import loads_exact
from server.sessions.ports import (
    ModelChunk,
    ModelProvider,
    ModelRequest,
    SessionResources,
    TokenCount,
)

log = structlog.get_logger("chatd.gemini")

# Retried by the SDK before the first byte of a response; never in the middle of a stream.
RETRIED_STATUSES = [408, 429, 500, 502, 503, 504]
DEFAULT_MODEL = "gemini-2.5-flash"
CREDENTIALS_REJECTED = "UPSTREAM_CREDENTIALS_REJECTED"


@dataclass(frozen=True, slots=True)
class GeminiSettings:
    api_key: str | None = None
    vertexai: bool = False
    project: str | None = None
    location: str | None = None
    base_url: str | None = None
    default_model: str = DEFAULT_MODEL
    timeout: float = 120.0
    retry_attempts: int = 3
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 8.0
    # The SDK's default jitter adds up to a whole second to every retry.
    retry_jitter: float = 0.25
    # Send a session's labels as Vertex AI request labels (those that follow Google Cloud's
    # label rules); the Gemini Developer API takes no request labels.
    forward_labels: bool = False
    # Explicit context caches of sessions' stable prefixes (off unless trigger_tokens > 0).
    context_cache: CacheSettings = field(default_factory=CacheSettings)


class GeminiProvider:
    """Gemini through the SDK's async client, on a pinned httpx2 transport owned by chatd.

    With `settings.context_cache` on, a session's stable prefix is cached explicitly
    (context_cache.py); `clock` (seconds since the epoch) times those caches."""

    def __init__(self, settings: GeminiSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        # Passing our own client pins the transport: the SDK would otherwise switch to
        # aiohttp whenever it happens to be importable.
        # httpx's default pool holds 100 connections; a turn beyond that would wait for
        # one (HTTP/1.1 carries one stream a connection). chatd's own stream limits
        # (CHATD_MAX_STREAMS) bound how many model calls run at once.
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=100)
        self._http = httpx2.AsyncClient(timeout=settings.timeout, limits=limits)
        retry = types.HttpRetryOptions(
            attempts=settings.retry_attempts,
            initial_delay=settings.retry_initial_delay,
            max_delay=settings.retry_max_delay,
            jitter=settings.retry_jitter,
            http_status_codes=RETRIED_STATUSES,
        )
        http_options = types.HttpOptions(
            base_url=settings.base_url,
            timeout=round(settings.timeout * 1000),
            retry_options=retry,
            httpx_async_client=self._http,
        )
        # Vertex AI takes an API key only in express mode, without a project.
        express = settings.vertexai and settings.project is None
        self._client = genai.Client(
            api_key=settings.api_key if express or not settings.vertexai else None,
            vertexai=settings.vertexai or None,
            project=settings.project,
            location=settings.location,
            http_options=http_options,
        )
        # Whether the rejected-credentials warning was logged since the last good call.
        self._warned_credentials = False
        api = self._client.aio._api_client
        self._encoder = RequestEncoder(
            vertex=settings.vertexai,
            forward_labels=settings.forward_labels,
            project=api.project,
            location=api.location,
        )
        caching = settings.context_cache
        if express and caching.trigger_tokens > 0:
            # A cache lives under a project (cachedContents.create on Vertex AI posts to
            # projects/P/locations/L/cachedContents), which express mode does not have.
            log.warning(
                "gemini context caching off: Vertex AI express mode (an API key without "
                "a project) cannot hold explicit caches; set GOOGLE_CLOUD_PROJECT to use them"
            )
            caching = replace(caching, trigger_tokens=0)
        self._caches = ContextCaches(self, caching, clock)

    @property
    def name(self) -> str:
        return "gemini"

    @property
    def default_model(self) -> str:
        return self._settings.default_model

    def _deadline(self, request: ModelRequest) -> float:
        """When the whole call must be over: the SDK's own timeout applies per read and
        per retry, so chatd bounds the call as a whole."""
        budget = self._settings.timeout
        if request.timeout is not None:
            budget = min(budget, request.timeout)
        return asyncio.get_running_loop().time() + budget

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        """The model's answer to `request`, chunk by chunk, across continuation hops
        (continuation.py), naming the session's context cache when there is one
        (context_cache.py). Raises the domain errors of `_upstream_errors`; leaving early
        closes the upstream connection, which stops the model's work. Raises
        InvalidArgument (CACHED_CONTENT_NOT_ALLOWED) for a generation_config.cached_content
        naming a cache chatd made for a session, and Unavailable (CONTEXT_CACHE_GONE) when
        the session's cache is gone by the time a continuation request names it."""
        self._check_cached_content(request)
        parts = self._encoder.generate_parts(request)
        options = self._http_options(request)
        deadline = self._deadline(request)
        api = self._client.aio._api_client
        with _refusals():
            path = f"{_transformers.t_model(api, request.model)}:streamGenerateContent?alt=sse"
        cache = None
        if self._caches.applies(request):
            cache = await self._caches.use(request, parts, deadline)
        if cache is not None:
            body = parts.body(cache.name, cache.count)
            try:
                async with aclosing(
                    self._hops(request, body, path, options, deadline, True)
                ) as hops:
                    async for chunk in hops:
                        yield chunk
                return
            except _CacheRefused as refused:
                self._caches.lost(request, cache)
                if not refused.first:
                    # Part of the answer is out, read with the cache: it cannot go on
                    # without it.
                    raise errors.Unavailable(
                        "Gemini no longer had the context cache this answer was read with "
                        "when chatd asked for the rest of the answer; send the request again",
                        reason="CONTEXT_CACHE_GONE",
                    ) from refused
                # Gone on the first request (expired, deleted elsewhere): the same
                # request, whole.
            finally:
                self._caches.done(cache)
        async with aclosing(self._hops(request, parts.body(), path, options, deadline)) as hops:
            async for chunk in hops:
                yield chunk

    async def _hops(
        self,
        request: ModelRequest,
        body: bytes,
        path: str,
        options: types.HttpOptions,
        deadline: float,
        names_cache: bool = False,
    ) -> AsyncGenerator[ModelChunk, None]:
        """`body` posted and its answer streamed, across continuation hops. With
        `names_cache`, a post Gemini refuses because the cache it names is gone raises
        _CacheRefused (`first` when it was the call's first request)."""
        api = self._client.aio._api_client
        hops = Continuation()
        first = True
        while True:
            hop_body = with_token(body, hops.start())
            failure: errors.ChatdError | None = None
            try:
                with _upstream_errors(request.model, self._rejected):
                    async with asyncio.timeout_at(deadline):
                        if names_cache:
                            response = await _post_naming_cache(api, path, hop_body, options, first)
                        else:
                            response = await _send(api, "post", path, hop_body, options, True)
            except errors.ChatdError as exc:
                failure = exc
            else:
                upstream = cast(httpx2.Response, response.response_stream)
                try:
                    payloads = aiter(sse_payloads(upstream))
                    while True:
                        try:
                            with _upstream_errors(request.model, self._rejected):
                                # The deadline covers waiting for the model, never the
                                # consumer's work between chunks (a yield inside a timeout
                                # would cancel the consumer).
                                async with asyncio.timeout_at(deadline):
                                    payload = await anext(payloads, None)
                                if payload is None:
                                    break
                                event = await _answer(payload, upstream)
                        except errors.ChatdError as exc:
                            failure = exc
                            break
                        yield hops.observe(event, _chunk(event))
                finally:
                    await upstream.aclose()
            first = False
            if failure is not None and asyncio.get_running_loop().time() >= deadline:
                raise failure
            refused = failure is not None and isinstance(failure.__cause__, genai_errors.APIError)
            if not hops.end(failure, refused=refused):
                self._warned_credentials = False
                return

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        """The model's own count of what a generate call for `request` sends: contents,
        system instruction and tools.

        On the Gemini API the body is a `generateContentRequest`, which counts exactly
        what generateContent would be sent, system instruction and tools included
        (https://ai.google.dev/api/tokens#method:-models.counttokens); google-genai's
        public count_tokens refuses those there. On Vertex AI countTokens takes the
        instruction and tools beside the contents. chatd encodes the body itself
        (wire.RequestEncoder) and posts it through the SDK's client, which keeps the
        URL, credentials, retries and error mapping.

        Raises UpstreamRejected for a request the SDK would refuse to send,
        InvalidArgument as stream() for a cached_content chatd made, and the domain errors
        of _upstream_errors for upstream failures."""
        self._check_cached_content(request)
        api = self._client.aio._api_client
        with _upstream_errors(request.model, self._rejected), _refusals():
            model_path = _transformers.t_model(api, request.model)
            body = self._encoder.count_tokens_body(request, model_path)
            options = self._http_options(request)
            async with asyncio.timeout_at(self._deadline(request)):
                response = await _send(api, "post", f"{model_path}:countTokens", body, options)
        total = _json(response).get("totalTokens", 0)
        return TokenCount(int(total or 0), estimated=False)

    # ------------------------------------------------------------------ context caches

    def _check_cached_content(self, request: ModelRequest) -> None:
        """A caller's cached_content may not name a cache chatd made for a session (of
        any tenant: every tenant's caches live under chatd's one credential)."""
        name = request.generation_config.cached_content
        if name is not None and self._caches.owns(name):
            raise errors.InvalidArgument(
                "generation_config.cached_content",
                "names a cache chatd made for a session; name a cache of your own",
                reason="CACHED_CONTENT_NOT_ALLOWED",
            )

    async def create_cache(
        self,
        request: ModelRequest,
        parts: GenerateParts,
        count: int,
        ttl: str,
        display_name: str,
        deadline: float,
    ) -> str:
        """cachedContents.create (https://ai.google.dev/api/caching#method:-cachedcontents.create)
        of the header and first `count` contents of `parts` for request.model, named
        `display_name`, through the SDK's request path as `client.aio.caches.create` posts
        it (its model name with `t_caches_model`, its path and API version); the created
        cache's resource name. `deadline` is the event loop's time. Raises the domain
        errors of _upstream_errors, UpstreamRejected for what the SDK refuses, Unavailable
        for an answer without a name."""
        api = self._client.aio._api_client
        with _upstream_errors(request.model, _unlogged), _refusals():
            model = _transformers.t_caches_model(api, request.model) or request.model
            body = parts.cache_body(model, count, ttl, display_name)
            async with asyncio.timeout_at(deadline):
                response = await _send(
                    api, "post", "cachedContents", body, _once(self._http_options(request))
                )
        name = _json(response).get("name")
        if not isinstance(name, str) or not name:
            raise errors.Unavailable(
                "the Gemini API created a cached content without a name",
                reason="UPSTREAM_UNAVAILABLE",
            )
        return name

    async def refresh_cache(
        self, request: ModelRequest, name: str, ttl: str, deadline: float
    ) -> None:
        """cachedContents.patch of the cache's ttl, as `client.aio.caches.update` sends it
        (only the expiration can be updated:
        https://ai.google.dev/api/caching#method:-cachedcontents.patch). Raises CacheGone
        for HTTP 403/404, else as create_cache."""
        api = self._client.aio._api_client
        with _upstream_errors(request.model, _unlogged), _cache_gone():
            async with asyncio.timeout_at(deadline):
                body = orjson.dumps({"ttl": ttl})
                await _send(api, "patch", name, body, _once(self._http_options(request)))

    async def delete_cache(self, name: str) -> None:
        """cachedContents.delete. Raises CacheGone for HTTP 403/404, else as create_cache."""
        api = self._client.aio._api_client
        options = _once(types.HttpOptions(timeout=max(1, round(self._settings.timeout * 1000))))
        with _upstream_errors(self.default_model, _unlogged), _cache_gone():
            async with asyncio.timeout(self._settings.timeout):
                await _send(api, "delete", name, b"", options)

    def release_session(self, tenant: str, session_id: str) -> None:
        """Deletes the session's context cache, in the background (SessionResources)."""
        self._caches.release_session(tenant, session_id)

    def release_expired(self, now: float) -> None:
        """Deletes the context caches of sessions expired by `now`, in the background, and
        forgets those whose TTL ran out by `now`."""
        self._caches.release_expired(now)

    def context_cache_counts(self) -> Mapping[str, int]:
        """What the context caches did since start, by outcome (context_cache.OUTCOMES)."""
        return self._caches.counts()

    def _http_options(self, request: ModelRequest) -> types.HttpOptions:
        """The SDK's per-call options: the timeout in milliseconds (the shorter of the
        provider's and the request's) and the API version the request needs."""
        timeout = self._settings.timeout
        if request.timeout is not None:
            timeout = max(0.001, min(timeout, request.timeout))
        return types.HttpOptions(
            timeout=max(1, round(timeout * 1000)),
            api_version=self._encoder.api_version(request),
        )

    def _rejected(self, error: errors.ChatdError) -> None:
        """Logs, once until a call succeeds again, that Google refused chatd's credentials:
        every turn fails the same way (FAILED_PRECONDITION UPSTREAM_CREDENTIALS_REJECTED,
        which each caller sees) and only the operator can fix it."""
        if error.reason != CREDENTIALS_REJECTED or self._warned_credentials:
            return
        self._warned_credentials = True
        if self._settings.vertexai and self._settings.project is not None:
            fix = (
                "fix the Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS "
                "or `gcloud auth application-default login`) and restart chatd"
            )
        else:
            fix = (
                "set GEMINI_API_KEY (or GOOGLE_API_KEY) to a valid key "
                "(https://aistudio.google.com/apikey) and restart chatd"
            )
        log.warning("gemini credentials rejected", error=error.message, fix=fix)

    async def close(self) -> None:
        """Deletes the context caches still held (waiting a short bound), then closes the
        clients."""
        await self._caches.close()
        await self._client.aio.aclose()
        await self._http.aclose()


def _refused_request(exc: ValueError) -> errors.UpstreamRejected:
    """google-genai builds the request when the call starts and raises ValueError for what
    the Gemini API cannot take (a Vertex-only field in a part kept as Gemini JSON)."""
    return errors.UpstreamRejected(
        f"the Gemini SDK refused to send this request: {exc}", reason="INVALID_GEMINI_PART"
    )


@contextmanager
def _refusals() -> Iterator[None]:
    try:
        yield
    except ValueError as exc:
        raise _refused_request(exc) from exc


@contextmanager
def _upstream_errors(model: str, rejected: Callable[[errors.ChatdError], None]) -> Iterator[None]:
    """Raises the domain error for whatever the SDK, its transport or the deadline raised;
    `rejected` sees each HTTP or credentials error first."""
    try:
        yield
    except genai_errors.APIError as exc:
        error = map_api_error(exc, model)
        rejected(error)
        raise error from exc
    except auth_errors.GoogleAuthError as exc:
        # Vertex AI with a project: google-auth loads and refreshes the credentials.
        error = map_auth_error(exc)
        rejected(error)
        raise error from exc
    except httpx2.TransportError as exc:
        raise map_transport_error(exc) from exc
    except TimeoutError as exc:
        raise errors.DeadlineExceeded(
            "the Gemini API did not finish in time", reason="UPSTREAM_TIMEOUT"
        ) from exc


async def _send(
    api: BaseApiClient,
    verb: str,
    path: str,
    body: bytes,
    options: types.HttpOptions,
    stream: bool = False,
) -> HttpResponse:
    """Sends the JSON `body` chatd encoded (b"" for none) with `verb` to `path` (relative to
    the API version) through google-genai's own request path: its URL and API version
    (`_build_request`), its credentials, headers, retries before the first byte and error
    statuses raised as `errors.APIError` (`_async_request`). google-genai's public
    `async_request` takes a dict that it serializes; the SDK sends a bytes body as it is
    (`_async_request_once`), so chatd's encoding is what goes out. With `stream`, the
    response's `response_stream` is the open httpx2 response; otherwise it holds the
    body's text."""
    prepared = api._build_request(verb, path, {}, options)
    prepared.data = body
    return await api._async_request(prepared, options, stream=stream)


class _CacheRefused(Exception):
    """Gemini refused a request because the cache it names is gone; `first`: the call's
    first request (nothing of the answer read yet)."""

    def __init__(self, message: str, first: bool) -> None:
        super().__init__(message)
        self.first = first


def _names_missing_cache(exc: genai_errors.APIError) -> bool:
    """Whether Gemini refused a request naming a cache because of the cache: 403
    ("CachedContent not found (or permission denied)", what it answers for an expired or
    deleted cache) or 404; or a 400 about the cache. A 403 for other causes (credentials)
    comes back on the request sent again without the cache."""
    if exc.code in (403, 404):
        return True
    message = (exc.message or "").lower()
    return exc.code == 400 and ("cachedcontent" in message or "cached content" in message)


async def _post_naming_cache(
    api: BaseApiClient, path: str, body: bytes, options: types.HttpOptions, first: bool
) -> HttpResponse:
    """_send for a streamed request naming a cache; raises _CacheRefused when the cache is
    gone (_names_missing_cache)."""
    try:
        return await _send(api, "post", path, body, options, True)
    except genai_errors.APIError as exc:
        if _names_missing_cache(exc):
            raise _CacheRefused(str(exc), first) from exc
        raise


@contextmanager
def _cache_gone() -> Iterator[None]:
    """CacheGone for a cachedContents call Gemini answered with 403 or 404."""
    try:
        yield
    except genai_errors.APIError as exc:
        if exc.code in (403, 404):
            raise CacheGone(str(exc)) from exc
        raise


def _once(options: types.HttpOptions) -> types.HttpOptions:
    """`options` without the SDK's retries: a cachedContents call that fails is not worth
    a turn's waiting (the call goes without a cache; a delete's cache expires by its TTL)."""
    return options.model_copy(update={"retry_options": types.HttpRetryOptions(attempts=1)})


def _unlogged(error: errors.ChatdError) -> None:
    """A cachedContents call's refusal is not logged as rejected credentials: the turn's
    own call, sent without a cache, reports those."""


def _json(response: HttpResponse) -> dict[str, Any]:
    """A non-streamed answer's JSON object ({} when empty or not an object)."""
    text = response.response_stream[0] if response.response_stream else ""
    answer = orjson.loads(text) if text else {}
    return answer if isinstance(answer, dict) else {}


def _chunk(event: dict[str, Any]) -> ModelChunk:
    try:
        return chunk_from_json(event)
    except ValueError as exc:  # binascii.Error: bytes that are not base64
        raise errors.Unavailable(
            f"the Gemini API sent an answer chatd cannot read ({exc})",
            reason="UPSTREAM_UNAVAILABLE",
        ) from exc


async def _answer(payload: bytes, upstream: httpx2.Response) -> dict[str, Any]:
    """One SSE event's JSON. An error sent inside a 200 stream is raised as the SDK raises
    it (`async_request_streamed`); an event that is not a JSON object means the stream is
    broken."""
    try:
        # Integers beyond 64 bits stay exact, as google-genai's own parse (json) kept them.
        answer = loads_exact(payload)
    except ValueError as exc:
        raise errors.Unavailable(
            f"the Gemini API sent a stream event that is not JSON ({exc})",
            reason="UPSTREAM_UNAVAILABLE",
        ) from exc
    if not isinstance(answer, dict):
        raise errors.Unavailable(
            "the Gemini API sent a stream event that is not a JSON object",
            reason="UPSTREAM_UNAVAILABLE",
        )
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        await genai_errors.APIError.raise_error_async(error.get("code", 500), answer, upstream)
    return answer


if TYPE_CHECKING:  # mypy checks that the provider implements the ports it offers
    _implements: type[ModelProvider] = GeminiProvider
    _releases: type[SessionResources] = GeminiProvider
