"""The fake's HTTP/1.1 plumbing: one client connection."""

from __future__ import annotations

import asyncio
import contextlib
import http
import json

from tests.fake_gemini.common import Json

# --------------------------------------------------------------------------- HTTP plumbing


class _ClientGone(Exception):
    """The client closed the connection while the fake was still answering."""


class _Connection:
    """One HTTP/1.1 keep-alive connection: reads requests, writes responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True
        self.events_sent = 0  # SSE events written for the response in progress
        self._eof: asyncio.Task[None] | None = None

    async def read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        """Returns (verb, target, headers, body), or None when the client is done."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        verb, target, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        # httpx sends a Content-Length for the SDK's JSON bodies; chunked uploads never occur.
        length = int(headers.get("content-length", "0"))
        try:
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return verb, target, headers, body

    def watch_for_eof(self) -> None:
        """Starts noticing a client hang-up while the response is in progress."""
        self.events_sent = 0
        self._eof = asyncio.ensure_future(self._read_until_eof())

    async def _read_until_eof(self) -> None:
        # Reading is the only prompt way to see a FIN: writes to a closed peer can still
        # succeed into the kernel buffer. httpx never pipelines, so bytes here are unexpected.
        while True:
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            self.reusable = False  # we swallowed bytes of a pipelined request

    async def stop_watching(self) -> None:
        if self._eof is None:
            return
        if self._eof.done():
            self.reusable = False
        self._eof.cancel()
        # Wait for the cancellation to land: a StreamReader allows only one pending read.
        with contextlib.suppress(asyncio.CancelledError):
            await self._eof
        self._eof = None

    async def pause(self, seconds: float) -> None:
        """Sleeps, raising _ClientGone as soon as the client hangs up."""
        if self._eof is None:
            await asyncio.sleep(seconds)
            return
        done, _ = await asyncio.wait({self._eof}, timeout=max(seconds, 0.0))
        if done:
            raise _ClientGone

    async def write(self, data: bytes) -> None:
        if self._eof is not None and self._eof.done():
            raise _ClientGone
        try:
            self.writer.write(data)
            await self.writer.drain()  # flush now so each SSE event arrives live
        except (ConnectionError, OSError) as exc:
            raise _ClientGone from exc

    async def send_json(self, code: int, body: Json) -> None:
        payload = json.dumps(body).encode()
        head = _status_line(code) + (
            "Content-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        await self.write(head.encode() + payload)

    async def start_sse(self) -> None:
        # Chunked encoding keeps the connection reusable and lets httpx see each event as
        # it is written; a missing terminating chunk is how a mid-stream drop looks.
        head = _status_line(200) + (
            "Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await self.write(head.encode())

    async def send_event(self, body: Json) -> None:
        # Exactly what the SDK's parser accepts: `data: ` + JSON, then a blank line.
        event = b"data: " + json.dumps(body).encode() + b"\r\n\r\n"
        await self.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        self.events_sent += 1

    async def end_sse(self) -> None:
        await self.write(b"0\r\n\r\n")

    def close(self) -> None:
        if self._eof is not None:
            self._eof.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()


def _status_line(code: int) -> str:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {code} {phrase}\r\n"
