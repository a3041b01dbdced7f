"""A bare grpc.aio server (unary echo, N-chunk stream; bytes in and out, no chatd code)."""

# The first 8 bytes of a request say what to answer: the unary response size, or the
# chunk size and the number of chunks (little-endian uint32 each); the rest is padding,
# so the request has the size of chatd's. Run: python -m bench.baseline --listen HOST:PORT

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.procs import run

SERVICE = "bench.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
_HEADER = struct.Struct("<II")


def request(size: int, first: int, second: int = 0) -> bytes:
    """A request of `size` bytes asking for (response size) or (chunk size, chunks)."""
    header = _HEADER.pack(first, second)
    return header + b"x" * max(size - len(header), 0)


Context = grpc.aio.ServicerContext[bytes, bytes]


async def unary(payload: bytes, context: Context) -> bytes:
    size: int = _HEADER.unpack_from(payload)[0]
    return b"y" * size


async def stream(payload: bytes, context: Context) -> AsyncIterator[bytes]:
    size: int
    chunks: int
    size, chunks = _HEADER.unpack_from(payload)
    chunk = b"z" * size
    for _ in range(chunks):
        yield chunk


async def serve(listen: str) -> None:
    """Serves until SIGTERM or SIGINT; logs a JSON `serving` line with the port on stderr."""
    server = grpc.aio.server()
    handlers: dict[str, Any] = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port(listen)
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    print(json.dumps({"event": "serving", "port": port}), file=sys.stderr, flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
