"""Conformance: the ModelProvider contract (server.sessions.ports.ModelProvider), on every
implementation in providers.PROVIDERS: the echo provider, the scripted model the domain
tests use, and the gemini provider against the fake Gemini server (real SDK, real HTTP),
alone and inside the metrics and tracing decorators.

A stream is chunks of the answer, the last one carrying usage and the finish reason; a
function call comes only when calls are allowed; count_tokens counts what a request
sends; a stream closed early or whose consumer is cancelled ends cleanly and lets go of
the upstream call; ModelRequest.timeout bounds a wait for the model; and every failure is
a server.sessions.errors class with its reason.
"""

from __future__ import annotations

import asyncio

import pytest

from server.sessions.errors import ChatdError, DeadlineExceeded
from server.sessions.model import FinishReason, FunctionDeclaration, Message, Part, Role
from server.sessions.ports import ModelChunk, ModelRequest, TokenCount

from .providers import ProviderCase, user

LOOKUP = FunctionDeclaration(
    "lookup",
    "Looks a word up.",
    {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
)
# What a stalled call is given when a test lets it time out: it never gets an answer, so
# any value gives the same outcome; a small one keeps the suite quick.
STALL_TIMEOUT = 0.2


async def collect(case: ProviderCase, request: ModelRequest) -> list[ModelChunk]:
    return [chunk async for chunk in case.provider.stream(request)]


async def drain(case: ProviderCase, request: ModelRequest, into: list[ModelChunk]) -> None:
    """Reads the stream into `into`, so the chunks before a failure can be checked."""
    async for chunk in case.provider.stream(request):
        into.append(chunk)


def text_of(chunks: list[ModelChunk]) -> str:
    return "".join(p.text or "" for c in chunks for p in c.parts if not p.thought)


def calling(case: ProviderCase, *, allow: bool) -> ModelRequest:
    request = case.calling(LOOKUP, {"word": "chatd"}, allow=allow)
    if request is None:
        pytest.skip(f"{case.provider.name} cannot be made to call a function")
    return request


def stalled(case: ProviderCase, timeout: float | None = None) -> ModelRequest:
    request = case.stalling(timeout)
    if request is None:
        pytest.skip(case.never_waits)
    return request


async def test_it_names_itself_and_its_default_model(case: ProviderCase) -> None:
    assert isinstance(case.provider.name, str) and case.provider.name
    assert isinstance(case.provider.default_model, str) and case.provider.default_model


async def test_a_stream_is_chunks_of_the_answer_then_usage_and_finish_reason_last(
    case: ProviderCase,
) -> None:
    chunks = await collect(case, case.text("the quick brown fox"))

    assert all(isinstance(c, ModelChunk) for c in chunks)
    assert sum(1 for c in chunks if any(p.text for p in c.parts)) > 1, "streamed, not whole"
    assert "the quick brown fox" in text_of(chunks)
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.finish_reason is FinishReason.STOP
    assert last.usage is not None
    assert last.usage.total_tokens >= last.usage.prompt_tokens + last.usage.candidates_tokens > 0


async def test_a_function_call_comes_when_calls_are_allowed(case: ProviderCase) -> None:
    chunks = await collect(case, calling(case, allow=True))

    calls = [p.function_call for c in chunks for p in c.parts if p.function_call is not None]
    assert [(c.name, c.args) for c in calls] == [("lookup", {"word": "chatd"})]
    assert chunks[-1].finish_reason is FinishReason.STOP


async def test_no_function_call_comes_when_calls_are_not_allowed(case: ProviderCase) -> None:
    """chatd's last word after the round limit: the model must answer in words."""
    chunks = await collect(case, calling(case, allow=False))

    assert not any(p.function_call for c in chunks for p in c.parts)
    assert text_of(chunks).strip()


async def test_count_tokens_counts_more_for_a_longer_request(case: ProviderCase) -> None:
    short = case.request("one two")
    longer = ModelRequest(
        case.model,
        [user("one two"), Message(Role.MODEL, (Part(text="three four five six"),)), user("7 8")],
        system_instruction="Count these words too, all of them.",
    )

    counted = await case.provider.count_tokens(short)
    more = await case.provider.count_tokens(longer)

    assert isinstance(counted, TokenCount) and isinstance(counted.estimated, bool)
    assert 0 < counted.total_tokens < more.total_tokens


async def test_closing_the_stream_early_ends_the_call_cleanly(case: ProviderCase) -> None:
    """What a consumer that stops reading does (server.sessions.stream_watch): aclose()
    ends the call at once, not when the stream is garbage collected."""
    request = case.stalling()
    waits = request is not None
    stream = case.provider.stream(request or case.text("one two three four"))
    first = await anext(stream)
    assert first.finish_reason is None
    aclose = getattr(stream, "aclose", None)
    assert aclose is not None, "a stream is an async generator, closable early"

    await aclose()

    if waits:
        await case.released()


async def test_cancelling_the_consumer_ends_the_call_and_lets_go_upstream(
    case: ProviderCase,
) -> None:
    request = stalled(case)
    received: list[ModelChunk] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for chunk in case.provider.stream(request):
            received.append(chunk)
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    await case.released()
    assert len(received) == 1


async def test_a_wait_past_the_request_timeout_is_deadline_exceeded(case: ProviderCase) -> None:
    request = stalled(case, timeout=STALL_TIMEOUT)

    with pytest.raises(DeadlineExceeded) as late:
        await collect(case, request)

    assert late.value.reason == "UPSTREAM_TIMEOUT"
    await case.released()


@pytest.mark.parametrize("mid_stream", [False, True], ids=["before-any-chunk", "mid-stream"])
async def test_failures_are_domain_errors_after_the_chunks_before_them(
    case: ProviderCase, mid_stream: bool
) -> None:
    failure = case.failing(mid_stream=mid_stream)
    if failure is None:
        pytest.skip(case.never_waits)
    request, error, reason = failure
    received: list[ModelChunk] = []

    with pytest.raises(ChatdError) as failed:
        await drain(case, request, received)

    assert type(failed.value) is error
    assert failed.value.reason == reason
    assert bool(received) == mid_stream
    assert all(c.finish_reason is None for c in received)
