"""HTTP Connect unary vs native gRPC unary on one chatd: latency and chatd's CPU per call.

`python -m bench.http_unary [--duration 3] [--levels 1,8]` starts one chatd (echo provider,
SQLite, rate limit and metrics off) with both listeners, and calls GetSession on one
session (a cache hit: what is measured is the edge, not the store) through:

- `grpc`: grpc.aio on CHATD_LISTEN, protobuf;
- `connect-proto` and `connect-json`: connectrpc's generated client (pyqwest) on
  CHATD_HTTP_LISTEN, HTTP/1.1, `application/proto` and `application/json`;
- `grpc-web`: the same client speaking gRPC-Web.

Each load is `level` workers calling back to back for a warm-up second and then
`duration` seconds; it prints calls/s, p50 and p99 latency, and chatd's CPU time per call
(utime + stime of its process, /proc, over the measured window). The load generator runs in
this process, so calls/s on a 2-core machine also reflects the client's cost; chatd's
CPU per call is the figure that compares the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib.util import find_spec
from pathlib import Path

import grpc
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.protocol import ProtocolType

from bench import procs
from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc
from chatd.v1.chat_service_connect import ChatServiceClient

Call = Callable[[], Awaitable[object]]


async def measure(
    pid: int, call: Call, level: int, warmup: float, duration: float
) -> tuple[float, float, float, float]:
    """(calls/s, p50 ms, p99 ms, chatd CPU ms per call) of `level` workers calling `call`."""
    latencies: list[float] = []
    measuring = False
    stop = False

    async def worker() -> None:
        while not stop:
            started = time.perf_counter()
            await call()
            if measuring:
                latencies.append(time.perf_counter() - started)

    workers = [asyncio.create_task(worker()) for _ in range(level)]
    await asyncio.sleep(warmup)
    cpu = procs.cpu_seconds(pid)
    measuring = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    measuring = False
    elapsed = time.perf_counter() - started
    cpu = procs.cpu_seconds(pid) - cpu
    stop = True
    await asyncio.gather(*workers)
    latencies.sort()
    n = len(latencies)
    return (
        n / elapsed,
        statistics.median(latencies) * 1e3,
        latencies[min(n - 1, int(n * 0.99))] * 1e3,
        cpu / n * 1e3,
    )


async def main(levels: list[int], warmup: float, duration: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        http_port = procs.free_port()
        server = procs.chatd(
            f"sqlite:///{tmp}/bench.db",
            Path(tmp) / "chatd.log",
            CHATD_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = chat_service_pb2_grpc.ChatServiceStub(channel)
                await stub.CreateSession(pb.CreateSessionRequest(session_id="bench"))
                request = pb.GetSessionRequest(session_id="bench")
                url = f"http://127.0.0.1:{http_port}"
                async with (
                    ChatServiceClient(url, send_compression=None) as connect_proto,
                    ChatServiceClient(
                        url, codec=google_protobuf_json_codec(), send_compression=None
                    ) as connect_json,
                    ChatServiceClient(
                        url, protocol=ProtocolType.GRPC_WEB, send_compression=None
                    ) as grpc_web,
                ):
                    calls: dict[str, Call] = {
                        "grpc": lambda: stub.GetSession(request),
                        "connect-proto": lambda: connect_proto.get_session(request),
                        "connect-json": lambda: connect_json.get_session(request),
                        "grpc-web": lambda: grpc_web.get_session(request),
                    }
                    parser = "httptools" if find_spec("httptools") else "h11"
                    print(
                        f"event loop: {procs.event_loop_name()}; uvicorn's HTTP parser: {parser}; "
                        f"GetSession, {duration:g} s a load"
                    )
                    print("| protocol | workers | calls/s | p50 ms | p99 ms | chatd CPU ms/call |")
                    print("|---|---|---|---|---|---|")
                    for level in levels:
                        for name, call in calls.items():
                            rate, p50, p99, cpu = await measure(
                                server.pid, call, level, warmup, duration
                            )
                            print(
                                f"| {name} | {level} | {rate:,.0f} | {p50:.2f} | {p99:.2f} "
                                f"| {cpu:.3f} |",
                                flush=True,
                            )
        finally:
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    procs.run(main([int(x) for x in args.levels.split(",")], args.warmup, args.duration))
