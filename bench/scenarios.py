"""Unary and streaming scenarios: chatd against the bare server, interleaved level by level."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench import baseline
from bench.chatd_client import SEND, STREAM, Calibration, send_payloads, stream_payloads
from bench.load import encode, run_load
from bench.procs import QUIET, Server
from bench.report import Check, at_least, at_most, info, within


@dataclass(frozen=True)
class Timing:
    """Load shape shared by the throughput scenarios."""

    levels: tuple[int, ...] = (1, 16, 64)
    warmup: float = 1.5
    duration: float = 5.0
    # chatd and bare alternate this many times per level; each keeps its best round, since
    # other work on the machine can only slow a round down.
    rounds: int = 2
    max_calls: int = 200_000


def job(server: Server, method: str, payloads: list[bytes], streaming: bool) -> dict[str, Any]:
    return {
        "address": server.address,
        "server_pid": server.pid,
        "method": method,
        "payloads": encode(payloads),
        "streaming": streaming,
    }


def _line(name: str, concurrency: int, result: dict[str, Any]) -> str:
    first = f"  first {result['first_p50_ms']:5.2f}" if result["first_p50_ms"] else ""
    return (
        f"  {name:5} c={concurrency:<3} {result['throughput']:7.0f} calls/s"
        f"  p50 {result['p50_ms']:6.2f}  p99 {result['p99_ms']:6.2f}{first} ms"
        f"  CPU server {result['server_cpu_share']:.2f} client {result['client_cpu_share']:.2f}"
        f" other {result['other_cpu_share']:.2f}  errors {result['errors'] or 0}"
    )


Job = dict[str, Any] | Callable[[], Awaitable[dict[str, Any]]]


async def compare(
    jobs: Mapping[str, Job],
    timing: Timing,
    say: Any,
    observe: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Alternates the named jobs at each level (a callable makes a fresh job for each load).

    `observe`, if given, is awaited before and after each load; what it returns after is
    kept as the load's "upstream" (the gemini scenario's fake counts its requests so).
    """
    shape = {"warmup": timing.warmup, "duration": timing.duration, "max_calls": timing.max_calls}
    levels = []
    for concurrency in timing.levels:
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
        for _ in range(timing.rounds):
            for name, make in jobs.items():
                job = await make() if callable(make) else make
                busy_before = await QUIET.wait()
                if observe is not None:
                    await observe()
                result = await run_load({**job, **shape, "concurrency": concurrency})
                result["busy_before"] = busy_before
                if observe is not None:
                    result["upstream"] = await observe()
                rounds[name].append(result)
                say(_line(name, concurrency, result))
        row: dict[str, Any] = {"concurrency": concurrency, "rounds": rounds}
        for name, results in rounds.items():
            row[name] = max(results, key=lambda r: r["throughput"])
        levels.append(row)
    return levels


async def unary(
    name: str,
    chatd: Server,
    bare: Server,
    cal: Calibration,
    ids: list[str],
    timing: Timing,
    say: Any,
) -> tuple[dict[str, Any], list[Check]]:
    """SendMessage on the echo provider against the bare unary echo of the same sizes."""
    say(
        f"{name}: SendMessage ({cal.request_bytes} B -> {cal.response_bytes} B),"
        f" {len(ids)} sessions"
    )
    bare_request = baseline.request(cal.request_bytes, cal.response_bytes)
    jobs = {
        "chatd": job(chatd, SEND, send_payloads(ids, cal.text), False),
        "bare": job(bare, baseline.UNARY, [bare_request], False),
    }
    levels = await compare(jobs, timing, say)
    checks = []
    for row in levels:
        c, ours, theirs = row["concurrency"], row["chatd"], row["bare"]
        checks.append(at_least(name, f"RPC/s c={c}", ours["throughput"], theirs["throughput"], 0.5))
        checks.append(at_most(name, f"p99 ms c={c}", ours["p99_ms"], theirs["p99_ms"], 2.0))
    top = levels[-1]
    checks.append(
        info(
            name,
            f"server CPU us/RPC c={top['concurrency']}",
            top["chatd"]["server_cpu_us_per_call"],
            top["bare"]["server_cpu_us_per_call"],
        )
    )
    return {"name": name, "levels": levels}, checks


async def streaming(
    name: str,
    chatd: Server,
    bare: Server,
    cal: Calibration,
    ids: list[str],
    timing: Timing,
    say: Any,
) -> tuple[dict[str, Any], list[Check]]:
    """StreamReply (the calibrated reply's text deltas) against a bare stream of as many
    chunks of the same bytes."""
    chunk = round(cal.stream_bytes / cal.deltas)
    say(
        f"{name}: StreamReply {cal.deltas} deltas ({cal.events} events, {cal.stream_bytes} B)"
        f" vs bare {cal.deltas} x {chunk} B"
    )
    bare_request = baseline.request(cal.request_bytes, chunk, cal.deltas)
    jobs = {
        "chatd": job(chatd, STREAM, stream_payloads(ids, cal.text), True),
        "bare": job(bare, baseline.STREAM, [bare_request], True),
    }
    levels = await compare(jobs, timing, say)
    checks = []
    for row in levels:
        c, ours, theirs = row["concurrency"], row["chatd"], row["bare"]
        ours["chunks_per_s"] = ours["throughput"] * cal.deltas
        theirs["chunks_per_s"] = theirs["throughput"] * cal.deltas
        checks.append(
            at_least(name, f"chunks/s c={c}", ours["chunks_per_s"], theirs["chunks_per_s"], 0.5)
        )
    first = levels[0]
    c = first["concurrency"]
    ours, theirs = first["chatd"], first["bare"]
    checks.append(
        within(name, f"first event p50 ms c={c}", ours["first_p50_ms"], theirs["first_p50_ms"], 1.0)
    )
    checks.append(
        info(name, f"first event p99 ms c={c}", ours["first_p99_ms"], theirs["first_p99_ms"])
    )
    top = levels[-1]
    checks.append(
        info(
            name,
            f"server CPU us/stream c={top['concurrency']}",
            top["chatd"]["server_cpu_us_per_call"],
            top["bare"]["server_cpu_us_per_call"],
        )
    )
    return {"name": name, "levels": levels, "chunk_bytes": chunk}, checks
