"""History length: the cost of a turn on sessions with 10 stored messages against 10,000."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.chatd_client import SEND, Chatd, send_payloads, user_text
from bench.procs import chatd
from bench.report import Check, at_most, info
from bench.scenarios import Job, Timing, compare, job

LONG_SESSIONS = 16  # built once: 10,000 messages each
# Fresh for every load, and many, so each holds few more than 10 messages by its end.
SHORT_SESSIONS = 64
SHORT, LONG = 10, 10_000
MAX_MESSAGES = 20  # context_policy.max_messages on every session
DEFAULT_TEXT = user_text(31)  # what calibration finds for a 50-word reply


async def _build(client: Chatd, prefix: str, count: int, messages: int) -> list[str]:
    ids = await client.create_sessions(prefix, count, MAX_MESSAGES)
    await asyncio.gather(*(client.append_history(sid, messages) for sid in ids))
    return ids


async def _variant(
    label: str, env: dict[str, str], long_ids: list[str] | None, timing: Timing, **kw: Any
) -> tuple[dict[str, Any], list[str]]:
    """Short and long sessions, alternated at each level on one chatd; also returns long ids."""
    say, tmp, text = kw["say"], kw["tmp"], kw["text"]
    server = chatd(f"sqlite:///{tmp / 'history.db'}", tmp / "chatd-history.log", **env)
    await server.start()
    client = Chatd(server.address)
    try:
        if long_ids is None:
            started = time.perf_counter()
            long_ids = await _build(client, "long", LONG_SESSIONS, LONG)
            built = time.perf_counter() - started
            say(f"  built {LONG_SESSIONS} x {LONG:,} messages with AppendMessages in {built:.1f} s")
        loads = 0
        last_short: list[str] = []

        async def short() -> dict[str, Any]:
            nonlocal loads, last_short
            loads += 1
            prefix = f"short-{label.replace(' ', '-')}-{loads}"
            last_short = await _build(client, prefix, SHORT_SESSIONS, SHORT)
            return job(server, SEND, send_payloads(last_short, text), False)

        jobs: dict[str, Job] = {
            "short": short,
            "long": job(server, SEND, send_payloads(long_ids, text), False),
        }
        before = {"short": SHORT, "long": await client.message_count(long_ids[0])}
        levels = await compare(jobs, timing, say)
        after = {
            "short (last load)": await client.message_count(last_short[0]),
            "long": await client.message_count(long_ids[0]),
        }
        say(f"  {label}: messages per session before {before}, after {after}")
    finally:
        await client.close()
        await server.stop()
    result = {"label": label, "messages_before": before, "messages_after": after, "levels": levels}
    return result, long_ids


async def history(
    tmp: Path, text: str, say: Any, timing: Timing
) -> tuple[dict[str, Any], list[Check]]:
    """Cache on (the default) is the target; cache off (c=1 only) shows the store path's cost."""
    say(
        f"history: {SHORT_SESSIONS} fresh sessions of {SHORT} messages per load vs"
        f" {LONG_SESSIONS} of {LONG:,}, max_messages={MAX_MESSAGES}"
    )
    kw = {"say": say, "tmp": tmp, "text": text}
    cached, long_ids = await _variant("cache on", {}, None, timing, **kw)
    off = {"CHATD_CACHE_MAX_BYTES": "0"}
    one = Timing((1,), timing.warmup, timing.duration, timing.rounds)
    uncached, _ = await _variant("cache off", off, long_ids, one, **kw)
    checks = []
    for variant in (cached, uncached):
        scenario = f"history ({variant['label']})"
        for row in variant["levels"]:
            c, short, long = row["concurrency"], row["short"], row["long"]
            pairs = [
                (f"p50 ms c={c}", long["p50_ms"], short["p50_ms"]),
                # The cost of a turn is 1/throughput.
                (f"ms/turn c={c}", 1e3 / long["throughput"], 1e3 / short["throughput"]),
            ]
            for metric, value, reference in pairs:
                if variant is cached:
                    checks.append(at_most(scenario, metric, value, reference, 1.3))
                else:
                    checks.append(info(scenario, metric, value, reference))
    return {"name": "history", "variants": [cached, uncached]}, checks
