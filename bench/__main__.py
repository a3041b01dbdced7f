"""`python -m bench`: every scenario, a table against docs/promises.md's targets, JSON results."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import gemini, history, long_conversation, memory, postgres, procs, report, scenarios
from bench.chatd_client import TARGET_WORDS, Calibration, Chatd
from bench.report import Check
from server import logs

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
SESSIONS = 64  # per throughput scenario, round-robin so no two workers share one


def say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Context:
    tmp: Path
    bare: procs.Server
    timing: scenarios.Timing
    calibration: Calibration | None = None


Result = tuple[dict[str, Any], list[Check]]


async def _chatd(
    ctx: Context, url: str, name: str, **env: str
) -> tuple[procs.Server, list[str], Calibration]:
    """A started chatd with SESSIONS fresh sessions and its calibration (the run's is the
    first chatd's)."""
    server = await procs.chatd(url, ctx.tmp / f"chatd-{name}.log", **env).start()
    client = Chatd(server.address)
    try:
        ids = await client.create_sessions(name, SESSIONS)
        [probe] = await client.create_sessions(f"{name}-probe", 1)
        calibration = await client.calibrate(probe)
        if ctx.calibration is None:
            ctx.calibration = calibration
            say(
                f"calibrated: {calibration.words}-word message -> {TARGET_WORDS}-word reply"
                f" in {calibration.deltas} deltas"
            )
    except BaseException:
        await server.stop()
        raise
    finally:
        await client.close()
    return server, ids, calibration


async def unary(ctx: Context) -> Result:
    server, ids, _ = await _chatd(ctx, f"sqlite:///{ctx.tmp / 'unary.db'}", "unary")
    try:
        assert ctx.calibration is not None
        name = "unary (SQLite FULL)"
        return await scenarios.unary(name, server, ctx.bare, ctx.calibration, ids, ctx.timing, say)
    finally:
        await server.stop()


async def streaming(ctx: Context) -> Result:
    # The scenario is defined as 50 deltas a stream (one word each) against a bare stream
    # of 50 chunks: what it measures is the per-event path.
    url = f"sqlite:///{ctx.tmp / 'stream.db'}"
    server, ids, cal = await _chatd(ctx, url, "stream", CHATD_ECHO_WORDS_PER_CHUNK="1")
    try:
        timing = ctx.timing
        return await scenarios.streaming("streaming", server, ctx.bare, cal, ids, timing, say)
    finally:
        await server.stop()


async def on_postgres(ctx: Context) -> Result:
    reason = await postgres.unreachable()
    if reason is not None:
        say(f"postgres: SKIPPED: {reason}")
        return {"name": "postgres", "skipped": reason}, []
    schema = postgres.fresh_schema()
    try:
        server, ids, _ = await _chatd(ctx, postgres.URL, "pg", CHATD_POSTGRES_SCHEMA=schema)
        try:
            assert ctx.calibration is not None
            name = "unary (PostgreSQL)"
            cal = ctx.calibration
            result, checks = await scenarios.unary(
                name, server, ctx.bare, cal, ids, ctx.timing, say
            )
        finally:
            await server.stop()
    finally:
        await postgres.drop_schema(schema)
    return {**result, "schema": schema, "url": postgres.URL}, checks


async def on_history(ctx: Context) -> Result:
    cal = ctx.calibration
    text = cal.text if cal is not None else history.DEFAULT_TEXT
    # c=1 for the latency of a turn, c=8 for throughput; shorter loads than elsewhere.
    t = ctx.timing
    timing = scenarios.Timing((1, 8), min(t.warmup, 1.0), t.duration * 3 / 4, t.rounds)
    return await history.history(ctx.tmp, text, say, timing)


async def on_memory(ctx: Context) -> Result:
    return await memory.memory(ctx.tmp, say)


async def on_gemini(ctx: Context) -> Result:
    return await gemini.gemini(ctx.tmp, say, ctx.timing)


async def on_long_conversation(ctx: Context) -> Result:
    # chatd runs in this process here: its log lines would bury the report.
    logs.configure("console", "warning")
    return await long_conversation.run(ctx.tmp, say)


SCENARIOS: dict[str, Callable[[Context], Awaitable[Result]]] = {
    "unary": unary,
    "streaming": streaming,
    "postgres": on_postgres,
    "history": on_history,
    "memory": on_memory,
    "gemini": on_gemini,
    "long_conversation": on_long_conversation,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per load")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of chatd and bare")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    return args


async def run(argv: list[str]) -> int:
    args = parse(argv)
    started = time.perf_counter()
    command = shlex.join([sys.executable, "-m", "bench", *argv])
    machine = report.machine()
    say(f"command: {command}")
    say(f"machine: {machine['cpu_count']} CPUs {machine['cpu_model']}, Python {machine['python']}")
    say(
        f"  grpcio {machine['grpcio']}, {machine['event_loop']},"
        f" load average {' '.join(machine['loadavg_at_start'])}"
    )
    say(
        f"  commit {machine['git_commit'][:12]}, changed on top: {machine['git_changed'] or 'none'}"
    )
    levels = tuple(int(n) for n in args.levels.split(","))
    timing = scenarios.Timing(levels, args.warmup, args.duration, args.rounds)
    results: dict[str, Any] = {}
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="chatd-bench-") as tmp:
        bare = await procs.baseline(Path(tmp) / "bare.log").start()
        ctx = Context(Path(tmp), bare, timing)
        try:
            for name in args.only.split(","):
                try:
                    results[name], found = await SCENARIOS[name](ctx)
                except Exception as exc:
                    traceback.print_exc()
                    results[name] = {"name": name, "error": repr(exc)}
                    found = [Check(name, f"error: {exc!r}"[:60], 0, None, 0, "value", "", False)]
                checks += found
        finally:
            await bare.stop()
    elapsed = time.perf_counter() - started
    say("\n" + report.table(checks))
    misses = sum(c.passed is False for c in checks)
    passes = sum(c.passed is True for c in checks)
    say(f"\n{passes} PASS, {misses} MISS; {elapsed:.0f} s in all")
    say(f"waited {procs.QUIET.waited:.0f} s in all for other work on the machine to die down")
    payload = {
        "command": command,
        "machine": machine,
        "timing": asdict(timing),
        "calibration": asdict(ctx.calibration) if ctx.calibration else None,
        "total_seconds": elapsed,
        "quiet_wait_seconds": procs.QUIET.waited,
        "scenarios": results,
    }
    report.write_json(args.output, payload, checks)
    say(f"results: {args.output}")
    return 1 if any("error" in r for r in results.values()) else 0


def main() -> None:
    raise SystemExit(asyncio.run(run(sys.argv[1:])))


if __name__ == "__main__":
    main()
