"""The fake Gemini's cachedContents, through google-genai's own caches and models calls:
it refuses what the Gemini API refuses and bills a cache as the API reports it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from server.providers.gemini.context_cache import min_cache_tokens
from tests.fake_gemini import FakeGemini, fake_tokens
from tests.fake_gemini.caches import GONE, min_tokens_of

MODEL = "gemini-2.5-flash"
BIG = [types.Content(role="user", parts=[types.Part(text="a long document " * 800)])]


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as served:
        yield served


@pytest.fixture
async def api(fake: FakeGemini) -> AsyncIterator[genai.Client]:
    """google-genai's client on the fake, closed after the test."""
    made = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.base_url))
    yield made
    await made.aio.aclose()
    made.close()


async def create(api: genai.Client, model: str = MODEL, **config: Any) -> types.CachedContent:
    config.setdefault("contents", BIG)
    config.setdefault("system_instruction", "be brief")
    config.setdefault("ttl", "600s")
    return await api.aio.caches.create(
        model=model, config=types.CreateCachedContentConfig(**config)
    )


async def test_create_get_update_and_delete_as_the_api_answers(
    fake: FakeGemini, api: genai.Client
) -> None:
    cache = await create(api)
    assert cache.name is not None and cache.name.startswith("cachedContents/")
    assert cache.model == f"models/{MODEL}"
    assert cache.usage_metadata is not None
    expected = fake_tokens({"parts": [{"text": "be brief"}], "role": "user"})
    assert cache.usage_metadata.total_token_count is not None
    assert cache.usage_metadata.total_token_count > expected
    got = await api.aio.caches.get(name=cache.name)
    assert got.expire_time == cache.expire_time
    fake.caches.clock = lambda: fake.caches.get(str(cache.name)).create_time + 300  # type: ignore[union-attr]
    updated = await api.aio.caches.update(
        name=cache.name, config=types.UpdateCachedContentConfig(ttl="900s")
    )
    assert updated.expire_time is not None and cache.expire_time is not None
    assert (updated.expire_time - cache.expire_time).total_seconds() == pytest.approx(600)
    await api.aio.caches.delete(name=cache.name)
    with pytest.raises(genai_errors.ClientError) as gone:
        await api.aio.caches.get(name=cache.name)
    assert (gone.value.code, gone.value.message) == (403, GONE)


async def test_a_cache_below_the_models_minimum_is_refused(
    fake: FakeGemini, api: genai.Client
) -> None:
    small = [types.Content(role="user", parts=[types.Part(text="short")])]
    with pytest.raises(genai_errors.ClientError) as refused:
        await create(api, contents=small)
    assert refused.value.code == 400
    assert refused.value.message is not None
    assert refused.value.message.startswith("Cached content is too small. total_token_count=")
    assert refused.value.message.endswith("min_total_token_count=2048")


@pytest.mark.parametrize(
    "model",
    [
        "gemini-2.5-flash",
        "gemini-2.5-flash-001",
        "gemini-2.5-flash-latest",
        "gemini-2.5-flash-preview-05-20",
        "models/gemini-2.5-pro-002",
        "gemini-2.5-flash-lite",
        "gemini-3.1-pro-preview",
        "gemini-test",
    ],
)
def test_the_minimum_is_found_by_the_rule_chatd_uses(model: str) -> None:
    assert min_tokens_of(model) == min_cache_tokens(model)


async def test_a_versioned_model_has_its_familys_minimum(
    fake: FakeGemini, api: genai.Client
) -> None:
    assert fake_tokens(BIG[0].model_dump(exclude_none=True)) < 4096
    cache = await create(api, model="gemini-2.5-flash-001")
    assert cache.model == "models/gemini-2.5-flash-001"
    with pytest.raises(genai_errors.ClientError) as refused:
        await create(api, model="gemini-2.5-flash-lite")
    assert str(refused.value.message).endswith("min_total_token_count=4096")


@pytest.mark.parametrize("ttl", ["600", "ten minutes", "1.0000000001s"])
async def test_a_ttl_that_is_no_duration_is_refused(
    fake: FakeGemini, api: genai.Client, ttl: str
) -> None:
    with pytest.raises(genai_errors.ClientError) as refused:
        await create(api, ttl=ttl)
    assert refused.value.code == 400
    assert "google.protobuf.Duration" in str(refused.value.message)


async def test_generate_naming_a_cache_is_billed_for_it_and_checked(
    fake: FakeGemini, api: genai.Client
) -> None:
    cache = await create(api)
    assert cache.name is not None and cache.usage_metadata is not None
    tokens = cache.usage_metadata.total_token_count
    aio = api.aio.models
    answer = await aio.generate_content(
        model=MODEL,
        contents="what is it?",
        config=types.GenerateContentConfig(cached_content=cache.name),
    )
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.cached_content_token_count == tokens
    assert answer.usage_metadata.prompt_token_count is not None and tokens is not None
    assert answer.usage_metadata.prompt_token_count > tokens
    header, contents = fake.caches.prompt(fake.requests[-1])
    assert header["systemInstruction"]["parts"] == [{"text": "be brief"}]
    assert len(contents) == 2, "the cache's content, then the request's"

    with pytest.raises(genai_errors.ClientError) as beside:
        await aio.generate_content(
            model=MODEL,
            contents="x",
            config=types.GenerateContentConfig(cached_content=cache.name, system_instruction="hi"),
        )
    assert beside.value.code == 400
    assert "CachedContent can not be used with GenerateContent" in str(beside.value.message)

    with pytest.raises(genai_errors.ClientError) as other:
        await aio.generate_content(
            model="gemini-2.5-pro",
            contents="x",
            config=types.GenerateContentConfig(cached_content=cache.name),
        )
    assert other.value.message == (
        "Model used by GenerateContent request (models/gemini-2.5-pro) and CachedContent "
        f"(models/{MODEL}) has to be the same."
    )

    fake.caches.expire(cache.name)
    with pytest.raises(genai_errors.ClientError) as expired:
        await aio.generate_content(
            model=MODEL, contents="x", config=types.GenerateContentConfig(cached_content=cache.name)
        )
    assert (expired.value.code, expired.value.status) == (403, "PERMISSION_DENIED")


async def test_names_the_fake_never_issued_pass_unless_refused(
    fake: FakeGemini, api: genai.Client
) -> None:
    aio = api.aio.models
    config = types.GenerateContentConfig(cached_content="cachedContents/callers-own")
    await aio.generate_content(model=MODEL, contents="x", config=config)
    fake.caches.refuse_unknown = True
    with pytest.raises(genai_errors.ClientError) as refused:
        await aio.generate_content(model=MODEL, contents="x", config=config)
    assert refused.value.code == 403
