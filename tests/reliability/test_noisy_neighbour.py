"""One tenant cannot degrade another: while tenant "noisy" floods streams (up to its
per-tenant limit and beyond) and imports a large session, tenant "quiet"'s unary calls and
grpc.health.v1.Health/Check keep answering; their p99 stays under 250 ms (docs/promises.md).

chatd and the noisy tenant (tests/reliability/noisy_tenant.py) each run as a process of
their own, so the figures are the server's answer times, not this test's event loop's.
The fast variant (in `make test`) imports 60,000 messages, a few seconds of server work,
and checks that the flood met its limit while the quiet tenant was answered; the soak
variant (`make soak`, on a machine of its own) imports 300,000 messages twice
(StreamImportSession, then ImportSession), exports and forks them, and also holds the p99s
to the target. Both print their figures: on a shared or loaded machine answer times say
more about the machine than about chatd, so the suite that must pass anywhere does not
judge them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2
from tests.process import ROOT
from tests.reliability.common import histogram, sqlite_url

QUIET = (("authorization", "Bearer key-quiet"),)
# The product's target (docs/promises.md, "Reliability targets"): the quiet tenant's unary
# p99 and the health check p99 stay under 250 ms while its neighbour floods and imports.
P99_TARGET = 0.250


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serving(health: Any) -> None:
    """Waits until the server answers SERVING (it starts in well under a second)."""
    for _ in range(600):
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("chatd did not start serving")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass
class Figures:
    unary: dict[str, list[float]] = field(default_factory=dict)
    health: list[float] = field(default_factory=list)
    quiet_streams: Counter[str] = field(default_factory=Counter)
    noisy: dict[str, Any] = field(default_factory=dict)

    def all_unary(self) -> list[float]:
        return [t for times in self.unary.values() for t in times]

    def report(self, title: str) -> str:
        lines = [title]
        rows = [*sorted(self.unary.items()), ("unary (all)", self.all_unary())]
        rows.append(("Health/Check", self.health))
        for name, times in rows:
            ordered = sorted(times)
            lines.append(
                f"  {name:<15} n={len(times):5d}  p50 {ordered[len(times) // 2] * 1e3:6.1f} ms"
                f"  p99 {p99(times) * 1e3:6.1f} ms  max {ordered[-1] * 1e3:6.1f} ms"
            )
        lines.append(f"  quiet streams: {histogram(self.quiet_streams)}")
        lines.append(f"  noisy tenant: {json.dumps(self.noisy)}")
        return "\n".join(lines)


async def timed(figures: Figures, name: str, call: Any) -> None:
    start = time.perf_counter()
    await call
    figures.unary.setdefault(name, []).append(time.perf_counter() - start)


async def quiet_unary(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, figures: Figures, stop: asyncio.Event
) -> None:
    """Small unary calls one after another: two reads, an append, now and then a create."""
    message = content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="hi")])
    reply = content_pb2.Message(role=content_pb2.ROLE_MODEL, parts=[content_pb2.Part(text="yo")])
    n = 0
    while not stop.is_set():
        n += 1
        get = pb.GetSessionRequest(session_id="quiet")
        await timed(figures, "GetSession", stub.GetSession(get, metadata=QUIET, timeout=30))
        page = pb.ListMessagesRequest(session_id="quiet", page_size=10)
        await timed(figures, "ListMessages", stub.ListMessages(page, metadata=QUIET, timeout=30))
        add = pb.AppendMessagesRequest(session_id="quiet", messages=[message, reply])
        await timed(figures, "AppendMessages", stub.AppendMessages(add, metadata=QUIET, timeout=30))
        if n % 10 == 0:
            new = pb.CreateSessionRequest(session_id=f"quiet-{n}")
            await timed(figures, "CreateSession", stub.CreateSession(new, metadata=QUIET))
        await asyncio.sleep(0.005)


async def quiet_streams(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, figures: Figures, stop: asyncio.Event
) -> None:
    """The quiet tenant still gets stream slots while its neighbour holds all of its own."""
    while not stop.is_set():
        try:
            request = pb.StreamReplyRequest(session_id="quiet-stream", text="hello")
            async for _ in stub.StreamReply(request, metadata=QUIET, timeout=60):
                pass
            figures.quiet_streams["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            figures.quiet_streams[exc.code().name] += 1
        await asyncio.sleep(0.05)


async def health_checks(health: Any, figures: Figures, stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        figures.health.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)


async def noisy_neighbour(
    tmp_path: Path,
    *,
    stream_limit: int,
    workers: int,
    import_messages: int,
    unary_import: bool,
    seconds: float,
) -> Figures:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "CHATD_API_KEYS": "noisy:key-noisy,quiet:key-quiet",
        # Streams of about a second each: the echo reply's 25 text deltas, 40 ms apart.
        "CHATD_ECHO_DELAY_MS": "40",
        "CHATD_PROVIDER": "echo",
        "CHATD_LOG_FORMAT": "json",
    }
    # Its log goes to a file: a pipe this test read would block the server's writes
    # whenever the test fell behind, and the test would measure itself.
    with (tmp_path / "chatd.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "serve",
            "--listen",
            address,
            "--metrics-listen",
            "",
            "--database-url",
            sqlite_url(tmp_path),
            "--rate-limit",
            "0",
            "--max-streams-per-tenant",
            str(stream_limit),
            "--max-message-bytes",
            str(64 * 1024 * 1024),
            "--max-sessions-per-tenant",
            "0",
            cwd=ROOT,
            env=env,
            stderr=log,
        )
    args = ["--address", address, "--workers", str(workers)]
    args += ["--import-messages", str(import_messages), "--seconds", str(seconds)]
    if unary_import:
        args.append("--unary-import")
    noisy: asyncio.subprocess.Process | None = None
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await serving(health)
            noisy = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.reliability.noisy_tenant",
                *args,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            for sid in ("quiet", "quiet-stream"):
                await stub.CreateSession(pb.CreateSessionRequest(session_id=sid), metadata=QUIET)
            assert noisy.stdout is not None
            assert (await asyncio.wait_for(noisy.stdout.readline(), 120)).strip() == b"ready"
            figures = Figures()
            stop = asyncio.Event()
            probes = [
                asyncio.create_task(quiet_unary(stub, figures, stop)),
                asyncio.create_task(quiet_streams(stub, figures, stop)),
                asyncio.create_task(health_checks(health, figures, stop)),
            ]
            summary = await asyncio.wait_for(noisy.stdout.readline(), 600)
            stop.set()
            await asyncio.gather(*probes)
            assert await noisy.wait() == 0
            figures.noisy = json.loads(summary)
        return figures
    finally:
        for process in (noisy, server):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()


def check(figures: Figures, import_messages: int, *, latency: bool) -> None:
    noisy = figures.noisy
    assert noisy["stream_import_messages"] == import_messages
    assert noisy["streams"].get("OK", 0) > 0
    assert noisy["streams"].get("TOO_MANY_TENANT_STREAMS", 0) > 0, "the flood met its limit"
    assert set(noisy["streams"]) == {"OK", "TOO_MANY_TENANT_STREAMS"}
    assert figures.quiet_streams["OK"] > 0 and set(figures.quiet_streams) == {"OK"}
    if latency:
        assert p99(figures.all_unary()) < P99_TARGET
        assert p99(figures.health) < P99_TARGET


@pytest.mark.timeout(300)
async def test_a_flooding_importing_tenant_leaves_the_others_answered(
    tmp_path: Path,
) -> None:
    figures = await noisy_neighbour(
        tmp_path,
        stream_limit=8,
        workers=12,
        import_messages=60_000,
        unary_import=False,
        seconds=4.0,
    )
    print(
        figures.report(
            "noisy neighbour (fast): 12 stream workers against a per-tenant limit of 8 and a "
            "60,000-message StreamImportSession"
        )
    )
    check(figures, 60_000, latency=False)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_soak_a_flooding_importing_tenant_leaves_the_others_p99_low(
    tmp_path: Path,
) -> None:
    figures = await noisy_neighbour(
        tmp_path,
        stream_limit=100,
        workers=130,
        import_messages=300_000,
        unary_import=True,
        seconds=20.0,
    )
    print(
        figures.report(
            "noisy neighbour (soak): 130 stream workers against a per-tenant limit of 100, "
            "300,000 messages imported by StreamImportSession and by ImportSession, exported "
            "and forked"
        )
    )
    check(figures, 300_000, latency=True)
    assert figures.noisy["unary_import_messages"] == 300_000
    assert figures.noisy["exported_messages"] == figures.noisy["forked_messages"] == 300_000
