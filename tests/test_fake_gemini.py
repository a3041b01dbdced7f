"""Drives the fake Gemini server through the real google-genai SDK over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest
from google import genai
from google.genai import errors, types

from tests.fake_gemini import (
    Drop,
    FakeGemini,
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
    fake.push(Reply(text="abcdefghi", chunks=3, chunk_delay=0.05))

    arrivals: list[tuple[float, str | None]] = []
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents="hi")
    async for chunk in stream:
        arrivals.append((time.monotonic(), chunk.text))

    assert [text for _, text in arrivals] == ["abc", "def", "ghi"]
    # Each event is flushed on its own, so the client sees the gaps the fake waited.
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert all(gap >= 0.03 for gap in gaps), gaps
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
    fake.push(Reply(text="slow stream", chunks=10, chunk_delay=5.0))
    first_chunk = asyncio.Event()

    async def consume() -> None:
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents="hi")
        async for _ in stream:
            first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), 1.0)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    disconnect = await fake.await_disconnect(timeout=0.5)
    assert disconnect.time - cancelled_at < 0.5
    assert disconnect.events_sent == 1
    assert disconnect.request.method == "streamGenerateContent"


async def test_timeout_raises_read_timeout_and_disconnects(fake: FakeGemini) -> None:
    fake.push(Reply(text="late", delay=2.0))
    client = make_client(fake, timeout=100)  # milliseconds

    with pytest.raises(httpx2.ReadTimeout):
        await collect(client)

    assert fake.wait_for_disconnect(timeout=0.5).events_sent == 0


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
