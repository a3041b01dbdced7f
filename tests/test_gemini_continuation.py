"""Automatic continuation: an answer Gemini streams over several requests, followed as
google-genai 3.6.1 follows it (server/providers/gemini/continuation.py), against the
strict fake over real HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import pytest

from server.providers.gemini import GeminiProvider, GeminiSettings
from server.sessions import errors
from server.sessions.model import FinishReason, Message, Part, Role
from server.sessions.ports import ModelChunk, ModelRequest
from server.sessions.reply import ReplyBuilder
from tests.fake_gemini import FakeGemini, HttpError, Raw, fake_gemini_fixture

MODEL = "gemini-test"
FIRST = base64.b64encode(b"checkpoint-1").decode()
SECOND = base64.b64encode(b"checkpoint-2").decode()


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    yield from fake_gemini_fixture()


@pytest.fixture
async def provider(fake: FakeGemini) -> AsyncIterator[GeminiProvider]:
    made = GeminiProvider(
        GeminiSettings(api_key="k", base_url=fake.base_url, retry_attempts=1, timeout=5.0)
    )
    yield made
    await made.close()


def request() -> ModelRequest:
    return ModelRequest(model=MODEL, contents=(Message(Role.USER, (Part(text="hi"),)),))


def event(text: str | None = None, **candidate: object) -> dict[str, object]:
    content = {"role": "model", "parts": [{"text": text}]} if text is not None else None
    fields = {"content": content, **candidate} if content else dict(candidate)
    return {"candidates": [fields]}


def usage(prompt: int, candidates: int) -> dict[str, int]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
    }


async def collect(provider: GeminiProvider) -> list[ModelChunk]:
    return [chunk async for chunk in provider.stream(request())]


def body_token(fake: FakeGemini, index: int) -> bytes | None:
    token = fake.requests[index].body.get("continuationToken")
    return None if token is None else base64.urlsafe_b64decode(token)


async def test_an_answer_continued_over_two_requests_reads_as_one(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.push(
        Raw(
            [
                event("Hello "),
                {
                    **event(finishReason="CONTINUATION", continuationToken=FIRST),
                    "usageMetadata": usage(10, 2),
                },
            ]
        )
    )
    fake.push(Raw([{**event("world", finishReason="STOP"), "usageMetadata": usage(12, 3)}]))
    chunks = await collect(provider)
    builder = ReplyBuilder()
    for chunk in chunks:
        builder.add(chunk)
    assert "".join(p.text or "" for c in chunks for p in c.parts) == "Hello world"
    # The intermediate CONTINUATION is not an end: only the last hop's reason is passed on.
    assert [c.finish_reason for c in chunks if c.finish_reason] == [FinishReason.STOP]
    # Each hop's usage counts once, summed across hops, as google-genai sums them.
    final = chunks[-1].usage
    assert final is not None
    assert (final.prompt_tokens, final.candidates_tokens) == (22, 5)
    assert len(fake.requests) == 2
    assert body_token(fake, 0) is None
    assert body_token(fake, 1) == b"checkpoint-1"
    # The second request is the first one plus the token.
    again = {k: v for k, v in fake.requests[1].body.items() if k != "continuationToken"}
    assert again == fake.requests[0].body
    # The token is transport, not metadata about the answer.
    assert all("continuationToken" not in (c.candidate_metadata or {}) for c in chunks)


async def test_a_stream_cut_after_a_checkpoint_goes_on_from_it(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.push(
        Raw(
            [event("Hel"), event("lo ", continuationToken=FIRST), event("lost")],
            drop_after=2,
        )
    )
    fake.push(Raw([event("world", finishReason="STOP")]))
    chunks = await collect(provider)
    assert "".join(p.text or "" for c in chunks for p in c.parts) == "Hello world"
    assert body_token(fake, 1) == b"checkpoint-1"


async def test_a_cut_without_any_checkpoint_fails_the_call_as_before(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.push(Raw([event("Hel"), event("lo")], drop_after=1))
    with pytest.raises(errors.Unavailable):
        await collect(provider)
    assert len(fake.requests) == 1


async def test_a_refused_continuation_is_the_calls_error(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.push(Raw([event("Hello", finishReason="CONTINUATION", continuationToken=FIRST)]))
    fake.push(HttpError(400, "bad token", status="INVALID_ARGUMENT"))
    with pytest.raises(errors.UpstreamRejected):
        await collect(provider)
    assert len(fake.requests) == 2


async def test_cuts_that_make_no_progress_give_up_after_three_reconnects(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.push(Raw([event("Hel", continuationToken=FIRST)], drop_after=1))
    # From the checkpoint, three hops in a row break before anything new arrives.
    fake.push(Raw([event(finishReason=None)], drop_after=0), times=4)
    with pytest.raises(errors.Unavailable):
        await collect(provider)
    # The first hop, then the hop from the checkpoint and its three retries.
    assert len(fake.requests) == 5
    assert [body_token(fake, i) for i in range(1, 5)] == [b"checkpoint-1"] * 4


async def test_a_final_reason_with_a_token_ends_the_answer(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.push(Raw([event("done", finishReason="STOP", continuationToken=SECOND)]))
    chunks = await collect(provider)
    assert [c.finish_reason for c in chunks if c.finish_reason] == [FinishReason.STOP]
    assert len(fake.requests) == 1
