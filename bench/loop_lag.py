"""Event-loop lag of an in-process chatd while it imports, exports and forks a big session.

A probe task sleeps 5 ms again and again and records how late each wake-up is; a
`grpc.health.v1.Health/Check` loop records its latency. Both share the server's loop, so
every millisecond the loop spends on one call without yielding shows up in them.

    .venv/bin/python -m bench.loop_lag --import-messages 300000 --export-messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2
from server import app, logs
from server.config import Settings

LIMIT = 64 * 1024 * 1024


def document(messages: int) -> session_pb2.SessionDocument:
    doc = session_pb2.SessionDocument(format_version=1)
    doc.session.model = "echo"
    for i in range(messages):
        message = doc.messages.add(
            message_id=str(i),
            role=content_pb2.ROLE_USER if i % 2 == 0 else content_pb2.ROLE_MODEL,
            turn_id=f"t{i // 2}",
        )
        message.create_time.seconds = 1_700_000_000 + i
        message.parts.add(text=f"message {i}")
    return doc


async def probe(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - start - 0.005)


async def health_probe(stub: Any, stop: asyncio.Event, took: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=60)
        took.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)


GC_PAUSES: list[float] = []
_gc_start = 0.0


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    global _gc_start
    if phase == "start":
        _gc_start = time.perf_counter()
    elif info.get("generation") == 2:
        GC_PAUSES.append(time.perf_counter() - _gc_start)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def measure(name: str, health: Any, call: Callable[[], Awaitable[Any]]) -> None:
    stop = asyncio.Event()
    lags: list[float] = []
    checks: list[float] = []
    tasks = [
        asyncio.create_task(probe(stop, lags)),
        asyncio.create_task(health_probe(health, stop, checks)),
    ]
    await asyncio.sleep(0.1)
    GC_PAUSES.clear()
    start = time.perf_counter()
    await call()
    took = time.perf_counter() - start
    stop.set()
    await asyncio.gather(*tasks)
    gc_note = f"   gen-2 GC: {len(GC_PAUSES)}, longest {max(GC_PAUSES, default=0) * 1e3:.0f} ms"
    print(
        f"{name:<34} {took:6.2f} s   loop lag max {max(lags) * 1e3:7.1f} ms"
        f"  p99 {pct(lags, 0.99) * 1e3:6.1f} ms   Health/Check max {max(checks) * 1e3:7.1f} ms"
        f"  p99 {pct(checks, 0.99) * 1e3:6.1f} ms{gc_note}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    logs.configure("console", "warning")
    gc.callbacks.append(_gc_timer)
    with tempfile.TemporaryDirectory() as tmp:
        running = await app.start(
            Settings(
                listen="127.0.0.1:0",
                database_url=f"sqlite:///{tmp}/chatd.db",
                metrics_listen="",
                rate_limit=0,
                max_sessions_per_tenant=0,
                max_message_bytes=LIMIT,
            )
        )
        options = [
            ("grpc.max_receive_message_length", LIMIT * 2),
            ("grpc.max_send_message_length", LIMIT),
        ]
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=options)
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        try:
            big = pb.ImportSessionRequest(document=document(args.import_messages), session_id="big")
            await measure(
                f"ImportSession {args.import_messages:,} msgs",
                health,
                lambda: stub.ImportSession(big, timeout=600),
            )
            big.Clear()
            await stub.ImportSession(
                pb.ImportSessionRequest(document=document(args.export_messages), session_id="exp"),
                timeout=600,
            )
            await measure(
                f"ExportSession {args.export_messages:,} msgs",
                health,
                lambda: stub.ExportSession(pb.ExportSessionRequest(session_id="exp"), timeout=600),
            )
            await measure(
                f"ForkSession {args.export_messages:,} msgs",
                health,
                lambda: stub.ForkSession(
                    pb.ForkSessionRequest(session_id="exp", new_session_id="fork"), timeout=600
                ),
            )
            if hasattr(stub, "StreamExportSession"):

                async def stream_export() -> None:
                    async for _ in stub.StreamExportSession(
                        pb.StreamExportSessionRequest(session_id="exp"), timeout=600
                    ):
                        pass

                await measure(
                    f"StreamExportSession {args.export_messages:,}", health, stream_export
                )
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"peak RSS of the process (server and client): {rss:.0f} MiB")
        finally:
            await channel.close()
            await running.stop(grace=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--import-messages", type=int, default=300_000)
    parser.add_argument("--export-messages", type=int, default=100_000)
    asyncio.run(main(parser.parse_args()))
