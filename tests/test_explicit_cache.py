"""Explicit context caches end to end: gRPC turns on a chatd whose gemini provider talks to
the fake Gemini (tests/fake_gemini_caches.py), with CHATD_GEMINI_CONTEXT_CACHE_TOKENS on.

What the model is given stays what it is given without a cache (the fake's `prompt`: the
cache's header and contents, then the request's), while requests naming the cache carry no
instruction, tools or tool config, and the cache is created, reused, extended, replaced and
deleted as the session goes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from google.protobuf import duration_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import session_pb2
from server.config import SettingsError, load
from server.providers.gemini import GeminiProvider, GeminiSettings
from server.providers.gemini.context_cache import (
    RETRY_AFTER,
    CacheSettings,
    min_cache_tokens,
    ttl_text,
)
from server.sessions.compaction import DEFAULT_INSTRUCTIONS
from server.sweeper import Sweeper
from tests.conftest import Chatd, StartChatd
from tests.fake_gemini import FakeGemini, HttpError, RecordedRequest, Reply, call_part, get_field
from tests.test_cli import run
from tests.test_metrics_rpc import scrape, value
from tests.test_tools_rpc import TEST_TOOLS

TTL = 600.0
MODEL = "gemini-2.5-flash"
INSTRUCTION = "You answer questions about the conversation so far. " * 10


class Clock:
    """A clock the test moves: the provider's and the fake's caches' time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(fake_gemini: FakeGemini) -> Clock:
    moved = Clock()
    fake_gemini.caches.clock = moved
    return moved


def provider(fake: FakeGemini, clock: Clock, trigger: int = 1) -> GeminiProvider:
    return GeminiProvider(
        GeminiSettings(
            api_key="test-key",
            base_url=fake.base_url,
            default_model=MODEL,
            retry_initial_delay=0.01,
            retry_max_delay=0.02,
            retry_jitter=0.0,
            timeout=5.0,
            context_cache=CacheSettings(trigger_tokens=trigger, ttl=TTL),
        ),
        clock=clock,
    )


async def caching_chatd(start_chatd: StartChatd, fake: FakeGemini, clock: Clock) -> Chatd:
    chatd: Chatd = await start_chatd(provider=provider(fake, clock), tools=TEST_TOOLS)
    return chatd


async def new_session(chatd: Chatd, session_id: str, **settings: Any) -> None:
    settings.setdefault("system_instruction", INSTRUCTION)
    settings.setdefault("tools", ["calculate"])
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id=session_id, session=session_pb2.Session(**settings))
    )


def question(turn: int) -> str:
    """About 750 of chatd's estimated tokens: the prefix reaches gemini-2.5-flash's minimum
    (2,048) at the third turn."""
    return f"question {turn} " + "words " * 500


async def turn(chatd: Chatd, session_id: str, number: int) -> Any:
    got = await chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id=session_id, text=question(number))
    )
    return got.reply


def generate_requests(fake: FakeGemini) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.method == "streamGenerateContent"]


def named(request: RecordedRequest) -> str | None:
    """The cache the request names, if any."""
    name = get_field(request.body, "cachedContent")
    return name if isinstance(name, str) else None


def prompt_json(fake: FakeGemini, request: RecordedRequest) -> str:
    header, contents = fake.caches.prompt(request)
    return json.dumps({"header": header, "contents": contents}, sort_keys=True)


def test_the_documented_minimums_apply_and_unknown_models_need_the_largest() -> None:
    assert min_cache_tokens("gemini-2.5-flash") == 2048
    assert min_cache_tokens("models/gemini-2.5-pro-001") == 2048
    assert min_cache_tokens("gemini-2.5-flash-preview-09-2025") == 2048
    assert min_cache_tokens("gemini-3.5-flash") == 4096
    assert min_cache_tokens("gemini-2.5-flash-lite") == 4096, "not listed: the largest"
    assert min_cache_tokens("some-future-model") == 4096
    assert CacheSettings(trigger_tokens=100).trigger("gemini-2.5-flash") == 2048
    assert CacheSettings(trigger_tokens=9000).trigger("gemini-2.5-flash") == 9000
    assert ttl_text(3600.0) == "3600s" and ttl_text(90.5) == "90.5s"


async def test_a_cache_is_made_once_the_prefix_reaches_the_minimum_and_named_by_later_turns(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    cached = await caching_chatd(start_chatd, fake_gemini, clock)
    plain = await start_chatd(provider=provider(fake_gemini, clock, trigger=0), tools=TEST_TOOLS)
    for chatd in (cached, plain):
        await new_session(chatd, "s")
    cached_counts = []
    for number in range(6):
        reply = await turn(cached, "s", number)
        cached_counts.append(reply.usage.cached_content_token_count)
        with_cache = generate_requests(fake_gemini)[-1]
        plain_reply = await turn(plain, "s", number)
        without = generate_requests(fake_gemini)[-1]
        assert reply.text == plain_reply.text == f"echo: {question(number)}"
        assert prompt_json(fake_gemini, with_cache) == prompt_json(fake_gemini, without), (
            "the model is given the same instruction, tools and contents"
        )
        if number < 2:
            assert named(with_cache) is None, "the prefix is below the model's minimum"
            assert reply.usage.cached_content_token_count == 0
            continue
        cache = fake_gemini.caches.get(str(named(with_cache)))
        assert cache is not None
        for field in ("systemInstruction", "tools", "toolConfig"):
            assert get_field(with_cache.body, field) is None, field
        assert len(with_cache.contents) == len(without.contents) - len(cache.contents)
        assert reply.usage.cached_content_token_count == cache.tokens
        assert reply.usage.prompt_token_count > cache.tokens
    creates = fake_gemini.caches.calls_of("POST")
    assert [c.status for c in creates] == [200], "made once, at the third turn, then reused"
    body = creates[0].body
    assert body["model"] == f"models/{MODEL}" and body["ttl"] == ttl_text(TTL)
    assert len(body["contents"]) == 4, "the two turns before the third"
    session = await cached.stub.GetSession(pb.GetSessionRequest(session_id="s"))
    assert session.session.usage.cached_content_token_count == sum(cached_counts) > 0
    server = cached.running.metrics_server
    assert server is not None
    samples = await scrape(server.port)
    metric = "chatd_gemini_context_caches_total"
    assert value(samples, metric, outcome="created") == 1
    assert value(samples, metric, outcome="reused") == 3
    assert value(samples, metric, outcome="failed") == 0


async def test_a_turn_of_tool_rounds_names_the_cache_on_every_round(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    await new_session(chatd, "t")
    for number in range(3):
        await turn(chatd, "t", number)
    fake_gemini.push(Reply(parts=[call_part("calculate", {"expression": "6*7"})]))
    fake_gemini.push(Reply(text="42"))
    got = await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="t", text="add"))
    assert got.reply.text == "42"
    rounds = generate_requests(fake_gemini)[-2:]
    assert {named(r) for r in rounds} == {named(generate_requests(fake_gemini)[-3])}
    assert all(named(r) for r in rounds)
    assert len(fake_gemini.caches.calls_of("POST")) == 1


async def test_a_cache_used_near_its_expiry_is_extended_and_an_expired_one_replaced(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    await new_session(chatd, "r")
    for number in range(3):
        await turn(chatd, "r", number)
    name = named(generate_requests(fake_gemini)[-1])
    assert name is not None
    clock.advance(TTL * 0.5)
    await turn(chatd, "r", 3)
    assert not fake_gemini.caches.calls_of("PATCH"), "half its TTL left: used as it is"
    clock.advance(TTL * 0.3)
    await turn(chatd, "r", 4)
    (patch,) = fake_gemini.caches.calls_of("PATCH")
    assert (patch.name, patch.body, patch.status) == (name, {"ttl": ttl_text(TTL)}, 200)
    clock.advance(TTL * 0.5)  # past the first expiry, within the extended one
    await turn(chatd, "r", 5)
    assert named(generate_requests(fake_gemini)[-1]) == name
    assert len(fake_gemini.caches.calls_of("POST")) == 1
    clock.advance(TTL * 2)  # no turn for longer than the TTL: gone by expiry
    reply = await turn(chatd, "r", 6)
    assert reply.text == f"echo: {question(6)}"
    creates = fake_gemini.caches.calls_of("POST")
    assert len(creates) == 2 and named(generate_requests(fake_gemini)[-1]) == creates[1].name
    assert not [r for r in fake_gemini.requests if r.rejection], "never sent an expired name"
    server = chatd.running.metrics_server
    assert server is not None
    samples = await scrape(server.port)
    assert value(samples, "chatd_gemini_context_caches_total", outcome="refreshed") == 1
    assert value(samples, "chatd_gemini_context_caches_total", outcome="expired") == 1


async def test_deleting_the_session_deletes_its_cache(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    await new_session(chatd, "d")
    for number in range(3):
        await turn(chatd, "d", number)
    name = named(generate_requests(fake_gemini)[-1])
    assert [c.name for c in fake_gemini.caches.live()] == [name]
    await chatd.stub.DeleteSession(pb.DeleteSessionRequest(session_id="d"))
    deleted = await asyncio.to_thread(fake_gemini.caches.wait_for, "DELETE", 1)
    assert (deleted.name, deleted.status) == (name, 200)
    assert fake_gemini.caches.live() == []


async def test_a_session_that_expires_has_its_cache_deleted_by_the_sweep(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    """The sweeper's pass (here one with a clock two hours on) tells the provider which
    sessions expired; a session without a ttl keeps its cache."""
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    await new_session(chatd, "brief", ttl=duration_pb2.Duration(seconds=3600))
    await new_session(chatd, "lasting")
    for session_id in ("brief", "lasting"):
        for number in range(3):
            await turn(chatd, session_id, number)
    brief, lasting = (c.name for c in fake_gemini.caches.calls_of("POST"))
    running = chatd.running
    later = Sweeper(
        running.store,
        interval=60,
        request_window=3600,
        clock=lambda: time.time() + 7200,
        resources=running.provider,
    )
    swept, _, _ = await later.sweep()
    assert swept == 1
    deleted = await asyncio.to_thread(fake_gemini.caches.wait_for, "DELETE", 1)
    assert deleted.name == brief
    assert [c.name for c in fake_gemini.caches.live()] == [lasting]


async def test_stopping_chatd_deletes_the_caches_it_holds(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    for session_id in ("a", "b"):
        await new_session(chatd, session_id)
        for number in range(3):
            await turn(chatd, session_id, number)
    assert len(fake_gemini.caches.live()) == 2
    await chatd.running.stop(grace=0)
    assert fake_gemini.caches.live() == []
    assert len(fake_gemini.caches.calls_of("DELETE")) == 2


async def test_a_stepped_window_replaces_the_cache_when_it_steps(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    plain = await start_chatd(provider=provider(fake_gemini, clock, trigger=0), tools=TEST_TOOLS)
    policy = session_pb2.ContextPolicy(max_messages=10, low_water_fraction=0.5)
    for server in (chatd, plain):
        await new_session(server, "w", context_policy=policy)
    names = []
    for number in range(14):
        await turn(chatd, "w", number)
        with_cache = generate_requests(fake_gemini)[-1]
        await turn(plain, "w", number)
        without = generate_requests(fake_gemini)[-1]
        assert prompt_json(fake_gemini, with_cache) == prompt_json(fake_gemini, without)
        names.append(named(with_cache))
    used = [n for n in dict.fromkeys(names) if n is not None]
    assert len(used) >= 2, "the window stepped and a new cache was made"
    deletes = await asyncio.to_thread(fake_gemini.caches.wait_for, "DELETE", len(used) - 1)
    assert deletes.status == 200
    assert {c.name for c in fake_gemini.caches.calls_of("DELETE")} == set(used[:-1])
    assert [c.name for c in fake_gemini.caches.live()] == [used[-1]]


async def test_a_new_compaction_summary_replaces_the_cache(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    policy = session_pb2.ContextPolicy(
        compaction=session_pb2.ContextPolicy.Compaction(trigger_messages=10, keep_recent_turns=2)
    )
    await new_session(chatd, "c", context_policy=policy)
    names = []
    for number in range(12):
        reply = await turn(chatd, "c", number)
        assert reply.text == f"echo: {question(number)}"
        names.append(named(generate_requests(fake_gemini)[-1]))
    summarising = [
        r for r in generate_requests(fake_gemini) if r.texts()[-1].startswith(DEFAULT_INSTRUCTIONS)
    ]
    assert summarising and not any(named(r) for r in summarising), "summaries go whole"
    used = [n for n in dict.fromkeys(names) if n is not None]
    assert len(used) >= 2, "a summary changed the prefix: a new cache"
    await asyncio.to_thread(fake_gemini.caches.wait_for, "DELETE", len(used) - 1)
    assert {c.name for c in fake_gemini.caches.calls_of("DELETE")} == set(used[:-1])


async def test_a_refused_create_leaves_every_turn_successful_and_waits_to_try_again(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    fake_gemini.caches.refuse_creates = HttpError(
        429, "Quota exceeded for TotalCachedContentStorageTokensPerModelFreeTier, limit: 0"
    )
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    await new_session(chatd, "f")
    for number in range(5):
        reply = await turn(chatd, "f", number)
        assert reply.text == f"echo: {question(number)}"
    assert [c.status for c in fake_gemini.caches.calls_of("POST")] == [429]
    assert all(named(r) is None for r in generate_requests(fake_gemini))
    assert all(get_field(r.body, "systemInstruction") for r in generate_requests(fake_gemini))
    clock.advance(RETRY_AFTER)
    fake_gemini.caches.refuse_creates = None
    await turn(chatd, "f", 5)
    assert named(generate_requests(fake_gemini)[-1]) is not None, "tried again, and made"
    server = chatd.running.metrics_server
    assert server is not None
    samples = await scrape(server.port)
    assert value(samples, "chatd_gemini_context_caches_total", outcome="failed") == 1
    assert value(samples, "chatd_gemini_context_caches_total", outcome="created") == 1


async def test_a_create_the_api_finds_too_small_is_a_failure_not_a_failed_turn(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock
) -> None:
    fake_gemini.caches.min_tokens = 1_000_000
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    await new_session(chatd, "m")
    for number in range(4):
        await turn(chatd, "m", number)
    (create,) = fake_gemini.caches.calls_of("POST")
    assert create.status == 400


@pytest.mark.parametrize("gone", ["expired", "deleted"])
async def test_a_cache_gemini_no_longer_has_is_forgotten_and_the_turn_sent_whole(
    start_chatd: StartChatd, fake_gemini: FakeGemini, clock: Clock, gone: str
) -> None:
    chatd = await caching_chatd(start_chatd, fake_gemini, clock)
    await new_session(chatd, "g")
    for number in range(3):
        await turn(chatd, "g", number)
    name = named(generate_requests(fake_gemini)[-1])
    assert name is not None
    if gone == "expired":
        fake_gemini.caches.expire(name)  # by Gemini's clock, not chatd's
    else:
        fake_gemini.caches.answer("DELETE", f"/v1/{name}", b"")
    seen = len(fake_gemini.requests)
    reply = await turn(chatd, "g", 3)
    assert reply.text == f"echo: {question(3)}"
    refused, whole = fake_gemini.requests[seen:]
    assert named(refused) == name and refused.rejection is not None
    assert named(whole) is None and get_field(whole.body, "systemInstruction")
    await turn(chatd, "g", 4)
    assert named(generate_requests(fake_gemini)[-1]) not in (None, name), "a new cache"
    server = chatd.running.metrics_server
    assert server is not None
    samples = await scrape(server.port)
    assert value(samples, "chatd_gemini_context_caches_total", outcome="expired") == 1


async def test_the_settings_turn_caching_on_for_the_provider_chatd_builds(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    # CHATD_PROVIDER=auto: gemini, as a key is set.
    chatd = await start_chatd(
        gemini_api_key="test-key",
        gemini_base_url=fake_gemini.base_url,
        default_model=MODEL,
        gemini_context_cache_tokens=5000,
        gemini_context_cache_ttl=120.0,
    )
    await new_session(chatd, "b", tools=[])
    for number in range(5):
        await turn(chatd, "b", number)
    creates = fake_gemini.caches.calls_of("POST")
    assert [c.body["ttl"] for c in creates] == ["120s"]
    assert len(creates[0].body["contents"]) >= 6, "a trigger above the minimum waits longer"
    server = chatd.running.metrics_server
    assert server is not None
    samples = await scrape(server.port)
    assert value(samples, "chatd_gemini_context_caches_total", outcome="created") == 1


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--gemini-context-cache-tokens", "-1"], "CHATD_GEMINI_CONTEXT_CACHE_TOKENS"),
        (["--gemini-context-cache-tokens", "many"], "--gemini-context-cache-tokens"),
        (["--gemini-context-cache-ttl", "30"], "CHATD_GEMINI_CONTEXT_CACHE_TTL"),
        (["--gemini-context-cache-ttl", "inf"], "CHATD_GEMINI_CONTEXT_CACHE_TTL"),
        (["--gemini-context-cache-ttl", "nan"], "CHATD_GEMINI_CONTEXT_CACHE_TTL"),
    ],
)
def test_context_cache_settings_chatd_cannot_use_are_refused_naming_them(
    argv: list[str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        load([*argv, "--database-url", "memory://"], {})


async def test_a_refused_context_cache_setting_exits_2_and_help_shows_both() -> None:
    code, _, err = await run("serve", "--gemini-context-cache-ttl", "5")
    assert code == 2
    assert err.startswith("chatd: CHATD_GEMINI_CONTEXT_CACHE_TTL")
    code, out, _ = await run("serve", "--help")
    flat = " ".join(out.split())
    assert "(default: 0; env CHATD_GEMINI_CONTEXT_CACHE_TOKENS)" in flat
    assert "(default: 3600.0; env CHATD_GEMINI_CONTEXT_CACHE_TTL)" in flat
