"""Drives the fake Gemini server through the real google-genai SDK over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from google import genai
from google.auth import crypt, jwt
from google.genai import errors, types

from tests.fake_gemini import (
    JWT_BEARER_GRANT,
    Drop,
    FakeGemini,
    Hold,
    HttpError,
    Raw,
    RecordedRequest,
    Reply,
    Script,
    Tokens,
    b64decode,
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
# How long a wait on the fake may take before the test fails as hung.
HANG_GUARD = 30.0


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    yield from fake_gemini_fixture()


def make_client(fake: FakeGemini, **options: object) -> genai.Client:
    http_options = types.HttpOptions(base_url=fake.base_url, **options)  # type: ignore[arg-type]
    return genai.Client(api_key="test-key", http_options=http_options)


@pytest.fixture
async def client(fake: FakeGemini) -> AsyncIterator[genai.Client]:
    client = make_client(fake)
    yield client
    await client.aio.aclose()


async def collect(
    client: genai.Client, contents: str = "hi"
) -> list[types.GenerateContentResponse]:
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents=contents)
    return [chunk async for chunk in stream]


async def drain(
    stream: AsyncIterator[types.GenerateContentResponse], into: list[str | None]
) -> None:
    async for chunk in stream:
        into.append(chunk.text)


async def generate(client: genai.Client, *, streaming: bool) -> None:
    if streaming:
        await collect(client)
    else:
        await client.aio.models.generate_content(model=MODEL, contents="hi")


# --------------------------------------------------------------------------- replies


async def test_text_reply_and_request_recording(fake: FakeGemini, client: genai.Client) -> None:
    fake.push(Reply(text="Hello there"))

    response = await client.aio.models.generate_content(model=MODEL, contents="Hi, fake")

    assert response.text == "Hello there"
    [request] = fake.requests
    assert request.method == "generateContent"
    assert request.model == MODEL
    assert request.path == f"/v1/models/{MODEL}:generateContent"
    assert request.api_key == "test-key"
    assert request.body["contents"] == [{"role": "user", "parts": [{"text": "Hi, fake"}]}]
    assert request.texts() == ["Hi, fake"]


async def test_default_reply_echoes_last_user_text(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(model=MODEL, contents="ping")

    assert response.text == "echo: ping"


async def test_streamed_reply_arrives_live_in_order(fake: FakeGemini, client: genai.Client) -> None:
    """Each event is flushed on its own: the client reads the first while the fake holds
    back the others (had it buffered the stream, the first would never come)."""
    hold = Hold()
    fake.push(Reply(text="abcdefghi", chunks=3, hold=hold, hold_after=1))

    texts: list[str | None] = []
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents="hi")
    async for chunk in stream:
        texts.append(chunk.text)
        hold.open()  # the rest, once the first has arrived

    assert texts == ["abc", "def", "ghi"]
    assert fake.requests[0].path == f"/v1/models/{MODEL}:streamGenerateContent?alt=sse"


async def test_function_call_id_and_thought_signature_round_trip(
    fake: FakeGemini, client: genai.Client
) -> None:
    fake.push(
        Reply(
            parts=[
                thought_part("Let me look that up", signature=b"\xfb\xff"),
                call_part("get_weather", {"city": "Paris"}, id="call-1", signature=SIGNATURE),
            ]
        )
    )

    [chunk, call_chunk] = await collect(client, "Weather in Paris?")

    thought = chunk.candidates[0].content.parts[0]  # type: ignore[index, union-attr]
    assert thought.thought is True
    assert thought.thought_signature == b"\xfb\xff"
    part = call_chunk.candidates[0].content.parts[0]  # type: ignore[index, union-attr]
    assert part.function_call == types.FunctionCall(
        id="call-1", name="get_weather", args={"city": "Paris"}
    )
    assert part.thought_signature == SIGNATURE

    # Sent back as history, the signature reaches the fake intact (URL-safe base64 on the wire).
    history = [
        types.Content(role="user", parts=[types.Part(text="Weather in Paris?")]),
        types.Content(role="model", parts=[part]),
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"t": 21})],
        ),
    ]
    await client.aio.models.generate_content(model=MODEL, contents=history)
    sent = fake.requests[-1].field("contents", 1, "parts", 0)
    assert b64decode(get_field(sent, "thought_signature")) == SIGNATURE
    assert get_field(sent, "function_call", "id") == "call-1"


@pytest.mark.parametrize("finish_reason", ["STOP", "MAX_TOKENS", "SAFETY", "RECITATION"])
async def test_usage_and_finish_reason(
    fake: FakeGemini, client: genai.Client, finish_reason: str
) -> None:
    fake.push(
        Reply(text="partial", chunks=2, finish_reason=finish_reason, usage=usage(7, 3, thoughts=5))
    )

    chunks = await collect(client)

    assert chunks[0].candidates[0].finish_reason is None  # type: ignore[index]
    last = chunks[-1]
    assert last.candidates[0].finish_reason == finish_reason  # type: ignore[index]
    assert last.usage_metadata == types.GenerateContentResponseUsageMetadata(
        prompt_token_count=7, candidates_token_count=3, thoughts_token_count=5, total_token_count=15
    )


async def test_malformed_function_call_finish_without_content(
    fake: FakeGemini, client: genai.Client
) -> None:
    fake.push(Reply(finish_reason="MALFORMED_FUNCTION_CALL"))

    response = await client.aio.models.generate_content(model=MODEL, contents="hi")

    candidate = response.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.MALFORMED_FUNCTION_CALL
    assert candidate.content is None


async def test_blocked_prompt(fake: FakeGemini, client: genai.Client) -> None:
    fake.push(Reply(block_reason="PROHIBITED_CONTENT", usage=usage(4)))

    [chunk] = await collect(client)

    assert chunk.candidates is None
    assert chunk.prompt_feedback is not None
    assert chunk.prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT


async def test_raw_responses_are_sent_verbatim(fake: FakeGemini, client: genai.Client) -> None:
    fake.push(Raw([{"candidates": []}, {"candidates": [{"content": {"parts": [{"text": "x"}]}}]}]))

    chunks = await collect(client)

    assert [chunk.text for chunk in chunks] == [None, "x"]


async def test_callable_script_sees_the_request(fake: FakeGemini, client: genai.Client) -> None:
    def shout(request: RecordedRequest) -> Script:
        return Reply(parts=[text_part(request.texts()[-1].upper())])

    fake.push(shout, times=2)

    first = await client.aio.models.generate_content(model=MODEL, contents="one")
    second = await collect(client, "two")

    assert first.text == "ONE"
    assert second[0].text == "TWO"


async def test_count_tokens(fake: FakeGemini, client: genai.Client) -> None:
    fake.push(Tokens(42))
    # A generation script pushed without a method does not leak into countTokens.
    fake.push(Reply(text="unused"))

    scripted = await client.aio.models.count_tokens(model=MODEL, contents="a b")
    default = await client.aio.models.count_tokens(model=MODEL, contents="three small words")

    assert scripted.total_tokens == 42
    assert default.total_tokens == 3
    assert [request.method for request in fake.requests] == ["countTokens", "countTokens"]


async def test_v1beta_prefix_is_served(fake: FakeGemini) -> None:
    client = make_client(fake, api_version="v1beta")

    response = await client.aio.models.generate_content(model=MODEL, contents="beta")

    assert response.text == "echo: beta"
    assert fake.requests[0].path.startswith("/v1beta/models/")


def test_sync_client_is_served_from_the_fake_thread(fake: FakeGemini) -> None:
    fake.push(Reply(text="sync!", chunks=2))

    # Keep the client referenced: a collected genai.Client closes its httpx client mid-stream.
    client = make_client(fake)
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="hi"))

    assert [chunk.text for chunk in chunks] == ["syn", "c!"]


# --------------------------------------------------------------------------- faults


async def test_429_carries_retry_info(fake: FakeGemini, client: genai.Client) -> None:
    fake.push(HttpError(429, "quota", retry_delay="7s"))

    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(model=MODEL, contents="hi")

    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    assert caught.value.message == "quota"
    assert {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "7s",
    } in caught.value.details["error"]["details"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
    ],
)
async def test_client_errors(
    fake: FakeGemini, client: genai.Client, code: int, status: str
) -> None:
    fake.push(HttpError(code))

    with pytest.raises(errors.ClientError) as caught:
        await collect(client)

    assert (caught.value.code, caught.value.status) == (code, status)


@pytest.mark.parametrize("code", [500, 503])
@pytest.mark.parametrize("streaming", [False, True])
async def test_server_errors(
    fake: FakeGemini, client: genai.Client, code: int, streaming: bool
) -> None:
    fake.push(HttpError(code))

    with pytest.raises(errors.ServerError) as caught:
        await generate(client, streaming=streaming)

    assert caught.value.code == code


async def test_mid_stream_error_raises_after_earlier_chunks(
    fake: FakeGemini, client: genai.Client
) -> None:
    fake.push(Reply(text="abcdef", chunks=3, error_after=2, error=HttpError(503, "overloaded")))

    received: list[str | None] = []
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents="hi")
    with pytest.raises(errors.ServerError) as caught:
        await drain(stream, received)

    assert received == ["ab", "cd"]
    assert (caught.value.code, caught.value.message) == (503, "overloaded")


async def test_dropped_connection_raises_transport_error(
    fake: FakeGemini, client: genai.Client
) -> None:
    fake.push(Drop())

    with pytest.raises(httpx2.RemoteProtocolError, match="without sending a response"):
        await client.aio.models.generate_content(model=MODEL, contents="hi")


async def test_mid_stream_drop_raises_after_earlier_chunks(
    fake: FakeGemini, client: genai.Client
) -> None:
    fake.push(Reply(text="abcdef", chunks=3, drop_after=1))

    received: list[str | None] = []
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents="hi")
    with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):
        await drain(stream, received)

    assert received == ["ab"]


async def test_cancelling_the_consumer_is_seen_as_a_disconnect(
    fake: FakeGemini, client: genai.Client
) -> None:
    # Held after the first chunk: only the client going away ends the stream.
    fake.push(Reply(text="held stream", chunks=10, hold=Hold(), hold_after=1))
    first_chunk = asyncio.Event()

    async def consume() -> None:
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents="hi")
        async for _ in stream:
            first_chunk.set()

    task = asyncio.create_task(consume())
    await first_chunk.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    disconnect = await fake.await_disconnect(timeout=HANG_GUARD)
    assert disconnect.events_sent == 1
    assert disconnect.request.method == "streamGenerateContent"


async def test_timeout_raises_read_timeout_and_disconnects(fake: FakeGemini) -> None:
    fake.push(Reply(text="late", delay=2.0))
    client = make_client(fake, timeout=100)  # milliseconds

    with pytest.raises(httpx2.ReadTimeout):
        await collect(client)

    assert fake.wait_for_disconnect(timeout=HANG_GUARD).events_sent == 0


async def test_sdk_retry_options_retry_twice_then_succeed(fake: FakeGemini) -> None:
    fake.push(HttpError(503), times=2)
    # jitter defaults to 1 s of random extra wait; zero it to keep the test fast.
    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.02, jitter=0)
    client = make_client(fake, retry_options=retry)

    chunks = await collect(client, "again")

    assert [chunk.text for chunk in chunks] == ["echo: again"]
    assert len(fake.requests) == 3
    assert all(request.texts() == ["again"] for request in fake.requests)


# --------------------------------------------------------------------------- helpers


def test_get_field_reads_either_casing() -> None:
    body = {"generationConfig": {"thinking_config": {"thinkingBudget": 5}}}

    assert get_field(body, "generation_config", "thinkingConfig", "thinking_budget") == 5
    assert get_field(body, "generationConfig", "missing", default="x") == "x"
    assert get_field({"a": [1, 2]}, "a", -1) == 2


def test_b64decode_accepts_both_alphabets_and_missing_padding() -> None:
    assert b64decode("+/8=") == b64decode("-_8") == b"\xfb\xff"
    with pytest.raises(ValueError, match="not base64"):
        b64decode("*")


# --------------------------------------------------------------------------- strictness


async def post(
    fake: FakeGemini,
    body: object,
    method: str = "generateContent",
    path: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, object]]:
    """Posts ``body`` as JSON straight to the fake (with an API key unless ``headers`` are
    given); its status and JSON answer."""
    target = path or f"/v1beta/models/{MODEL}:{method}"
    sent = {"x-goog-api-key": "k"} if headers is None else headers
    async with httpx2.AsyncClient() as http:
        response = await http.post(fake.base_url + target, json=body, headers=sent)
    return response.status_code, response.json()


def user_text(text: str) -> dict[str, object]:
    return {"role": "user", "parts": [{"text": text}]}


async def assert_refused(fake: FakeGemini, body: object, fragment: str, **kwargs: Any) -> None:
    status, answer = await post(fake, body, **kwargs)
    assert status == 400, answer
    error = answer["error"]
    assert isinstance(error, dict)
    assert error["status"] == "INVALID_ARGUMENT"
    assert fragment in error["message"]
    assert fake.requests[-1].rejection == error["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"contents": [user_text("hi")], "temperature": 1}, 'Unknown name "temperature"'),
        (
            {"contents": [{"role": "user", "parts": [{"text": "hi", "x": 1}]}]},
            "Unknown name \"x\" at 'contents[0].parts[0]': Cannot find field.",
        ),
        ({"contents": [{"role": "user", "parts": [{"text": "a"}], "y": 1}]}, '"y"'),
        (
            {
                "contents": [
                    {
                        "role": "user",
                        "parts": [
                            {"inlineData": {"mimeType": "a/b", "data": "AA==", "displayName": "n"}}
                        ],
                    }
                ]
            },
            "Unknown name \"displayName\" at 'contents[0].parts[0].inlineData'",
        ),
        (
            {
                "contents": [
                    {
                        "role": "user",
                        "parts": [{"fileData": {"fileUri": "gs://x", "display_name": "n"}}],
                    }
                ]
            },
            '"display_name"',
        ),
        (
            {
                "contents": [
                    {"role": "model", "parts": [{"functionCall": {"name": "f", "arg": {}}}]}
                ]
            },
            '"arg"',
        ),
        (
            {
                "contents": [
                    {"role": "user", "parts": [{"functionResponse": {"name": "f", "result": {}}}]}
                ]
            },
            '"result"',
        ),
        ({"contents": [user_text("a")], "generationConfig": {"topP": 1, "top-k": 2}}, '"top-k"'),
        (
            {
                "contents": [user_text("a")],
                "generationConfig": {"thinkingConfig": {"level": "LOW"}},
            },
            '"level"',
        ),
        (
            {
                "contents": [user_text("a")],
                "tools": [{"functionDeclarations": [{"name": "f", "params": {}}]}],
            },
            '"params"',
        ),
        ({"contents": [user_text("a")], "tools": [{"function_decls": []}]}, '"function_decls"'),
        (
            {
                "contents": [user_text("a")],
                "toolConfig": {"functionCallingConfig": {"modes": "ANY"}},
            },
            '"modes"',
        ),
        (
            {"contents": [user_text("a")], "safetySettings": [{"category": "C", "level": "L"}]},
            '"level"',
        ),
        ({"contents": [user_text("a")], "labels": {"team": "a"}}, '"labels"'),
        # camelCase or the proto's snake_case of a known field, never a mix of both styles.
        (
            {"contents": [user_text("a")], "generationConfig": {"max_outputTokens": 1}},
            '"max_outputTokens"',
        ),
    ],
)
async def test_unknown_fields_are_refused_at_every_level(
    fake: FakeGemini, body: dict[str, object], where: str
) -> None:
    """The real API refuses a name it does not know, with the path where it found it."""
    await assert_refused(fake, body, where)


async def test_both_casings_of_known_fields_are_accepted(fake: FakeGemini) -> None:
    """proto3 JSON: a field's lowerCamel JSON name and its original snake_case name."""
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "a"},
                    {"inline_data": {"mime_type": "image/png", "data": "AA=="}},
                    {"fileData": {"mimeType": "image/png", "file_uri": "gs://b/x"}},
                ],
            }
        ],
        "system_instruction": {"parts": [{"text": "s"}]},
        "generationConfig": {
            "max_output_tokens": 5,
            "topP": 0.5,
            "thinking_config": {"thinking_level": "XHIGH", "includeThoughts": True},
            "mediaResolution": "MEDIA_RESOLUTION_LOW",
        },
        "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {}}]}],
        "tool_config": {"function_calling_config": {"mode": "VALIDATED"}},
        "serviceTier": "flex",
    }
    status, answer = await post(fake, body)
    assert status == 200, answer


async def test_thinking_budget_and_level_together_are_refused(fake: FakeGemini) -> None:
    """https://ai.google.dev/gemini-api/docs/gemini-3: both in one request is a 400."""
    config = {"thinkingConfig": {"thinking_budget": 10, "thinkingLevel": "LOW"}}
    await assert_refused(
        fake, {"contents": [user_text("a")], "generationConfig": config}, "thinking_budget"
    )


async def test_unknown_enum_values_are_refused(fake: FakeGemini) -> None:
    config = {"thinkingConfig": {"thinkingLevel": "ENORMOUS"}}
    await assert_refused(
        fake, {"contents": [user_text("a")], "generationConfig": config}, "ENORMOUS"
    )


async def test_empty_text_without_signature_is_refused_with_one_accepted(
    fake: FakeGemini,
) -> None:
    """Reported: "" text is an "empty text parameter" 400, unless it carries a signature."""
    signed = {"role": "model", "parts": [{"text": "", "thoughtSignature": "AAAA"}]}
    status, _ = await post(fake, {"contents": [user_text("a"), signed, user_text("b")]})
    assert status == 200
    await assert_refused(fake, {"contents": [user_text("")]}, "empty text parameter")


def _call(name: str, signature: str | None = None) -> dict[str, object]:
    part: dict[str, object] = {"functionCall": {"name": name, "args": {}}}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _responses(*names: str) -> dict[str, object]:
    return {
        "role": "user",
        "parts": [{"functionResponse": {"name": n, "response": {}}} for n in names],
    }


async def test_gemini_3_needs_signatures_on_current_turn_calls_only(fake: FakeGemini) -> None:
    """https://ai.google.dev/gemini-api/docs/thought-signatures: on Gemini 3 the first call
    part of each model content of the current turn carries a signature; earlier turns'
    calls and other models are not checked."""
    earlier = [user_text("old"), {"role": "model", "parts": [_call("f")]}, _responses("f")]
    earlier += [{"role": "model", "parts": [{"text": "done"}]}]
    current = [
        user_text("now"),
        {"role": "model", "parts": [_call("f", "AAAA"), _call("g")]},  # parallel: first signed
        _responses("f", "g"),
    ]
    gemini3 = "/v1beta/models/gemini-3-pro-preview:generateContent"
    status, answer = await post(fake, {"contents": earlier + current}, path=gemini3)
    assert status == 200, answer

    unsigned = [user_text("now"), {"role": "model", "parts": [{"text": "t"}, _call("f")]}]
    unsigned += [_responses("f")]
    await assert_refused(
        fake, {"contents": earlier + unsigned}, "missing a thought_signature", path=gemini3
    )
    status, _ = await post(fake, {"contents": earlier + unsigned})  # gemini-test: not Gemini 3
    assert status == 200


async def test_cached_content_beside_instruction_or_tools_is_refused(fake: FakeGemini) -> None:
    body = {"contents": [user_text("a")], "cachedContent": "cachedContents/c1"}
    status, _ = await post(fake, body)
    assert status == 200
    await assert_refused(
        fake, {**body, "systemInstruction": {"parts": [{"text": "s"}]}}, "CachedContent"
    )


async def test_count_tokens_takes_contents_xor_a_generate_request(fake: FakeGemini) -> None:
    """https://ai.google.dev/api/tokens#method:-models.counttokens"""
    contents = [user_text("a b c")]
    status, answer = await post(fake, {"contents": contents}, method="countTokens")
    assert (status, answer) == (200, {"totalTokens": 3})
    inner = {
        "model": f"models/{MODEL}",
        "contents": contents,
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "tools": [{"functionDeclarations": [{"name": "f"}]}],
    }
    status, answer = await post(fake, {"generateContentRequest": inner}, method="countTokens")
    assert (status, answer) == (200, {"totalTokens": 5})
    await assert_refused(
        fake,
        {"contents": contents, "generateContentRequest": inner},
        "mutually exclusive",
        method="countTokens",
    )
    await assert_refused(
        fake, {"generateContentRequest": {**inner, "extra": 1}}, '"extra"', method="countTokens"
    )
    await assert_refused(
        fake,
        {"systemInstruction": {"parts": []}, "contents": contents},
        '"systemInstruction"',
        method="countTokens",
    )


async def test_vertex_paths_accept_labels_and_display_names(fake: FakeGemini) -> None:
    """Vertex AI's request has labels and its Blob/FileData a display name."""
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [{"inlineData": {"mimeType": "a/b", "data": "AA==", "displayName": "n"}}],
            }
        ],
        "labels": {"team": "search"},
    }
    for path in (
        f"/v1beta1/publishers/google/models/{MODEL}:generateContent",
        f"/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}:generateContent",
    ):
        bearer = {"authorization": f"Bearer {fake.issue_token()}", "x-goog-api-key": "k"}
        status, answer = await post(fake, body, path=path, headers=bearer)
        assert status == 200, answer
        assert fake.requests[-1].vertex


@pytest.mark.parametrize(
    "path",
    [
        f"/v2/models/{MODEL}:generateContent",
        f"/v1beta1/models/{MODEL}:generateContent",
        f"/v1/models/{MODEL}:embedContent",
        f"/v1/models/{MODEL}:generate",
    ],
)
async def test_unknown_versions_and_methods_are_404(fake: FakeGemini, path: str) -> None:
    status, _ = await post(fake, {"contents": [user_text("a")]}, path=path)
    assert status == 404


async def test_a_lenient_fake_takes_what_the_api_refuses(fake: FakeGemini) -> None:
    """``strict = False`` is how a test sends an invalid request on purpose."""
    fake.strict = False
    status, _ = await post(fake, {"contents": [user_text("")], "bogus": 1})
    assert status == 200
    assert fake.requests[-1].rejection is None


async def test_the_sdk_itself_passes_the_strict_fake(
    client: genai.Client, fake: FakeGemini
) -> None:
    """What google-genai sends for a full config is accepted (its snake_case keys too)."""
    config = types.GenerateContentConfig(
        system_instruction="s",
        temperature=0.1,
        thinking_config=types.ThinkingConfig(
            include_thoughts=True, thinking_level=types.ThinkingLevel.HIGH
        ),
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="f")])],
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode=types.FunctionCallingConfigMode.ANY,
                allowed_function_names=["f"],
            )
        ),
        media_resolution="MEDIA_RESOLUTION_LOW",  # type: ignore[arg-type]
        service_tier="flex",  # type: ignore[arg-type]
    )
    await client.aio.models.generate_content(model=MODEL, contents="hi", config=config)
    assert fake.requests[-1].rejection is None


async def test_empty_contents_parts_and_two_data_fields_are_refused(fake: FakeGemini) -> None:
    """A content needs parts; a part's data is a oneof (https://ai.google.dev/api/caching#Part)."""
    await assert_refused(fake, {"contents": []}, "contents is not specified")
    await assert_refused(fake, {"contents": [{"role": "user", "parts": []}]}, "must not be empty")
    both = {"role": "user", "parts": [{"text": "a", "fileData": {"fileUri": "gs://b/x"}}]}
    await assert_refused(fake, {"contents": [both]}, "Oneof field 'data' is already set")


# --------------------------------------------------------------------------- credentials

VERTEX_PATH = f"/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}"


def error_reason(answer: dict[str, object]) -> str | None:
    error = answer["error"]
    assert isinstance(error, dict)
    for detail in error.get("details", []):
        if str(detail.get("@type", "")).endswith("ErrorInfo"):
            return str(detail["reason"])
    return None


async def test_gemini_api_without_a_key_is_403_and_a_wrong_key_400_api_key_invalid(
    fake: FakeGemini,
) -> None:
    body = {"contents": [user_text("a")]}
    status, answer = await post(fake, body, headers={})
    assert status == 403
    assert "unregistered callers" in str(answer)

    fake.expected_api_key = "right"
    status, answer = await post(fake, body, headers={"x-goog-api-key": "wrong"})
    assert status == 400
    assert error_reason(answer) == "API_KEY_INVALID"
    assert fake.requests[-1].auth_failure == "API key not valid. Please pass a valid API key."
    # Credentials are checked before the body: an invalid body is not looked at.
    assert fake.requests[-1].rejection is None
    status, _ = await post(fake, body, headers={"x-goog-api-key": "right"})
    assert status == 200


async def test_vertex_project_paths_need_a_bearer_token_the_fake_issued(
    fake: FakeGemini,
) -> None:
    body = {"contents": [user_text("a")]}
    path = f"{VERTEX_PATH}:generateContent"
    status, answer = await post(fake, body, path=path, headers={"x-goog-api-key": "k"})
    assert (status, error_reason(answer)) == (401, "CREDENTIALS_MISSING")

    status, answer = await post(fake, body, path=path, headers={"authorization": "Bearer made-up"})
    assert (status, error_reason(answer)) == (401, None)
    assert "invalid authentication credentials" in str(answer)

    token = fake.issue_token()
    headers = {"authorization": f"Bearer {token}", "x-goog-user-project": "quota"}
    status, _ = await post(fake, body, path=path, headers=headers)
    assert status == 200
    sent = fake.requests[-1]
    assert (sent.project, sent.location, sent.bearer_token) == ("p", "us-central1", token)
    assert sent.user_project == "quota"

    fake.expire_tokens()
    status, answer = await post(fake, body, path=path, headers=headers)
    assert (status, error_reason(answer)) == (401, "ACCESS_TOKEN_EXPIRED")


async def grant(fake: FakeGemini, form: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with httpx2.AsyncClient() as http:
        response = await http.post(fake.base_url + "/token", data=form)
    return response.status_code, response.json()


def assertion(info: dict[str, object], **claims: object) -> str:
    """A service account's grant assertion, signed with its key by google-auth."""
    now = int(time.time())
    payload: dict[str, object] = {
        "iss": info["client_email"],
        "aud": "https://oauth2.googleapis.com/token",
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "iat": now,
        "exp": now + 3600,
    }
    payload.update(claims)
    signer = crypt.RSASigner.from_service_account_info(info)
    token: bytes = jwt.encode(signer, payload)
    return token.decode("ascii")


@pytest.mark.parametrize(
    ("claims", "error", "fragment"),
    [
        ({}, None, None),
        ({"aud": "https://example.com/token"}, "invalid_grant", "aud"),
        ({"scope": ""}, "invalid_scope", "Invalid OAuth scope"),
        ({"exp": int(time.time()) + 7200}, "invalid_grant", "short-lived"),
        ({"iss": "stranger@p.iam.gserviceaccount.com"}, "invalid_grant", "account not found"),
    ],
)
async def test_token_endpoint_verifies_the_jwt_bearer_grant(
    fake: FakeGemini, claims: dict[str, object], error: str | None, fragment: str | None
) -> None:
    info = fake.service_account()
    fake.token_lifetime = 120
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion(info, **claims)}
    status, answer = await grant(fake, form)
    if error is None:
        assert status == 200
        assert answer["expires_in"] == 120 and answer["token_type"] == "Bearer"
        assert [t.token for t in fake.issued_tokens] == [answer["access_token"]]
        return
    assert status == 400 and fragment is not None
    assert answer["error"] == error and fragment in str(answer["error_description"])
    assert fake.issued_tokens == []


async def test_token_endpoint_refuses_other_keys_grants_and_on_request(fake: FakeGemini) -> None:
    untrusted = fake.service_account("other@p.iam.gserviceaccount.com", trusted=False)
    status, answer = await grant(
        fake, {"grant_type": JWT_BEARER_GRANT, "assertion": assertion(untrusted)}
    )
    assert (status, answer["error_description"]) == (400, "Invalid JWT Signature.")

    status, answer = await grant(fake, {"grant_type": "client_credentials"})
    assert (status, answer["error"]) == (400, "unsupported_grant_type")

    fake.token_refusal = "Token has been expired or revoked."
    info = fake.service_account()
    status, answer = await grant(
        fake, {"grant_type": JWT_BEARER_GRANT, "assertion": assertion(info)}
    )
    assert (status, answer["error"]) == (400, "invalid_grant")
    assert fake.issued_tokens == []
