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
from google.genai import _common, types
from google.genai import errors as genai_errors
from google.genai import models as sdk_models

from server.providers.gemini.answers import chunk_from_json
from server.providers.gemini.convert import to_config, to_contents
from server.providers.gemini.upstream import map_api_error, map_transport_error
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
        system instruction and function declarations."""
        config = self._config(request)
        contents = self._contents(request)
        with _upstream_errors(request.model), _refusals():
            async with asyncio.timeout_at(self._deadline(request)):
                if self._settings.vertexai:
                    # Vertex AI's countTokens takes the instruction and tools beside contents.
                    counted = types.CountTokensConfig(
                        system_instruction=config.system_instruction,
                        tools=config.tools,  # type: ignore[arg-type]
                        http_options=config.http_options,
                    )
                    result = await self._client.aio.models.count_tokens(
                        model=request.model, contents=contents, config=counted
                    )
                    return TokenCount(result.total_tokens or 0, estimated=False)
                total = await count_generate_request(self._client, request.model, contents, config)
        return TokenCount(total, estimated=False)

    async def close(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()


def to_chunk(response: types.GenerateContentResponse) -> ModelChunk:
    """A response google-genai parsed, as a ModelChunk: its camelCase JSON dump read by
    chunk_from_json (so the SDK's drops and renames apply, see answers.py)."""
    return chunk_from_json(response.model_dump(mode="json", by_alias=True, exclude_none=True))


async def count_generate_request(
    client: genai.Client,
    model: str,
    contents: list[types.Content],
    config: types.GenerateContentConfig,
) -> int:
    """countTokens on the Gemini API with a `generateContentRequest` body, which counts
    exactly what generateContent would be sent, system instruction and tools included
    (https://ai.google.dev/api/tokens#method:-models.counttokens).

    google-genai's public count_tokens refuses system_instruction and tools on the Gemini
    API, so this is chatd's one use of the SDK's non-public surface: the generate request is
    built by `models._GenerateContentParameters_to_mldev` (the code generate_content itself
    uses) and posted through `BaseApiClient.async_request`, keeping the SDK's transport,
    credentials, retries and error mapping. tests/test_gemini_provider.py pins the body.
    """
    api = client.aio._api_client
    parameters = types._GenerateContentParameters(model=model, contents=contents, config=config)
    body = sdk_models._GenerateContentParameters_to_mldev(api, parameters, None, parameters)
    inner = {k: v for k, v in body.items() if not k.startswith("_") and k != "config"}
    inner["model"] = body["_url"]["model"]
    payload = _common.encode_unserializable_types(
        _common.convert_to_dict({"generateContentRequest": inner})
    )
    response = await api.async_request(
        "post", f"{inner['model']}:countTokens", payload, config.http_options
    )
    return int((json.loads(response.body) if response.body else {}).get("totalTokens", 0))


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
