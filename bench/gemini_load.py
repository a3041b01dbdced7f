"""Load processes of the gemini scenario: google-genai's own chat, and paced chatd streams.

`run_load({"generator": "bench.gemini_load", "kind": ..., ...})` runs one in a fresh
`python -m bench.gemini_load` process (job JSON on stdin, results JSON on stdout).

- kind "sdk": `concurrency` workers, each turn a fresh `client.aio.chats.create(history=...)`
  on the same N contents and one `send_message_stream(text)` read to its end, against the
  fake upstream; for `warmup` then `duration` seconds (longer, up to 3x, until `min_calls`
  turns were measured). A fresh chat per turn keeps every request at N + 1 contents: the
  SDK's chat adds one history entry per streamed chunk, so a chat kept across turns would
  send 51 more contents every turn. The SDK side's CPU is this process's own CPU (the
  chat's work plus the loop's); it is reported under the same keys as bench.load's
  server CPU so the two sides read alike.
- kind "paced": every payload (a StreamReplyRequest) sent at once to chatd; records the
  gaps between consecutive text deltas of each stream, and chatd's RSS every 20 ms.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx2
from google import genai
from google.genai import types

from bench.load import CALL_TIMEOUT, percentile
from bench.procs import HOST, cpu_seconds, machine_busy_seconds, rss_bytes, run
from chatd.v1 import chat_service_pb2 as pb

STREAM = "/chatd.v1.ChatService/StreamReply"


@dataclass
class _State:
    measuring: bool = False
    stop: bool = False
    latencies: list[float] = field(default_factory=list)
    firsts: list[float] = field(default_factory=list)
    chunks: int = 0
    create_cpu: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    enough: asyncio.Event = field(default_factory=asyncio.Event)


def _client(base_url: str) -> genai.Client:
    if not base_url.startswith(f"http://{HOST}:"):
        raise ValueError("the load generator only targets 127.0.0.1")
    # The same pinned transport chatd's gemini provider uses (the SDK would switch to aiohttp
    # when it is importable), with no pool limit below the load's concurrency.
    http = httpx2.AsyncClient(timeout=CALL_TIMEOUT)
    options = types.HttpOptions(base_url=base_url, httpx_async_client=http)
    return genai.Client(api_key="x", http_options=options)


async def _sdk_worker(
    client: genai.Client, job: dict[str, Any], history: list[types.Content], state: _State
) -> None:
    while not state.stop:
        started = time.perf_counter()
        first = 0.0
        chunks = 0
        try:
            cpu = time.process_time()
            chat = client.aio.chats.create(model=job["model"], history=list(history))
            create_cpu = time.process_time() - cpu
            async with asyncio.timeout(CALL_TIMEOUT):
                async for _ in await chat.send_message_stream(job["text"]):
                    if not chunks:
                        first = time.perf_counter() - started
                    chunks += 1
        except Exception as exc:  # the SDK's APIError, or the transport's own errors
            state.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.01)
            continue
        if state.measuring and not state.stop:
            state.latencies.append(time.perf_counter() - started)
            state.firsts.append(first)
            state.chunks += chunks
            state.create_cpu += create_cpu
            if len(state.latencies) >= job.get("min_calls", 0):
                state.enough.set()


async def _sdk(job: dict[str, Any]) -> dict[str, Any]:
    client = _client(job["base_url"])
    history = [
        types.Content(role=role, parts=[types.Part(text=text)]) for role, text in job["history"]
    ]
    state = _State()
    workers = [
        asyncio.create_task(_sdk_worker(client, job, history, state))
        for _ in range(job["concurrency"])
    ]
    await asyncio.sleep(job["warmup"])
    cpu, busy = time.process_time(), machine_busy_seconds()
    started = time.perf_counter()
    state.measuring = True
    await asyncio.sleep(job["duration"])
    # Go on (up to 3x the duration) until min_calls turns were measured.
    if len(state.latencies) < job.get("min_calls", 0):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.enough.wait(), 2 * job["duration"])
    elapsed = time.perf_counter() - started
    state.stop = True
    cpu = time.process_time() - cpu
    busy = machine_busy_seconds() - busy
    _, late = await asyncio.wait(workers, timeout=CALL_TIMEOUT)
    for task in late:
        task.cancel()
    await client.aio.aclose()
    latencies, firsts = sorted(state.latencies), sorted(state.firsts)
    calls = len(latencies)
    per_call = cpu / max(calls, 1) * 1e6
    return {
        "calls": calls,
        "seconds": elapsed,
        "throughput": calls / elapsed,
        "messages": state.chunks,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "mean_ms": sum(latencies) / max(calls, 1) * 1e3,
        "first_p50_ms": percentile(firsts, 0.50) * 1e3,
        "first_p99_ms": percentile(firsts, 0.99) * 1e3,
        "errors": dict(state.errors),
        # The chat runs in this process: its CPU is the "server" side of the comparison.
        "server_cpu_us_per_call": per_call,
        "client_cpu_us_per_call": per_call,
        "create_cpu_us_per_call": state.create_cpu / max(calls, 1) * 1e6,
        "server_cpu_share": cpu / elapsed,
        "client_cpu_share": cpu / elapsed,
        "other_cpu_share": max(0.0, busy - cpu) / elapsed,
    }


async def _paced_stream(
    call: Any,
    payload: bytes,
    started: float,
    gaps: list[tuple[float, float]],
    firsts: list[float],
) -> int:
    last = 0.0
    deltas = 0
    async for event in call(payload, timeout=CALL_TIMEOUT):
        if event.WhichOneof("event") != "text_delta":
            continue
        now = time.perf_counter()
        if deltas:
            gaps.append((now - last, now - started))
        else:
            firsts.append(now - started)
        last = now
        deltas += 1
    return deltas


async def _sample_rss(pid: int, samples: list[int], done: asyncio.Event) -> None:
    while not done.is_set():
        with contextlib.suppress(OSError):
            samples.append(rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.02)


async def _paced(job: dict[str, Any]) -> dict[str, Any]:
    if not job["address"].startswith(HOST + ":"):
        raise ValueError("the load generator only targets 127.0.0.1")
    payloads = [base64.b64decode(p) for p in job["payloads"]]
    pid = job["server_pid"]
    timed: list[tuple[float, float]] = []  # (gap, when it ended), seconds from the start
    firsts: list[float] = []
    errors: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(job["address"]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call: grpc.aio.UnaryStreamMultiCallable[bytes, pb.StreamReplyResponse] = (
            channel.unary_stream(STREAM, response_deserializer=pb.StreamReplyResponse.FromString)
        )
        rss_before = rss_bytes(pid)
        cpu_before = cpu_seconds(pid)
        samples: list[int] = []
        done = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(pid, samples, done))
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_paced_stream(call, p, started, timed, firsts) for p in payloads),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        done.set()
        await sampler
    deltas = Counter[int]()
    for result in results:
        if isinstance(result, BaseException):
            name = result.code().name if isinstance(result, grpc.aio.AioRpcError) else repr(result)
            errors[name] += 1
        else:
            deltas[result] += 1
    gaps = sorted(gap for gap, _ in timed)
    # Once every stream has had its first delta, no turn is starting any more: the gaps
    # after that are the steady state of 200 streams in flight.
    all_started = max(firsts, default=0.0)
    steady = sorted(gap for gap, at in timed if at - gap >= all_started)
    firsts.sort()
    peak = max(samples, default=rss_before)
    return {
        "streams": len(payloads),
        "seconds": elapsed,
        "deltas_per_stream": {str(k): v for k, v in deltas.items()},
        "errors": dict(errors),
        "gaps": len(gaps),
        "gap_p50_ms": percentile(gaps, 0.50) * 1e3,
        "gap_p99_ms": percentile(gaps, 0.99) * 1e3,
        "gap_max_ms": (gaps[-1] if gaps else 0.0) * 1e3,
        "steady_gaps": len(steady),
        "steady_gap_p99_ms": percentile(steady, 0.99) * 1e3,
        "server_cpu_share": cpu / elapsed,
        "first_delta_p50_ms": percentile(firsts, 0.50) * 1e3,
        "first_delta_p99_ms": percentile(firsts, 0.99) * 1e3,
        "rss_before": rss_before,
        "rss_peak": peak,
        "rss_samples": len(samples),
    }


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    if job["kind"] == "sdk":
        return await _sdk(job)
    if job["kind"] == "paced":
        return await _paced(job)
    raise ValueError(f"unknown kind {job['kind']!r}")


def main() -> None:
    print(json.dumps(run(_run(json.load(sys.stdin)))))


if __name__ == "__main__":
    main()
