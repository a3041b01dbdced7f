"""Server RSS while 24 clients each send a 7.5 MB ImportSession at once, and after.

Runs chatd as a subprocess (SQLite in a temporary folder, cache off so it holds nothing)
once per configuration: without the large-request budget (so without its malloc_trim),
with glibc limited to 2 arenas, with a budget too big to refuse anything (so only its
malloc_trim when the last large request ends), and with the default budget. A refused
request is retried after 0.2 s, so every import completes in every run.

    .venv/bin/python -m bench.large_requests
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import grpc

from bench.procs import chatd
from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2

CLIENTS = 24
MESSAGES = 75  # of 100,000 characters: about 7.5 MB a request
MIB = 1024 * 1024


def request(session_id: str) -> bytes:
    doc = session_pb2.SessionDocument(format_version=1)
    doc.session.model = "echo"
    for i in range(MESSAGES):
        message = doc.messages.add(
            message_id=str(i),
            role=content_pb2.ROLE_USER if i % 2 == 0 else content_pb2.ROLE_MODEL,
            turn_id=f"t{i // 2}",
        )
        message.parts.add(text=chr(ord("a") + i % 26) * 100_000)
    return pb.ImportSessionRequest(document=doc, session_id=session_id).SerializeToString()


async def one(channel: grpc.aio.Channel, data: bytes, refusals: list[int]) -> None:
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/chatd.v1.ChatService/ImportSession",
        request_serializer=None,
        response_deserializer=None,
    )
    while True:
        try:
            await call(data, timeout=300)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            refusals.append(1)
            await asyncio.sleep(0.2)


async def run(name: str, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = chatd(f"sqlite:///{tmp}/chatd.db", Path(tmp) / "chatd.log", **env)
        await server.start()
        try:
            bodies = [request(f"s{i}") for i in range(CLIENTS)]
            options = [("grpc.max_send_message_length", 16 * MIB)]
            async with grpc.aio.insecure_channel(server.address, options=options) as channel:
                stub = chat_service_pb2_grpc.ChatServiceStub(channel)
                await stub.CreateSession(pb.CreateSessionRequest(session_id="warm"))
                await asyncio.sleep(1)
                base = server.rss()
                peak = base
                refusals: list[int] = []
                started = time.perf_counter()
                calls = asyncio.gather(*(one(channel, b, refusals) for b in bodies))
                while not calls.done():
                    peak = max(peak, server.rss())
                    await asyncio.sleep(0.02)
                await calls
                took = time.perf_counter() - started
                await asyncio.sleep(3)
                after = server.rss()
            in_flight = CLIENTS * len(bodies[0]) / MIB
            print(
                f"{name:<28} {CLIENTS} x {len(bodies[0]) / MIB:.1f} MiB ({in_flight:.0f} MiB):"
                f" base {base / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB,"
                f" 3 s after {after / MIB:.0f} MiB; {len(refusals)} refusals retried,"
                f" all done in {took:.1f} s",
                flush=True,
            )
        finally:
            await server.stop()


async def main() -> None:
    common: dict[str, str] = {
        "CHATD_MAX_MESSAGE_BYTES": str(16 * MIB),
        "CHATD_CACHE_MAX_BYTES": "0",
    }
    await run("no budget", {**common, "CHATD_LARGE_REQUEST_BUDGET": "0"})
    await run(
        "no budget, MALLOC_ARENA_MAX=2",
        {**common, "CHATD_LARGE_REQUEST_BUDGET": "0", "MALLOC_ARENA_MAX": "2"},
    )
    await run("budget 1 GiB (trim only)", {**common, "CHATD_LARGE_REQUEST_BUDGET": str(1024 * MIB)})
    await run("budget 32 MiB (default)", common)


if __name__ == "__main__":
    asyncio.run(main())
