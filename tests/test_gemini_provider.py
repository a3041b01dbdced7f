"""GeminiProvider through its ModelProvider Protocol, on the real google-genai SDK over real
HTTP against FakeGemini (no SDK function is patched)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2
import pytest

from server.providers.gemini import GeminiProvider, GeminiSettings
from server.sessions import errors
from server.sessions.model import (
    Blob,
    FileData,
    FinishReason,
    FunctionCall,
    FunctionDeclaration,
    FunctionResponse,
    GenerationConfig,
    Message,
    Part,
    Role,
    SafetySetting,
    ServerToolCall,
    ThinkingConfig,
    Usage,
)
from server.sessions.ports import ModelChunk, ModelProvider, ModelRequest, TokenCount
from tests.fake_gemini import (
    Drop,
    FakeGemini,
    Hold,
    HttpError,
    Raw,
    Reply,
    Tokens,
    b64decode,
    b64encode,
    call_part,
    fake_gemini_fixture,
    get_field,
    text_part,
    thought_part,
    usage,
)

MODEL = "gemini-test"
# Every byte value, so both base64 alphabets' special characters (+/ and -_) occur.
SIGNATURE = bytes(range(256))
IMAGE = bytes(reversed(range(256)))
# Longer than any test runs: a call that ends at all was ended by the deadline under test.
NEVER = 3600.0
# How long a wait on the fake may take before the test fails as hung (never the time a
# passing test takes).
HANG_GUARD = 30.0

ProviderFactory = Callable[..., GeminiProvider]


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    yield from fake_gemini_fixture()


def make_settings(fake: FakeGemini, **overrides: Any) -> GeminiSettings:
    options: dict[str, Any] = {
        "api_key": "test-key",
        "base_url": fake.base_url,
        "retry_initial_delay": 0.01,
        "retry_max_delay": 0.02,
        "retry_jitter": 0,
        "timeout": 5.0,
    }
    options.update(overrides)
    return GeminiSettings(**options)


@pytest.fixture
async def make_provider(fake: FakeGemini) -> AsyncIterator[ProviderFactory]:
    """Builds providers on the fake (GeminiSettings overrides as keywords); closes them all."""
    made: list[GeminiProvider] = []

    def make(**overrides: Any) -> GeminiProvider:
        provider = GeminiProvider(make_settings(fake, **overrides))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture
def provider(make_provider: ProviderFactory) -> GeminiProvider:
    return make_provider()


def user(*texts: str) -> Message:
    return Message(Role.USER, tuple(Part(text=text) for text in texts))


def request(text: str = "hi", **fields: Any) -> ModelRequest:
    return ModelRequest(model=MODEL, contents=[user(text)], **fields)


async def collect(provider: ModelProvider, req: ModelRequest) -> list[ModelChunk]:
    return [chunk async for chunk in provider.stream(req)]


async def drain(provider: ModelProvider, req: ModelRequest, into: list[ModelChunk]) -> None:
    """Consumes the stream into `into`, so chunks seen before an error can be checked."""
    async for chunk in provider.stream(req):
        into.append(chunk)


def texts(chunks: list[ModelChunk]) -> list[str | None]:
    return [part.text for chunk in chunks for part in chunk.parts]


def all_keys(value: Any) -> set[str]:
    """Every dict key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value).union(*(all_keys(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(all_keys(item) for item in value))
    return set()


def test_provider_satisfies_the_protocol(provider: GeminiProvider) -> None:
    """GeminiProvider is a ModelProvider named gemini with its configured default model."""
    as_protocol: ModelProvider = provider
    assert as_protocol.name == "gemini"
    assert as_protocol.default_model == "gemini-2.5-flash"


# --------------------------------------------------------------------------- conversion out

NESTED_ARGS = {
    "city": "Paris",
    "options": {"units": ["celsius", "kelvin"], "days": 3, "detail": {"hourly": True}},
    "empty": {},
    "nothing": None,
    "list_of_objects": [{"a": 1}, {"b": [None, 2.5, "x"]}],
}
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "A city"},
        "options": {"type": "object", "properties": {"days": {"type": "integer"}}},
    },
    "required": ["city"],
}
RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": ["number", "null"]}},
}


def full_request() -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        contents=[
            Message(
                Role.USER,
                (
                    Part(text="What is in this picture and this file?"),
                    Part(inline_data=Blob("image/png", IMAGE)),
                    Part(file_data=FileData("application/pdf", "gs://bucket/doc.pdf")),
                ),
            ),
            Message(
                Role.MODEL,
                (
                    Part(text="Considering the weather", thought=True, thought_signature=SIGNATURE),
                    Part(
                        function_call=FunctionCall("call-1", "get_weather", NESTED_ARGS),
                        thought_signature=b"\x00call\xff",
                    ),
                ),
            ),
            Message(
                Role.USER,
                (
                    Part(
                        function_response=FunctionResponse(
                            "call-1", "get_weather", {"result": {"temp": 21, "sky": ["clear"]}}
                        )
                    ),
                ),
            ),
        ],
        system_instruction="You are terse.",
        generation_config=GenerationConfig(
            temperature=0.3,
            top_p=0.9,
            top_k=40,
            max_output_tokens=256,
            stop_sequences=("END", "STOP!"),
            seed=1234,
            response_mime_type="application/json",
            response_json_schema=RESPONSE_SCHEMA,
            # A budget and a level never travel together: Gemini refuses both.
            thinking=ThinkingConfig(include_thoughts=True, thinking_level="LOW"),
            presence_penalty=0.5,
            frequency_penalty=-0.25,
        ),
        function_declarations=[
            FunctionDeclaration("get_weather", "Looks up the weather", SCHEMA),
            FunctionDeclaration("no_params"),
        ],
        safety_settings=[
            SafetySetting("HARM_CATEGORY_HARASSMENT", "BLOCK_ONLY_HIGH"),
            SafetySetting("HARM_CATEGORY_DANGEROUS_CONTENT", "BLOCK_NONE"),
        ],
    )


async def test_every_part_kind_and_setting_reaches_the_wire_losslessly(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """Conversion out: every Part kind, signature bytes, system instruction, every generation
    config field, safety settings and function declarations arrive in the JSON body."""
    await collect(provider, full_request())

    [sent] = fake.requests
    assert sent.method == "streamGenerateContent"
    assert sent.path == f"/v1/models/{MODEL}:streamGenerateContent?alt=sse"
    assert sent.api_key == "test-key"

    contents = sent.contents
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    question, picture, document = contents[0]["parts"]
    assert question == {"text": "What is in this picture and this file?"}
    assert get_field(picture, "inline_data", "mime_type") == "image/png"
    assert b64decode(get_field(picture, "inline_data", "data")) == IMAGE
    assert get_field(document, "file_data", "mime_type") == "application/pdf"
    assert get_field(document, "file_data", "file_uri") == "gs://bucket/doc.pdf"

    thought, call = contents[1]["parts"]
    assert thought["text"] == "Considering the weather"
    assert thought["thought"] is True
    assert b64decode(get_field(thought, "thought_signature")) == SIGNATURE
    assert get_field(call, "function_call") == {
        "id": "call-1",
        "name": "get_weather",
        "args": NESTED_ARGS,
    }
    assert b64decode(get_field(call, "thought_signature")) == b"\x00call\xff"
    assert "thought" not in call  # only thought summaries are flagged

    [response] = contents[2]["parts"]
    assert get_field(response, "function_response") == {
        "id": "call-1",
        "name": "get_weather",
        "response": {"result": {"temp": 21, "sky": ["clear"]}},
    }

    assert sent.field("system_instruction", "parts") == [{"text": "You are terse."}]

    config = sent.field("generation_config")
    assert get_field(config, "temperature") == 0.3
    assert get_field(config, "top_p") == 0.9
    assert get_field(config, "top_k") == 40  # the SDK types it as a float: 40.0
    assert get_field(config, "max_output_tokens") == 256
    assert get_field(config, "stop_sequences") == ["END", "STOP!"]
    assert get_field(config, "seed") == 1234
    assert get_field(config, "response_mime_type") == "application/json"
    assert get_field(config, "response_json_schema") == RESPONSE_SCHEMA
    assert get_field(config, "presence_penalty") == 0.5
    assert get_field(config, "frequency_penalty") == -0.25
    assert get_field(config, "thinking_config", "include_thoughts") is True
    assert get_field(config, "thinking_config", "thinking_budget") is None
    assert get_field(config, "thinking_config", "thinking_level") == "LOW"

    assert sent.field("safety_settings") == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_NONE"},
    ]

    [tool] = sent.field("tools")
    weather, no_params = get_field(tool, "function_declarations")
    assert weather["name"] == "get_weather"
    assert weather["description"] == "Looks up the weather"
    # The declaration's JSON Schema goes verbatim as parametersJsonSchema, not as the
    # OpenAPI-subset `parameters` field.
    assert get_field(weather, "parameters_json_schema") == SCHEMA
    assert get_field(weather, "parameters") is None
    assert no_params == {"name": "no_params"}


async def test_no_automatic_function_calling_or_sdk_options_leak_upstream(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """AFC is client-side only: the body carries no toolConfig, no AFC config and no
    http_options (the per-call timeout travels as the X-Server-Timeout header instead)."""
    await collect(provider, full_request())

    [sent] = fake.requests
    assert set(sent.body) == {
        "contents",
        "systemInstruction",
        "generationConfig",
        "safetySettings",
        "tools",
    }
    keys = {key.lower().replace("_", "") for key in all_keys(sent.body)}
    assert not {key for key in keys if "automatic" in key or "afc" in key}
    assert "toolconfig" not in keys
    assert "httpoptions" not in keys
    assert sent.headers["x-server-timeout"] == "5"


async def test_zero_valued_settings_are_sent_not_dropped(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """Falsy but set config values (temperature 0, seed 0, budget 0) still reach the wire."""
    config = GenerationConfig(
        temperature=0.0,
        seed=0,
        presence_penalty=0.0,
        thinking=ThinkingConfig(include_thoughts=False, thinking_budget=0),
    )

    await collect(provider, request(generation_config=config))

    sent = fake.requests[0].field("generation_config")
    assert get_field(sent, "temperature") == 0.0
    assert get_field(sent, "seed") == 0
    assert get_field(sent, "presence_penalty") == 0.0
    assert get_field(sent, "thinking_config", "include_thoughts") is False
    assert get_field(sent, "thinking_config", "thinking_budget") == 0


# --------------------------------------------------------------------------- conversion in


async def test_reply_parts_convert_to_domain_parts_losslessly(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """Conversion in: thought parts and function calls keep byte-identical signatures and call
    ids; usage (thoughts included), finish reason and model version map onto the chunks."""
    call_args = {"city": "Paris", "options": {"units": ["c"], "nested": {"deep": None}}}
    fake.push(
        Reply(
            parts=[
                thought_part("Let me look that up", signature=SIGNATURE),
                call_part("get_weather", call_args, id="call-1", signature=b"\x00\xfb\xff"),
                call_part("get_time", {}, id="call-2"),
                text_part("Checking."),
            ],
            usage=usage(7, 3, thoughts=5),
        )
    )

    chunks = await collect(provider, request("Weather in Paris?"))

    assert [part for chunk in chunks for part in chunk.parts] == [
        Part(text="Let me look that up", thought=True, thought_signature=SIGNATURE),
        Part(
            function_call=FunctionCall("call-1", "get_weather", call_args),
            thought_signature=b"\x00\xfb\xff",
        ),
        Part(function_call=FunctionCall("call-2", "get_time", {})),
        Part(text="Checking."),
    ]
    *early, last = chunks
    assert all(chunk.usage is None and chunk.finish_reason is None for chunk in early)
    assert last.finish_reason is FinishReason.STOP
    assert last.usage == Usage(
        prompt_tokens=7, candidates_tokens=3, total_tokens=15, thoughts_tokens=5
    )
    assert {chunk.model_version for chunk in chunks} == {MODEL}
    assert all(chunk.block_reason == "" for chunk in chunks)
    # The calls come back to chatd; the SDK made no follow-up request of its own (no AFC).
    assert len(fake.requests) == 1


async def test_stream_of_n_chunks_yields_n_model_chunks_in_order(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """N SSE events become N ModelChunks, in order, each holding its text delta."""
    fake.push(Reply(text="abcdefghijkl", chunks=4, usage=usage(2, 4)))

    chunks = await collect(provider, request())

    assert len(chunks) == 4
    assert [chunk.parts for chunk in chunks] == [
        (Part(text="abc"),),
        (Part(text="def"),),
        (Part(text="ghi"),),
        (Part(text="jkl"),),
    ]
    assert [chunk.finish_reason for chunk in chunks] == [None, None, None, FinishReason.STOP]
    assert chunks[-1].usage == Usage(prompt_tokens=2, candidates_tokens=4, total_tokens=6)


async def test_full_usage_inline_data_and_model_version_map_in(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """Every usage counter (cached, tool-use prompt) maps; inline and file data parts come back
    with their bytes; an empty chunk still becomes a (part-less) ModelChunk."""
    fake.push(
        Raw(
            [
                {"candidates": [], "modelVersion": "gemini-test-001"},
                {
                    "candidates": [
                        {
                            "content": {
                                "role": "model",
                                "parts": [
                                    {
                                        "inlineData": {
                                            "mimeType": "image/png",
                                            "data": b64encode(IMAGE),
                                        }
                                    },
                                    {"fileData": {"mimeType": "text/plain", "fileUri": "gs://b/f"}},
                                ],
                            },
                            "finishReason": "STOP",
                        }
                    ],
                    "usageMetadata": {
                        "promptTokenCount": 10,
                        "candidatesTokenCount": 20,
                        "totalTokenCount": 47,
                        "thoughtsTokenCount": 8,
                        "cachedContentTokenCount": 4,
                        "toolUsePromptTokenCount": 5,
                    },
                    "modelVersion": "gemini-test-001",
                },
            ]
        )
    )

    empty, full = await collect(provider, request())

    assert empty == ModelChunk(model_version="gemini-test-001")
    assert full.parts == (
        Part(inline_data=Blob("image/png", IMAGE)),
        Part(file_data=FileData("text/plain", "gs://b/f")),
    )
    assert full.usage == Usage(
        prompt_tokens=10,
        candidates_tokens=20,
        total_tokens=47,
        thoughts_tokens=8,
        cached_tokens=4,
        tool_use_prompt_tokens=5,
    )
    assert full.finish_reason is FinishReason.STOP
    assert full.model_version == "gemini-test-001"


# --------------------------------------------------------------------------- finish reasons


@pytest.mark.parametrize(
    "reason",
    [
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "RECITATION",
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "MISSING_THOUGHT_SIGNATURE",
    ],
)
async def test_finish_reason_maps_to_the_domain_value(
    fake: FakeGemini, provider: GeminiProvider, reason: str
) -> None:
    """Upstream finish reasons map onto the FinishReason of the same name."""
    text = None if reason == "MALFORMED_FUNCTION_CALL" else "partial"
    fake.push(Reply(text=text, finish_reason=reason))

    [chunk] = await collect(provider, request())

    assert chunk.finish_reason is FinishReason[reason]
    assert chunk.parts == (() if text is None else (Part(text="partial"),))


@pytest.mark.filterwarnings("ignore:BRAND_NEW_REASON is not a valid FinishReason")
async def test_unknown_finish_reason_maps_to_other(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """A finish reason newer than the SDK (it only warns) becomes FinishReason.OTHER."""
    fake.push(Reply(text="hm", finish_reason="BRAND_NEW_REASON"))

    [chunk] = await collect(provider, request())

    assert chunk.finish_reason is FinishReason.OTHER
    assert chunk.parts == (Part(text="hm"),)


async def test_blocked_prompt_yields_block_reason_and_no_parts(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """No candidates + promptFeedback.blockReason SAFETY: one chunk, block_reason SAFETY."""
    fake.push(Reply(block_reason="SAFETY", usage=usage(4)))

    [chunk] = await collect(provider, request())

    assert chunk.block_reason == "SAFETY"
    assert chunk.parts == ()
    assert chunk.finish_reason is None
    assert chunk.usage == Usage(prompt_tokens=4, total_tokens=4)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("script", "error", "reason"),
    [
        pytest.param(
            HttpError(400), errors.UpstreamRejected, "UPSTREAM_INVALID_ARGUMENT", id="400"
        ),
        pytest.param(
            HttpError(400, status="FAILED_PRECONDITION"),
            errors.FailedPrecondition,
            "UPSTREAM_FAILED_PRECONDITION",
            id="400-failed-precondition",
        ),
        pytest.param(
            HttpError(401), errors.FailedPrecondition, "UPSTREAM_CREDENTIALS_REJECTED", id="401"
        ),
        pytest.param(
            HttpError(403), errors.FailedPrecondition, "UPSTREAM_CREDENTIALS_REJECTED", id="403"
        ),
        pytest.param(HttpError(404), errors.NotFound, "MODEL_NOT_FOUND", id="404"),
        pytest.param(HttpError(500), errors.Unavailable, "UPSTREAM_UNAVAILABLE", id="500"),
        pytest.param(HttpError(503), errors.Unavailable, "UPSTREAM_UNAVAILABLE", id="503"),
    ],
)
async def test_http_errors_map_to_domain_errors(
    fake: FakeGemini,
    provider: GeminiProvider,
    script: HttpError,
    error: type[errors.ChatdError],
    reason: str,
) -> None:
    """Each upstream HTTP error becomes its server.sessions.errors class and reason."""
    fake.set_default(lambda _: script)  # every attempt, retried or not

    with pytest.raises(error) as caught:
        await collect(provider, request())

    assert type(caught.value) is error
    assert caught.value.reason == reason


@pytest.mark.parametrize("code", [401, 403])
async def test_rejected_credentials_tell_the_operator_about_the_key(
    fake: FakeGemini, provider: GeminiProvider, code: int
) -> None:
    """401/403 are the operator's problem: the message names the key settings."""
    fake.push(HttpError(code, "API key not valid"))

    with pytest.raises(errors.FailedPrecondition) as caught:
        await collect(provider, request())

    assert caught.value.reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert "operator" in caught.value.message
    assert "GEMINI_API_KEY" in caught.value.message
    assert f"HTTP {code}" in caught.value.message


async def test_404_names_the_model(fake: FakeGemini, provider: GeminiProvider) -> None:
    """A 404 is NotFound naming the model that was asked for."""
    fake.push(HttpError(404, "models/gemini-nope is not found"))

    with pytest.raises(errors.NotFound) as caught:
        await collect(provider, ModelRequest(model="gemini-nope", contents=[user("hi")]))

    assert "gemini-nope" in caught.value.message
    assert fake.requests[0].model == "gemini-nope"


async def test_429_after_retries_is_resource_exhausted_with_retry_after(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """429 with RetryInfo 7s: retried up to retry_attempts, then ResourceExhausted(7)."""
    fake.set_default(lambda _: HttpError(429, "quota", retry_delay="7s"))

    with pytest.raises(errors.ResourceExhausted) as caught:
        await collect(provider, request())

    assert caught.value.retry_after == 7
    assert caught.value.reason == "UPSTREAM_RATE_LIMITED"
    assert len(fake.requests) == 3


async def test_429_without_retry_info_has_no_retry_after(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """429 without a RetryInfo detail: ResourceExhausted with retry_after None."""
    fake.set_default(lambda _: HttpError(429, "quota"))

    with pytest.raises(errors.ResourceExhausted) as caught:
        await collect(provider, request())

    assert caught.value.retry_after is None


async def test_mid_stream_error_event_raises_after_earlier_chunks(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """A `data: {"error": ...}` event: the chunks before it are yielded, then the mapped error."""
    fake.push(Reply(text="abcdef", chunks=3, error_after=2, error=HttpError(429, retry_delay="3s")))

    received: list[ModelChunk] = []
    with pytest.raises(errors.ResourceExhausted) as caught:
        await drain(provider, request(), received)

    assert texts(received) == ["ab", "cd"]
    assert caught.value.retry_after == 3


async def test_connection_dropped_before_response_is_unavailable(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """The server closing the connection without answering surfaces as Unavailable."""
    fake.push(Drop())

    with pytest.raises(errors.Unavailable) as caught:
        await collect(provider, request())

    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
    assert isinstance(caught.value.__cause__, httpx2.TransportError)


async def test_connection_dropped_mid_stream_is_unavailable_after_earlier_chunks(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """An unterminated stream: earlier chunks are yielded, then Unavailable."""
    fake.push(Reply(text="abcdef", chunks=3, drop_after=1))

    received: list[ModelChunk] = []
    with pytest.raises(errors.Unavailable):
        await drain(provider, request(), received)

    assert texts(received) == ["ab"]
    assert len(fake.requests) == 1


async def test_upstream_slower_than_provider_timeout_is_deadline_exceeded(
    fake: FakeGemini, make_provider: ProviderFactory
) -> None:
    """No response headers within GeminiSettings.timeout: DeadlineExceeded."""
    provider = make_provider(timeout=0.1)
    fake.set_default(lambda _: Reply(text="late", delay=2.0))

    with pytest.raises(errors.DeadlineExceeded) as caught:
        await collect(provider, request())

    assert caught.value.reason == "UPSTREAM_TIMEOUT"


async def test_shorter_request_timeout_overrides_the_provider_default(
    fake: FakeGemini, make_provider: ProviderFactory
) -> None:
    """ModelRequest.timeout below GeminiSettings.timeout applies: with the provider's own
    timeout an hour and a model that never answers, the call still ends in
    DeadlineExceeded (were the request's timeout ignored, it would hang)."""
    provider = make_provider(timeout=NEVER)
    fake.set_default(lambda _: Reply(text="late", delay=NEVER))

    with pytest.raises(errors.DeadlineExceeded):
        await collect(provider, request(timeout=0.5))

    assert fake.requests[0].headers["x-server-timeout"] == "1"


async def test_request_timeout_is_a_total_deadline_across_retries(
    fake: FakeGemini, make_provider: ProviderFactory
) -> None:
    """ModelRequest.timeout is the time left before the caller's deadline, across the SDK's
    retries: each attempt is a 503 after 0.3 s, well inside the per-attempt timeout, so
    without a total deadline three attempts (0.9 s) would end in Unavailable; with it, the
    second attempt is cut short at 0.5 s."""
    provider = make_provider(timeout=NEVER)
    fake.set_default(lambda _: HttpError(503, delay=0.3))

    with pytest.raises(errors.DeadlineExceeded):
        await collect(provider, request(timeout=0.5))

    assert len(fake.requests) < 3


async def test_request_timeout_bounds_a_stream_that_keeps_trickling(
    fake: FakeGemini, make_provider: ProviderFactory
) -> None:
    """A stream still sending chunks when ModelRequest.timeout runs out ends in
    DeadlineExceeded (the timeout is not just a per-read gap): chunks every 0.05 s, well
    inside the read timeout, for far longer than the request's 0.5 s."""
    provider = make_provider(timeout=NEVER)
    chunks = 400  # 20 s of chunks
    fake.push(Reply(text="x" * chunks, chunks=chunks, chunk_delay=0.05))

    received: list[ModelChunk] = []
    with pytest.raises(errors.DeadlineExceeded):
        await drain(provider, request(timeout=0.5), received)

    assert 0 < len(received) < chunks


# --------------------------------------------------------------------------- retries


async def test_503_twice_then_success_is_one_stream_after_three_requests(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """Two 503s before the stream starts are retried by the SDK; the caller sees one stream."""
    fake.push(HttpError(503), times=2)

    chunks = await collect(provider, request("again"))

    assert texts(chunks) == ["echo: again"]
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert len(fake.requests) == 3
    assert all(sent.texts() == ["again"] for sent in fake.requests)


async def test_503_forever_gives_up_after_retry_attempts(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """retry_attempts=3 (the default) means 3 requests in all, then Unavailable."""
    fake.set_default(lambda _: HttpError(503))

    with pytest.raises(errors.Unavailable):
        await collect(provider, request())

    assert len(fake.requests) == 3


async def test_retry_attempts_setting_is_honoured(
    fake: FakeGemini, make_provider: ProviderFactory
) -> None:
    """GeminiSettings.retry_attempts sets the number of requests made for a retried status."""
    provider = make_provider(retry_attempts=2)
    fake.set_default(lambda _: HttpError(500))

    with pytest.raises(errors.Unavailable):
        await collect(provider, request())

    assert len(fake.requests) == 2


async def test_400_is_not_retried(fake: FakeGemini, provider: GeminiProvider) -> None:
    """A 400 is the request's fault: exactly one request."""
    fake.set_default(lambda _: HttpError(400))

    with pytest.raises(errors.UpstreamRejected):
        await collect(provider, request())

    assert len(fake.requests) == 1


async def test_mid_stream_error_is_not_retried(fake: FakeGemini, provider: GeminiProvider) -> None:
    """A retryable status (503) in the middle of a stream is raised, never retried: the
    caller already has chunks that a second attempt would duplicate."""
    fake.push(Reply(text="abcdef", chunks=3, error_after=1, error=HttpError(503, "overloaded")))

    received: list[ModelChunk] = []
    with pytest.raises(errors.Unavailable):
        await drain(provider, request(), received)

    assert texts(received) == ["ab"]
    assert len(fake.requests) == 1


# --------------------------------------------------------------------------- cancellation


async def test_cancelling_the_consumer_disconnects_upstream(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """Cancelling the task consuming provider.stream() closes the HTTP connection, and
    nothing is retried: the stream is held after its first chunk, so only the client
    closing it ends it and the fake sees a disconnect."""
    fake.push(Reply(text="a held stream", chunks=3, hold=Hold(), hold_after=1))
    first_chunk = asyncio.Event()
    received: list[ModelChunk] = []

    async def consume() -> None:
        async for chunk in provider.stream(request()):
            received.append(chunk)
            first_chunk.set()

    task = asyncio.create_task(consume())
    await first_chunk.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    disconnect = await fake.await_disconnect(timeout=HANG_GUARD)
    assert disconnect.events_sent == 1
    assert disconnect.request.method == "streamGenerateContent"
    assert len(received) == 1
    assert len(fake.requests) == 1


# --------------------------------------------------------------------------- count_tokens


async def test_count_tokens_returns_the_upstream_total(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """count_tokens: the fake's totalTokens, estimated False; the body is a
    generateContentRequest holding what a generate call sends: the contents, the system
    instruction and the function declarations."""
    fake.push(Tokens(42))
    req = ModelRequest(
        model=MODEL,
        contents=[
            user("How many tokens?"),
            Message(Role.MODEL, (Part(text="Some.", thought_signature=SIGNATURE),)),
            Message(Role.USER, (Part(inline_data=Blob("image/png", IMAGE)),)),
        ],
        system_instruction="Counted too.",
        function_declarations=[FunctionDeclaration("f")],
    )

    count = await provider.count_tokens(req)

    assert count == TokenCount(total_tokens=42, estimated=False)
    [sent] = fake.requests
    assert sent.method == "countTokens"
    assert sent.model == MODEL
    assert sent.api_key == "test-key"
    assert set(sent.body) == {"generateContentRequest"}
    inner = sent.generate_request
    assert get_field(inner, "model") == f"models/{MODEL}"
    assert sent.texts(role=None) == ["How many tokens?", "Some."]
    assert [content["role"] for content in sent.contents] == ["user", "model", "user"]
    assert b64decode(get_field(sent.contents[1], "parts", 0, "thought_signature")) == SIGNATURE
    assert b64decode(get_field(sent.contents[2], "parts", 0, "inline_data", "data")) == IMAGE
    assert get_field(inner, "system_instruction", "parts") == [{"text": "Counted too."}]
    assert get_field(inner, "tools", 0, "function_declarations", 0, "name") == "f"
    # Automatic function calling is chatd's to run: nothing of it goes upstream.
    assert "automaticFunctionCalling" not in json.dumps(sent.body)


async def test_count_tokens_maps_errors(fake: FakeGemini, provider: GeminiProvider) -> None:
    """count_tokens raises domain errors too (404 -> NotFound naming the model)."""
    fake.push(HttpError(404), method="countTokens")

    with pytest.raises(errors.NotFound, match=MODEL):
        await provider.count_tokens(request())


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini_api", "vertex"])
async def test_count_tokens_body_passes_the_strict_fake_with_every_part_and_setting(
    fake: FakeGemini, make_provider: ProviderFactory, vertexai: bool
) -> None:
    """The body chatd encodes itself carries every part kind and setting under field names
    the API knows (the strict fake refuses any other), on both APIs."""
    fake.push(Tokens(11))
    req = full_request()
    kept = Part(gemini_part={"text": "kept", "thoughtSignature": "AAEC"})
    req = ModelRequest(
        model=req.model,
        contents=[*req.contents, Message(Role.MODEL, (kept,))],
        system_instruction=req.system_instruction,
        generation_config=req.generation_config,
        function_declarations=req.function_declarations,
        safety_settings=req.safety_settings,
    )

    count = await make_provider(vertexai=vertexai).count_tokens(req)

    assert count.total_tokens == 11
    [sent] = fake.requests
    assert sent.rejection is None
    assert sent.vertex is vertexai
    assert sent.texts(role=None)[-1] == "kept"
    assert get_field(sent.contents[-1], "parts", 0, "thought_signature") == "AAEC"


async def test_count_tokens_asks_v1beta_for_media_resolution_and_keeps_the_timeout(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """A part with its own media resolution is counted on the Gemini API's v1beta, as it is
    generated; the call carries the request's shorter timeout."""
    fake.push(Tokens(7))
    picture = Part(inline_data=Blob("image/png", IMAGE), media_resolution="MEDIA_RESOLUTION_LOW")
    req = ModelRequest(model=MODEL, contents=[Message(Role.USER, (picture,))], timeout=2.0)

    count = await provider.count_tokens(req)

    assert count == TokenCount(total_tokens=7, estimated=False)
    [sent] = fake.requests
    assert sent.rejection is None
    assert sent.path == f"/v1beta/models/{MODEL}:countTokens"
    assert sent.headers["x-server-timeout"] == "2"
    [part] = sent.contents[0]["parts"]
    assert get_field(part, "media_resolution", "level") == "MEDIA_RESOLUTION_LOW"


async def test_count_tokens_refuses_what_the_api_cannot_take_before_any_call(
    fake: FakeGemini, make_provider: ProviderFactory
) -> None:
    """A server tool call in the history cannot go to Vertex AI (the SDK sends it only to
    the Gemini API): count_tokens refuses it without calling upstream."""
    provider = make_provider(vertexai=True)
    searched = Part(tool_call=ServerToolCall("t1", "GOOGLE_SEARCH_WEB", {"q": "x"}))
    req = ModelRequest(model=MODEL, contents=[user("hi"), Message(Role.MODEL, (searched,))])

    with pytest.raises(errors.UpstreamRejected) as refused:
        await provider.count_tokens(req)

    assert refused.value.reason == "INVALID_GEMINI_PART"
    assert fake.requests == []


# --------------------------------------------------------------------------- transport


async def test_sdk_sends_through_the_providers_own_httpx2_client(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """The async transport is pinned to chatd's httpx2 client (not a client the SDK picks,
    such as aiohttp when importable): closing that client alone breaks the provider."""
    http = provider._http
    assert isinstance(http, httpx2.AsyncClient)
    assert texts(await collect(provider, request())) == ["echo: hi"]

    await http.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await collect(provider, request())
    assert len(fake.requests) == 1


async def test_close_closes_the_http_client(fake: FakeGemini) -> None:
    """close() closes the provider's HTTP client; the provider is unusable afterwards."""
    provider = GeminiProvider(make_settings(fake))
    await collect(provider, request())

    await provider.close()

    assert provider._http.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        await collect(provider, request())
