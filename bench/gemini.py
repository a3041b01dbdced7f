"""The gemini scenario: chatd's gemini provider against google-genai's own chat, one fake upstream.

Part 1: a fake Gemini in its own process (bench/fake_upstream.py: real HTTP, SSE, 50 chunks a
reply, no delay); chatd started with `--provider gemini` and its base URL pointed at the fake;
google-genai's `client.aio.chats` in a load process (bench/gemini_load.py) against the same
fake. Both do the same streamed turn on a history of N messages (N = 20 and 1,000,
alternating user/model text of ~200 characters), sending N + 1 contents: chatd's sessions
have `context_policy.max_messages = N + 1`, and the SDK side makes a fresh chat on the same
N contents for every turn. The fake counts the contents of every request, so the run checks
that both sent N + 1.

Part 2: a second fake that paces each reply at 20 chunks/s (50 ms between SSE events), a
fresh chatd on it, and 200 concurrent StreamReply calls: the gap between consecutive text
deltas as the client sees it, minus the fake's 50 ms, and chatd's RSS while they run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.chatd_client import STREAM, Chatd, stream_payloads
from bench.load import encode, run_load
from bench.procs import QUIET, ROOT, Server, chatd
from bench.report import Check, at_most, below, equal, info
from bench.scenarios import Job, Timing, compare, job
from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2

MODEL = "gemini-2.5-flash"
HISTORIES = (20, 1_000)
# Concurrent turns. CPU per turn is checked at c=1, where no turn overlaps the edges of the
# measured window by more than one turn; c=4 shows throughput when chatd is busy.
LEVELS = (1, 4)
CHUNKS = 50
PACE = 0.05  # seconds between the paced fake's chunks: 20 chunks/s
PACED_STREAMS = 200
# 200 characters, as each preloaded message and the fake's reply are.
USER_TEXT = (
    "Please summarise the quarterly report for the board: the revenue against plan, the "
    "largest changes by product line, and the three main risks for the next two quarters, "
    "each in a sentence or two."
)
# Turns measured at least per load (a 1,000-message turn takes most of a second), within
# 3x the duration.
MIN_TURNS = 15
SESSIONS = 8  # fresh chatd sessions per load, round-robin over the workers
_FILL = (
    "the figures for the period, the plan, the customers who renew soon, the supplier "
    "contract, hiring for the platform team and what the release depends on "
)


def history_texts(count: int) -> list[tuple[str, str]]:
    """`count` alternating (role, text) messages of about 200 characters, user first."""
    out = []
    for i in range(count):
        role = "user" if i % 2 == 0 else "model"
        head = f"Question {i // 2}: what about " if role == "user" else f"Answer {i // 2}: "
        text = (head + _FILL * 2)[:200]
        out.append((role, text.rstrip()))
    return out


class FakeUpstream:
    """`python -m bench.fake_upstream` as a child process: its address, pid and counts."""

    def __init__(self, chunk_delay: float, log: Path) -> None:
        self.chunk_delay = chunk_delay
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.pid = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeUpstream:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.fake_upstream",
                "--chunks",
                str(CHUNKS),
                "--chunk-delay",
                str(self.chunk_delay),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        try:
            hello = json.loads(await self._line())
        except BaseException:
            await self.stop()
            raise
        self.port, self.pid = int(hello["port"]), int(hello["pid"])
        return self

    async def _line(self) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"fake upstream exited ({self.proc.returncode}); see {self.log}")
        return line

    async def stats(self) -> dict[str, Any]:
        """What the fake received since the previous call."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        result: dict[str, Any] = json.loads(await self._line())
        return result

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the fake stops when its stdin closes
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def gemini_chatd(tmp: Path, name: str, fake: FakeUpstream) -> Server:
    return chatd(
        f"sqlite:///{tmp / f'{name}.db'}",
        tmp / f"chatd-{name}.log",
        provider="gemini",
        GEMINI_API_KEY="x",
        CHATD_GEMINI_BASE_URL=fake.base_url,
        GOOGLE_GEMINI_BASE_URL=fake.base_url,
    )


async def build_sessions(client: Chatd, prefix: str, count: int, history: int) -> list[str]:
    """`count` sessions on MODEL with `history` messages and max_messages = history + 1."""
    policy = session_pb2.ContextPolicy(max_messages=history + 1)
    ids = [f"{prefix}-{i}" for i in range(count)]
    roles = {"user": content_pb2.ROLE_USER, "model": content_pb2.ROLE_MODEL}
    messages = [
        content_pb2.Message(role=roles[role], parts=[content_pb2.Part(text=text)])
        for role, text in history_texts(history)
    ]

    async def one(sid: str) -> None:
        session = session_pb2.Session(model=MODEL, context_policy=policy)
        await client.stub.CreateSession(
            pb.CreateSessionRequest(session_id=sid, session=session), timeout=30
        )
        for start in range(0, len(messages), 500):
            request = pb.AppendMessagesRequest(
                session_id=sid, messages=messages[start : start + 500]
            )
            await client.stub.AppendMessages(request, timeout=60)

    for start in range(0, count, 16):
        await asyncio.gather(*(one(sid) for sid in ids[start : start + 16]))
    return ids


def _line(name: str, concurrency: int, result: dict[str, Any]) -> str:
    upstream = result.get("upstream", {})
    return (
        f"  {name:5} c={concurrency:<2} {result['throughput']:7.1f} turns/s"
        f"  p50 {result['p50_ms']:7.1f}  p99 {result['p99_ms']:7.1f} ms"
        f"  CPU/turn {result['server_cpu_us_per_call'] / 1e3:7.2f} ms"
        f"  other CPU {result['other_cpu_share']:.2f}  errors {result['errors'] or 0}"
        f"  contents sent {upstream.get('contents')}"
    )


def _contents(result: dict[str, Any]) -> int:
    """The one number of contents every generate request of a load had (-1 if several)."""
    counts = result.get("upstream", {}).get("contents", {})
    return int(next(iter(counts))) if len(counts) == 1 else -1


async def _history(
    server: Server, client: Chatd, fake: FakeUpstream, history: int, timing: Timing, say: Any
) -> list[dict[str, Any]]:
    loads = 0

    async def chatd_job() -> dict[str, Any]:
        # Fresh sessions for each load, so the stored history stays near N as well.
        nonlocal loads
        loads += 1
        ids = await build_sessions(client, f"h{history}-{loads}", SESSIONS, history)
        return {
            **job(server, STREAM, stream_payloads(ids, USER_TEXT), True),
            "min_calls": MIN_TURNS,
        }

    sdk_job = {
        "generator": "bench.gemini_load",
        "kind": "sdk",
        "base_url": fake.base_url,
        "model": MODEL,
        "history": history_texts(history),
        "text": USER_TEXT,
        "min_calls": MIN_TURNS,
    }
    jobs: dict[str, Job] = {"chatd": chatd_job, "sdk": sdk_job}
    levels: list[dict[str, Any]] = []
    for row in await compare(jobs, timing, lambda _: None, fake.stats):
        for name in jobs:
            for result in row["rounds"][name]:
                say(_line(name, row["concurrency"], result))
        levels.append(row)
    return levels


async def paced(
    tmp: Path, say: Any, during: Callable[[Server], Awaitable[None]] | None = None
) -> dict[str, Any]:
    """200 concurrent StreamReply calls while the fake paces every reply at 20 chunks/s.

    `during(server)`, if given, runs beside the 200 calls (bench.paced's probes); its
    server runs `python -m bench.chatd_probe` instead of `python -m server`."""
    fake = await FakeUpstream(PACE, tmp / "fake-paced.log").start()
    try:
        server = gemini_chatd(tmp, "gemini-paced", fake)
        if during is not None:
            server.args[server.args.index("server")] = "bench.chatd_probe"
        await server.start()
        client = Chatd(server.address)
        try:
            ids = await build_sessions(client, "paced", PACED_STREAMS + 4, HISTORIES[0])
            base = {"server_pid": server.pid, "address": server.address}
            base |= {"generator": "bench.gemini_load", "kind": "paced", "warmup": 0.0}
            base["duration"] = CHUNKS * PACE
            # Four streams first, so chatd's code paths and upstream connections are warm.
            warm = {**base, "payloads": encode(stream_payloads(ids[:4], USER_TEXT))}
            await run_load(warm)
            busy_before = await QUIET.wait()
            await fake.stats()
            load = {**base, "payloads": encode(stream_payloads(ids[4:], USER_TEXT))}
            if during is None:
                result = await run_load(load)
            else:
                result, _ = await asyncio.gather(run_load(load), during(server))
            result["upstream"] = await fake.stats()
            result["busy_before"] = busy_before
        finally:
            await client.close()
            await server.stop()
    finally:
        await fake.stop()
    per_stream = (result["rss_peak"] - result["rss_before"]) / PACED_STREAMS
    result["rss_bytes_per_stream"] = per_stream
    result["added_gap_p50_ms"] = result["gap_p50_ms"] - PACE * 1e3
    result["added_gap_p99_ms"] = result["gap_p99_ms"] - PACE * 1e3
    result["added_steady_gap_p99_ms"] = result["steady_gap_p99_ms"] - PACE * 1e3
    say(
        f"  paced: {PACED_STREAMS} streams in {result['seconds']:.2f} s, {result['gaps']} gaps:"
        f" p50 {result['gap_p50_ms']:.1f} p99 {result['gap_p99_ms']:.1f}"
        f" max {result['gap_max_ms']:.1f} ms (fake's pace {PACE * 1e3:.0f} ms);"
        f" once all started p99 {result['steady_gap_p99_ms']:.1f} ms;"
        f" chatd CPU {result['server_cpu_share']:.2f} cores;"
        f" first delta p50 {result['first_delta_p50_ms']:.0f} p99"
        f" {result['first_delta_p99_ms']:.0f} ms; RSS {result['rss_before'] / 2**20:.1f} ->"
        f" {result['rss_peak'] / 2**20:.1f} MiB ({per_stream / 1024:.1f} KB per stream);"
        f" deltas per stream {result['deltas_per_stream']}; errors {result['errors'] or 0};"
        f" fake: most streams at once {result['upstream']['max_streams']},"
        f" its loop lag p99 {result['upstream']['loop_lag_ms']['p99']:.1f} ms"
    )
    return result


async def gemini(tmp: Path, say: Any, timing: Timing) -> tuple[dict[str, Any], list[Check]]:
    say(
        f"gemini: chatd --provider gemini vs google-genai client.aio.chats, one fake upstream"
        f" process ({CHUNKS} chunks a reply, no delay), histories {HISTORIES}, c={LEVELS}"
    )
    t = Timing(LEVELS, timing.warmup, timing.duration, timing.rounds)
    fake = await FakeUpstream(0.0, tmp / "fake.log").start()
    histories: dict[int, list[dict[str, Any]]] = {}
    try:
        server = await gemini_chatd(tmp, "gemini", fake).start()
        client = Chatd(server.address)
        try:
            for history in HISTORIES:
                say(f" history {history:,} messages (N + 1 = {history + 1} contents per request)")
                started = time.perf_counter()
                histories[history] = await _history(server, client, fake, history, t, say)
                say(f"  ({time.perf_counter() - started:.0f} s)")
        finally:
            await client.close()
            await server.stop()
    finally:
        await fake.stop()
    say(f" paced: {PACED_STREAMS} concurrent StreamReply, fake at {1 / PACE:.0f} chunks/s")
    paced_result = await paced(tmp, say)
    return _results(histories, paced_result)


def _results(
    histories: dict[int, list[dict[str, Any]]], paced_result: dict[str, Any]
) -> tuple[dict[str, Any], list[Check]]:
    checks: list[Check] = []
    bounds = {20: 0.1, 1_000: 0.02}
    for history, levels in histories.items():
        scenario = f"gemini {history:,} msgs"
        for row in levels:
            c, ours, theirs = row["concurrency"], row["chatd"], row["sdk"]
            checks.append(
                info(scenario, f"turns/s c={c}", ours["throughput"], theirs["throughput"])
            )
            checks.append(info(scenario, f"p50 ms c={c}", ours["p50_ms"], theirs["p50_ms"]))
            checks.append(info(scenario, f"p99 ms c={c}", ours["p99_ms"], theirs["p99_ms"]))
        for row in levels:
            c, ours, theirs = row["concurrency"], row["chatd"], row["sdk"]
            metric = f"server CPU us/turn c={c}"
            cpu = ours["server_cpu_us_per_call"], theirs["server_cpu_us_per_call"]
            if row is levels[0]:
                checks.append(at_most(scenario, metric, *cpu, bounds[history]))
            else:
                checks.append(info(scenario, metric, *cpu))
        # The SDK side's fresh chat per turn (part of its CPU above): small beside the turn.
        first = levels[0]
        created = first["sdk"]["create_cpu_us_per_call"]
        checks.append(
            info(scenario, f"sdk chats.create CPU us/turn c={first['concurrency']}", created)
        )
        checks.append(
            info(
                scenario,
                f"fake CPU us/request c={c}",
                ours["upstream"]["cpu_us_per_request"],
                theirs["upstream"]["cpu_us_per_request"],
            )
        )
        checks.append(
            info(
                scenario,
                f"request bytes (mean) c={c}",
                ours["upstream"]["body_bytes_mean"],
                theirs["upstream"]["body_bytes_mean"],
            )
        )
        for name in ("chatd", "sdk"):
            # Every load of this history, every round: one number of contents, or -1.
            seen = {_contents(r) for row in levels for r in row["rounds"][name]}
            sent = seen.pop() if len(seen) == 1 else -1
            checks.append(equal(scenario, f"contents sent per request ({name})", sent, history + 1))
    short, long = histories[HISTORIES[0]], histories[HISTORIES[-1]]
    scenario = "gemini chatd"
    label = f"{HISTORIES[-1]:,} vs {HISTORIES[0]} msgs"
    c = short[0]["concurrency"]
    checks.append(
        at_most(
            scenario,
            f"{label}: CPU us/turn c={c}",
            long[0]["chatd"]["server_cpu_us_per_call"],
            short[0]["chatd"]["server_cpu_us_per_call"],
            1.3,
        )
    )
    checks.append(
        at_most(
            scenario,
            f"{label}: p50 ms c={c}",
            long[0]["chatd"]["p50_ms"],
            short[0]["chatd"]["p50_ms"],
            1.3,
        )
    )
    scenario = f"gemini paced x{PACED_STREAMS}"
    p = paced_result
    checks.append(info(scenario, "added gap p50 ms", p["added_gap_p50_ms"]))
    checks.append(below(scenario, "added gap p99 ms", p["added_gap_p99_ms"], 20))
    # How late the fake's own 50 ms sleeps woke up meanwhile: pacing error that is not
    # chatd's (other work on the machine shows here first).
    lag = p["upstream"]["loop_lag_ms"]["p99"]
    checks.append(info(scenario, "fake's own loop lag p99 ms", lag))
    checks.append(info(scenario, "first delta p99 ms", p["first_delta_p99_ms"]))
    # The gaps after every stream's first delta: no turn starting any more.
    checks.append(info(scenario, "added gap p99 ms once all started", p["added_steady_gap_p99_ms"]))
    checks.append(info(scenario, "chatd CPU (cores) while paced", p["server_cpu_share"]))
    checks.append(below(scenario, "RSS KB per stream", p["rss_bytes_per_stream"] / 1024, 64))
    # chatd may not have all 200 upstream at once (it starts them as fast as its CPU lets
    # it); the same RSS growth divided by the most the fake saw at once.
    upstream = max(p["upstream"]["max_streams"], 1)
    growth = (p["rss_peak"] - p["rss_before"]) / upstream / 1024
    checks.append(info(scenario, f"RSS KB per upstream stream (max {upstream} at once)", growth))
    result = {
        "name": "gemini",
        "model": MODEL,
        "chunks": CHUNKS,
        "histories": {str(k): v for k, v in histories.items()},
        "paced": paced_result,
    }
    return result, checks
