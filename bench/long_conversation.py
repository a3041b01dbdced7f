"""The long_conversation scenario: how much of what chatd sends Gemini is billed as cached.

One long conversation per context policy, each in a session of its own, through chatd's
gemini provider (google-genai over real HTTP) to the fake Gemini of the test suite
(tests/fake_gemini/) with its implicit cache on: every answer's
``usageMetadata.cachedContentTokenCount`` is the fake's count of the longest prefix of
the request (system instruction, tools, contents) it has seen in an earlier request, and
0 below the minimum a prefix must have to be cached (2,048 tokens, as Gemini 2.5's
implicit caching: https://ai.google.dev/gemini-api/docs/caching). Every turn's user
message is about 800 characters and the fake echoes it, so a turn adds about 400 of the
fake's tokens.

Per policy it reports the prompt tokens sent over the run (as the fake counted them, from
each reply's usage), the share of them billed as cached, and the latency of a turn as the
caller sees it (SendMessage, p50 and p95). The target (issue 15): the stepped window has
at least 70% of its prompt tokens cached over the run, with no more tokens sent than the
sliding window (whose share is reported beside it).

Policies are entries of POLICIES: a name and the session's context_policy. The third,
compaction, summarises all but the newest KEEP_RECENT_TURNS turns once what would be sent
reaches `max_messages` messages; the fake answers a summarising request with a summary of
SUMMARY_CHARS characters. What summarising cost (its prompt and cached tokens, from the
summary messages' usage) is counted in that policy's figures, and reported apart too.

The "+explicit" policies are stepped and compaction again, through a second chatd whose
provider caches each session's stable prefix explicitly (CHATD_GEMINI_CONTEXT_CACHE_TOKENS
at the model's minimum, 2,048): the fake's cachedContents (tests/fake_gemini/caches.py)
bills a request naming a cache for at least the cache's tokens, more when its implicit
cache saw a longer prefix. The caches created are reported (each is billed as input once,
and for storage for its TTL, which the fake does not count).

    .venv/bin/python -m bench.long_conversation [--turns 200] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.report import Check, at_most, info, table
from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, session_pb2
from server import app, logs
from server.config import Settings
from server.providers.gemini import GeminiProvider, GeminiSettings
from server.providers.gemini.context_cache import CacheSettings
from server.sessions.compaction import DEFAULT_INSTRUCTIONS
from tests.fake_gemini import FakeGemini, RecordedRequest, Reply, Script, echo_default

SCENARIO = "long_conversation"
MODEL = "gemini-2.5-flash"
TURNS = 200
MAX_MESSAGES = 40
LOW_WATER_FRACTION = 0.5
KEEP_RECENT_TURNS = 5
SUMMARY_CHARS = 2_000
CACHED_SHARE_TARGET = 0.70
# The docs' minimum for Gemini 2.5 Flash and Pro (ImplicitCache's default).
MIN_CACHE_TOKENS = 2048
SYSTEM_INSTRUCTION = (
    "You are the assistant of a small engineering team. Answer in plain English, in a few "
    "sentences, and say when you are unsure."
)
_TOPICS = (
    "the release plan for the storage service",
    "the on-call rota for the coming quarter",
    "the migration of the billing jobs to the new scheduler",
    "the hiring plan for the platform team",
    "the latency regression in the search backend",
)


def user_text(turn: int) -> str:
    """Turn `turn`'s message: about 800 characters, different on every turn."""
    topic = _TOPICS[turn % len(_TOPICS)]
    text = f"Turn {turn}. Tell me more about {topic}. "
    filler = (
        f"What changed since turn {max(turn - 1, 0)}, who owns the next step, which risks "
        "remain open, what the customers were told, and what we should measure next week. "
    )
    while len(text) < 800:
        text += filler
    return text[:800]


@dataclass(frozen=True)
class Policy:
    """One way to keep a long conversation's context small: a session's settings."""

    name: str
    context_policy: Callable[[int], session_pb2.ContextPolicy]  # from max_messages
    # Through the chatd whose provider caches prefixes explicitly.
    explicit_cache: bool = False


def _stepped(n: int) -> session_pb2.ContextPolicy:
    return session_pb2.ContextPolicy(max_messages=n, low_water_fraction=LOW_WATER_FRACTION)


def _compaction(n: int) -> session_pb2.ContextPolicy:
    return session_pb2.ContextPolicy(
        compaction=session_pb2.ContextPolicy.Compaction(
            trigger_messages=n, keep_recent_turns=KEEP_RECENT_TURNS
        )
    )


POLICIES: tuple[Policy, ...] = (
    Policy("sliding", lambda n: session_pb2.ContextPolicy(max_messages=n)),
    Policy("stepped", _stepped),
    Policy("compaction", _compaction),
    Policy("stepped+explicit", _stepped, explicit_cache=True),
    Policy("compaction+explicit", _compaction, explicit_cache=True),
)
# The policies held to the target: at least CACHED_SHARE_TARGET cached, and no more prompt
# tokens sent than the sliding window.
TARGETED = ("stepped", "compaction", "stepped+explicit", "compaction+explicit")


def fake_answer(request: RecordedRequest) -> Script:
    """The fake's echo, but a summary of SUMMARY_CHARS characters when asked for one."""
    texts = request.texts()
    if (
        request.method == "countTokens"
        or not texts
        or not texts[-1].startswith(DEFAULT_INSTRUCTIONS)
    ):
        return echo_default(request)
    digest = hashlib.sha256(texts[-1].encode()).hexdigest()
    line = f"Summary {digest}: the team discussed plans, owners, risks and measures. "
    return Reply(text=(line * (SUMMARY_CHARS // len(line) + 1))[:SUMMARY_CHARS])


@dataclass
class Run:
    """What one policy's conversation cost."""

    policy: str
    turns: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    max_contents: int = 0
    summaries: int = 0
    summary_prompt_tokens: int = 0
    caches_created: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def cached_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "policy": self.policy,
            "turns": self.turns,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "cached_share": round(self.cached_share, 4),
            "max_contents_sent": self.max_contents,
            "summaries": self.summaries,
            "summary_prompt_tokens": self.summary_prompt_tokens,
            "caches_created": self.caches_created,
            "turn_ms_p50": round(statistics.median(lat), 2) if lat else 0.0,
            "turn_ms_p95": round(lat[int(0.95 * (len(lat) - 1))], 2) if lat else 0.0,
        }


async def run(
    tmp: Path,
    say: Callable[[str], None],
    *,
    turns: int = TURNS,
    max_messages: int = MAX_MESSAGES,
    min_cache_tokens: int = MIN_CACHE_TOKENS,
    policies: tuple[Policy, ...] = POLICIES,
) -> tuple[dict[str, Any], list[Check]]:
    """Runs every policy's conversation; the results and the checks against the target."""
    runs: list[Run] = []
    with FakeGemini(implicit_caching=True) as fake:
        assert fake.implicit_cache is not None
        fake.implicit_cache.min_tokens = min_cache_tokens
        fake.set_default(fake_answer)
        servers = []
        try:
            for explicit in (False, True):
                servers.append(await _start(tmp, fake, explicit))
            for policy in policies:
                # Each policy on a cold cache: the conversations are the same, so one
                # would otherwise hit the prefixes another sent.
                fake.implicit_cache.clear()
                stub = chat_service_pb2_grpc.ChatServiceStub(servers[policy.explicit_cache][1])
                runs.append(await _conversation(stub, fake, policy, turns, max_messages))
                say(f"{SCENARIO}: {json.dumps(runs[-1].summary())}")
        finally:
            for running, channel in servers:
                await channel.close()
                await running.stop(grace=0)
    result = {
        "name": SCENARIO,
        "turns": turns,
        "max_messages": max_messages,
        "low_water_fraction": LOW_WATER_FRACTION,
        "keep_recent_turns": KEEP_RECENT_TURNS,
        "summary_chars": SUMMARY_CHARS,
        "min_cache_tokens": min_cache_tokens,
        "runs": [r.summary() for r in runs],
    }
    return result, checks(runs)


async def _start(
    tmp: Path, fake: FakeGemini, explicit: bool
) -> tuple[app.RunningServer, grpc.aio.Channel]:
    """A chatd (SQLite in `tmp`) on the fake; with `explicit`, its provider caches each
    session's stable prefix explicitly from the model's minimum on."""
    provider = GeminiProvider(
        GeminiSettings(
            api_key="bench-key",
            base_url=fake.base_url,
            timeout=30.0,
            context_cache=CacheSettings(trigger_tokens=1 if explicit else 0),
        )
    )
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{tmp / f'long_conversation-{int(explicit)}.db'}",
        metrics_listen="",
        grace_period=1.0,
        default_model=MODEL,
        rate_limit=0,
    )
    running = await app.start(settings, provider=provider)
    return running, grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")


async def _conversation(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    fake: FakeGemini,
    policy: Policy,
    turns: int,
    max_messages: int,
) -> Run:
    session_id = f"long-{policy.name.replace('+', '-')}"
    await stub.CreateSession(
        pb.CreateSessionRequest(
            session_id=session_id,
            session=session_pb2.Session(
                system_instruction=SYSTEM_INSTRUCTION,
                context_policy=policy.context_policy(max_messages),
            ),
        )
    )
    result = Run(policy.name, turns)
    seen = len(fake.requests)
    creates = len(fake.caches.calls_of("POST"))
    for turn in range(turns):
        started = time.perf_counter()
        got = await stub.SendMessage(
            pb.SendMessageRequest(session_id=session_id, text=user_text(turn))
        )
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
        result.prompt_tokens += got.reply.usage.prompt_token_count
        result.cached_tokens += got.reply.usage.cached_content_token_count
    requests = fake.requests[seen:]
    # Contents the model was given (a named cache's first).
    result.max_contents = max((len(fake.caches.prompt(r)[1]) for r in requests), default=0)
    made = fake.caches.calls_of("POST")[creates:]
    result.caches_created = sum(1 for c in made if c.status == 200)
    # Summarising is paid for too: its usage is on the summary messages.
    page = ""
    while True:
        listed = await stub.ListMessages(
            pb.ListMessagesRequest(session_id=session_id, page_size=1000, page_token=page)
        )
        for message in listed.messages:
            if message.HasField("summary"):
                result.summaries += 1
                result.summary_prompt_tokens += message.usage.prompt_token_count
                result.prompt_tokens += message.usage.prompt_token_count
                result.cached_tokens += message.usage.cached_content_token_count
        page = listed.next_page_token
        if not page:
            break
    session = (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session
    # The session's sums are what chatd reports (summaries included); they must match the
    # replies' and the summaries'.
    if (
        session.usage.prompt_token_count != result.prompt_tokens
        or session.usage.cached_content_token_count != result.cached_tokens
    ):
        raise AssertionError(
            f"{policy.name}: session usage {session.usage} differs from the sums of the "
            f"replies and summaries ({result.prompt_tokens} prompt, {result.cached_tokens} "
            "cached)"
        )
    return result


def checks(runs: list[Run]) -> list[Check]:
    """Per policy: tokens sent, cached share, turn latency; the target for TARGETED."""
    found: list[Check] = []
    by_name = {r.policy: r for r in runs}
    for r in runs:
        s = r.summary()
        found += [
            info(SCENARIO, f"{r.policy}: prompt tokens sent", r.prompt_tokens),
            info(SCENARIO, f"{r.policy}: cached share", r.cached_share),
            info(SCENARIO, f"{r.policy}: turn p50 (ms)", s["turn_ms_p50"]),
            info(SCENARIO, f"{r.policy}: turn p95 (ms)", s["turn_ms_p95"]),
        ]
        if r.caches_created:
            found.append(info(SCENARIO, f"{r.policy}: caches created", r.caches_created))
    sliding = by_name.get("sliding")
    for name in TARGETED:
        run = by_name.get(name)
        if sliding is None or run is None:
            continue
        share = run.cached_share
        found.append(
            Check(
                SCENARIO,
                f"{name}: cached share of prompt tokens",
                share,
                sliding.cached_share,
                share,
                "value",
                f">= {CACHED_SHARE_TARGET:.0%}",
                share >= CACHED_SHARE_TARGET,
            )
        )
        found.append(
            at_most(
                SCENARIO,
                f"{name}: prompt tokens sent vs sliding",
                run.prompt_tokens,
                sliding.prompt_tokens,
                1.0,
            )
        )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.long_conversation", description=__doc__)
    parser.add_argument("--turns", type=int, default=TURNS)
    parser.add_argument("--max-messages", type=int, default=MAX_MESSAGES)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logs.configure("console", "warning")  # chatd runs in this process: no line per RPC
    with tempfile.TemporaryDirectory(prefix="chatd-bench-") as tmp:
        result, found = asyncio.run(
            run(Path(tmp), print, turns=args.turns, max_messages=args.max_messages)
        )
    print(table(found))
    if args.output is not None:
        args.output.write_text(
            json.dumps({**result, "checks": [asdict(c) for c in found]}, indent=2) + "\n"
        )
    return 0 if all(c.passed is not False for c in found) else 1


if __name__ == "__main__":
    sys.exit(main())
