"""The gemini provider: Gemini through google-genai's async client, chatd owning history and tools.

Only this package imports google.genai.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2
import pydantic
from google import genai
from google.genai import _transformers as sdk_transformers
from google.genai import errors as genai_errors
from google.genai import types
from google.genai._api_client import BaseApiClient

from server.providers.gemini.answers import to_chunk
from server.providers.gemini.convert import to_config, to_contents
from server.providers.gemini.upstream import map_api_error, map_transport_error
from server.providers.gemini.wire import RequestEncoder
from server.sessions import errors
from server.sessions.ports import ModelChunk, ModelRequest, TokenCount

# Retried by the SDK before the first byte of a response; never in the middle of a stream.
RETRIED_STATUSES = [408, 429, 500, 502, 503, 504]
DEFAULT_MODEL = "gemini-2.5-flash"


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


class GeminiProvider:
    """Gemini through the SDK's async client, on a pinned httpx2 transport owned by chatd."""

    def __init__(self, settings: GeminiSettings) -> None:
        self._settings = settings
        # Passing our own client pins the transport: the SDK would otherwise switch to
        # aiohttp whenever it happens to be importable.
        self._http = httpx2.AsyncClient(timeout=settings.timeout)
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
        api = self._client.aio._api_client
        self._encoder = RequestEncoder(
            vertex=settings.vertexai,
            forward_labels=settings.forward_labels,
            project=api.project,
            location=api.location,
        )

    @property
    def name(self) -> str:
        return "gemini"

    @property
    def default_model(self) -> str:
        return self._settings.default_model

    def _config(self, request: ModelRequest) -> types.GenerateContentConfig:
        try:
            return to_config(
                request,
                self._settings.timeout,
                vertex=self._settings.vertexai,
                forward_labels=self._settings.forward_labels,
            )
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise errors.UpstreamRejected(
                f"the Gemini SDK refused the session's settings ({where}: {first.get('msg')})",
                reason="INVALID_MODEL_SETTINGS",
            ) from exc

    def _deadline(self, request: ModelRequest) -> float:
        """When the whole call must be over: the SDK's own timeout applies per read and
        per retry, so chatd bounds the call as a whole."""
        budget = self._settings.timeout
        if request.timeout is not None:
            budget = min(budget, request.timeout)
        return asyncio.get_running_loop().time() + budget

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        config = self._config(request)
        contents = self._contents(request)
        deadline = self._deadline(request)
        with _upstream_errors(request.model):
            async with asyncio.timeout_at(deadline):
                responses = await self._client.aio.models.generate_content_stream(
                    model=request.model, contents=contents, config=config
                )
            iterator = aiter(responses)
            started = False
            while True:
                # The deadline covers waiting for the model, never the consumer's own
                # work between chunks (a yield inside a timeout would cancel the consumer).
                async with asyncio.timeout_at(deadline):
                    try:
                        response = await anext(iterator, None)
                    except ValueError as exc:
                        if started:
                            raise
                        raise _refused_request(exc) from exc
                if response is None:
                    return
                started = True
                yield to_chunk(response)

    def _contents(self, request: ModelRequest) -> list[types.Content]:
        """The request's history as SDK contents; a part kept as Gemini JSON that the SDK
        will not take (chatd checks its fields, not their insides) is refused here, before
        any call."""
        try:
            return to_contents(request.contents, request.model, vertex=self._settings.vertexai)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise errors.UpstreamRejected(
                f"a gemini_part in the history is not a part the Gemini SDK accepts "
                f"({where}: {first.get('msg')})",
                reason="INVALID_GEMINI_PART",
            ) from exc

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

        Raises UpstreamRejected for a request the SDK would refuse to send, and the
        domain errors of _upstream_errors for upstream failures."""
        api = self._client.aio._api_client
        with _upstream_errors(request.model), _refusals():
            model_path = sdk_transformers.t_model(api, request.model)
            body = self._encoder.count_tokens_body(request, model_path)
            options = self._http_options(request)
            async with asyncio.timeout_at(self._deadline(request)):
                answer = await post_json(api, f"{model_path}:countTokens", body, options)
        total = (json.loads(answer) if answer else {}).get("totalTokens", 0)
        return TokenCount(int(total or 0), estimated=False)

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

    async def close(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()


async def post_json(
    api: BaseApiClient, path: str, body: bytes, http_options: types.HttpOptions
) -> str:
    """POSTs a JSON `body` chatd encoded itself to `path` (relative to the API version)
    through google-genai's client, which builds the URL, adds credentials, retries and
    raises its APIError for an HTTP error; the response body as text.

    google-genai's public `async_request` takes a dict that it serializes; this is the
    same call with bytes: BaseApiClient._build_request makes the request, which is sent
    with `data` set to the encoded body (its _async_request_once posts bytes as given)."""
    http_request = api._build_request("post", path, {}, http_options)
    http_request.data = body
    response = await api._async_request(
        http_request=http_request, http_options=http_options, stream=False
    )
    return str(response.response_stream[0]) if response.response_stream else ""


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
def _upstream_errors(model: str) -> Iterator[None]:
    """Raises the domain error for whatever the SDK, its transport or the deadline raised."""
    try:
        yield
    except genai_errors.APIError as exc:
        raise map_api_error(exc, model) from exc
    except httpx2.TransportError as exc:
        raise map_transport_error(exc) from exc
    except TimeoutError as exc:
        raise errors.DeadlineExceeded(
            "the Gemini API did not finish in time", reason="UPSTREAM_TIMEOUT"
        ) from exc
