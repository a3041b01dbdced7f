"""Load generator: a separate process driving one server over grpc.aio with raw request bytes."""

# run_load(job) starts `python -m bench.load`, which reads the job as JSON on stdin, runs
# `concurrency` workers for `warmup` then `duration` seconds (or until `max_calls` calls
# were measured) and prints the results as JSON. With `once` every payload is sent exactly
# once. With `min_calls` a load whose calls are slow goes on past `duration` (up to 3x)
# until that many were measured. Requests are serialized beforehand, so the client does
# the same work for either server.

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.procs import HOST, ROOT, cpu_seconds, machine_busy_seconds, run

CALL_TIMEOUT = 30.0


def encode(payloads: list[bytes]) -> list[str]:
    return [base64.b64encode(p).decode() for p in payloads]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


@dataclass
class _State:
    measuring: bool = False
    stop: bool = False
    latencies: list[float] = field(default_factory=list)
    first_events: list[float] = field(default_factory=list)
    messages: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    enough: asyncio.Event = field(default_factory=asyncio.Event)


def _cycle(payloads: list[bytes], worker: int, workers: int) -> Iterator[bytes]:
    """Worker w sends payloads w, w+workers, ...: no two workers share a session."""
    mine = payloads[worker::workers] or [payloads[worker % len(payloads)]]
    while True:
        yield from mine


async def _worker(
    job: dict[str, Any], channel: grpc.aio.Channel, state: _State, source: Iterator[bytes]
) -> None:
    streaming = job["streaming"]
    if streaming:
        call: Any = channel.unary_stream(job["method"])
    else:
        call = channel.unary_unary(job["method"])
    for payload in source:
        if state.stop:
            return
        started = time.perf_counter()
        first = 0.0
        count = 0
        try:
            if streaming:
                async for _ in call(payload, timeout=CALL_TIMEOUT):
                    if not count:
                        first = time.perf_counter() - started
                    count += 1
            else:
                await call(payload, timeout=CALL_TIMEOUT)
                count = 1
        except grpc.aio.AioRpcError as exc:
            state.errors[exc.code().name] += 1
            await asyncio.sleep(0.01)  # an error is fast; do not spin on it
            continue
        if state.measuring and not state.stop:
            state.latencies.append(time.perf_counter() - started)
            state.first_events.append(first)
            state.messages += count
            if len(state.latencies) >= job["max_calls"]:
                state.full.set()
            if len(state.latencies) >= job.get("min_calls", 0):
                state.enough.set()


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    if not job["address"].startswith(HOST + ":"):
        raise ValueError("the load generator only targets 127.0.0.1")
    payloads = [base64.b64decode(p) for p in job["payloads"]]
    state = _State()
    concurrency = job["concurrency"]
    async with grpc.aio.insecure_channel(job["address"]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        if job.get("once"):
            shared = iter(payloads)
            sources = [shared] * concurrency
        else:
            sources = [_cycle(payloads, w, concurrency) for w in range(concurrency)]
        workers = [asyncio.create_task(_worker(job, channel, state, s)) for s in sources]
        if not job.get("once"):
            await asyncio.sleep(job["warmup"])
        server_cpu, client_cpu = cpu_seconds(job["server_pid"]), time.process_time()
        busy = machine_busy_seconds()
        started = time.perf_counter()
        state.measuring = True
        if job.get("once"):
            await asyncio.wait(workers, timeout=job["duration"])
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.full.wait(), job["duration"])
            # Slow calls: go on (up to 3x the duration) until min_calls were measured.
            if len(state.latencies) < job.get("min_calls", 0):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.enough.wait(), 2 * job["duration"])
        elapsed = time.perf_counter() - started
        state.stop = True
        server_cpu = cpu_seconds(job["server_pid"]) - server_cpu
        client_cpu = time.process_time() - client_cpu
        busy = machine_busy_seconds() - busy
        _, late = await asyncio.wait(workers, timeout=CALL_TIMEOUT)
        for task in late:
            task.cancel()
    latencies = sorted(state.latencies)
    firsts = sorted(state.first_events)
    calls = len(latencies)
    return {
        "calls": calls,
        "seconds": elapsed,
        "throughput": calls / elapsed,
        "messages": state.messages,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "mean_ms": sum(latencies) / max(calls, 1) * 1e3,
        "first_p50_ms": percentile(firsts, 0.50) * 1e3,
        "first_p99_ms": percentile(firsts, 0.99) * 1e3,
        "errors": dict(state.errors),
        "server_cpu_us_per_call": server_cpu / max(calls, 1) * 1e6,
        "client_cpu_us_per_call": client_cpu / max(calls, 1) * 1e6,
        "server_cpu_share": server_cpu / elapsed,
        "client_cpu_share": client_cpu / elapsed,
        # CPUs kept busy by everything else on the machine: interference, if well above 0.
        "other_cpu_share": max(0.0, busy - server_cpu - client_cpu) / elapsed,
    }


async def run_load(job: dict[str, Any]) -> dict[str, Any]:
    """Runs `job` in a fresh `python -m bench.load` process (or the job's `generator`
    module, which takes and returns the same JSON) and returns its results."""
    job = {"warmup": 1.0, "duration": 5.0, "max_calls": 1_000_000, "streaming": False, **job}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        job.get("generator", "bench.load"),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    limit = job["warmup"] + 3 * job["duration"] + CALL_TIMEOUT + 30
    try:
        out, _ = await asyncio.wait_for(proc.communicate(json.dumps(job).encode()), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode:
        raise RuntimeError(f"load generator failed with {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    print(json.dumps(run(_run(json.load(sys.stdin)))))


if __name__ == "__main__":
    main()
