"""Talking to chatd's HTTP listener in tests: raw HTTP/1.1 over a socket (so a test decides
exactly when the client goes away), and reading Connect errors' google.rpc details."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from connectrpc.errors import ConnectError
from google.protobuf.message import Message
from google.rpc import error_details_pb2

DETAIL_TYPES: dict[str, type[Message]] = {
    "google.rpc.ErrorInfo": error_details_pb2.ErrorInfo,
    "google.rpc.BadRequest": error_details_pb2.BadRequest,
    "google.rpc.RetryInfo": error_details_pb2.RetryInfo,
}


def connect_details(error: ConnectError) -> dict[str, Any]:
    """A ConnectError's details by short type name ("ErrorInfo": ErrorInfo, ...)."""
    return {
        d.type_name.rpartition(".")[2]: DETAIL_TYPES[d.type_name].FromString(d.message_bytes)
        for d in error.details
    }


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    lines: list[dict[str, Any]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class HttpStream:
    """One HTTP/1.1 request on its own connection; the response is read as it arrives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunked = False

    @classmethod
    async def post(
        cls,
        port: int,
        path: str,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> HttpStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        stream = cls(reader, writer)
        await stream._read_head()
        return stream

    async def _read_head(self) -> None:
        status_line = await self.reader.readline()
        self.status = int(status_line.split()[1])
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            self.headers[key.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "") == "chunked"

    async def chunk(self) -> bytes:
        """The next chunk of the body (b"" at its end)."""
        if not self._chunked:
            return await self.reader.read()
        size = int((await self.reader.readline()).strip(), 16)
        data = await self.reader.readexactly(size) if size else b""
        await self.reader.readline()
        return data

    async def body(self) -> bytes:
        parts = []
        while data := await self.chunk():
            parts.append(data)
        return b"".join(parts)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class NdjsonLines:
    """Newline-delimited JSON from an HttpStream, one object at a time."""

    def __init__(self, stream: HttpStream) -> None:
        self.stream = stream
        self._buffer = b""

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self._buffer:
            data = await asyncio.wait_for(self.stream.chunk(), 30)
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        item: dict[str, Any] = json.loads(line)
        return item

    async def rest(self) -> list[dict[str, Any]]:
        items = []
        while (item := await self.next()) is not None:
            items.append(item)
        return items


async def post_json(
    port: int, path: str, data: Any, headers: dict[str, str] | None = None
) -> HttpResponse:
    """A plain JSON POST; a newline-delimited JSON answer is split into `lines`."""
    stream = await HttpStream.post(port, path, json.dumps(data).encode(), headers=headers)
    try:
        body = await asyncio.wait_for(stream.body(), 30)
    finally:
        await stream.close()
    response = HttpResponse(stream.status, stream.headers, body)
    if stream.headers.get("content-type") == "application/x-ndjson":
        response.lines = [json.loads(line) for line in body.splitlines() if line]
    return response
