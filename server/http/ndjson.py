"""Server-streaming RPCs for plain HTTP/JSON clients (curl): newline-delimited JSON.

A POST of one JSON request (`Content-Type: application/json`, the body Connect's unary JSON
would be) to a server-streaming method answers `application/x-ndjson`: one response message
per line as it is produced. An error before the first message is an ordinary HTTP error
(status and Connect's error JSON body, as for a unary call); an error after it is a last
line `{"error": {...Connect's error JSON...}}`. A stream that ends without an error line
ended OK. A client that disconnects cancels the call, as on gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import Headers, RequestContext
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from chatd.v1 import chat_service_pb2
from server.http.errors import error_json
from server.http.service import Admit, ConnectChatService, end, snake

# ASGI (https://asgi.readthedocs.io/en/latest/specs/www.html): the HTTP scope and the
# receive and send callables, as uvicorn passes them.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CONTENT_TYPE = b"application/x-ndjson"
# Connect's HTTP status for each code (https://connectrpc.com/docs/protocol/#error-codes).
_HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class _Exchange:
    """One HTTP request's body, response and disconnect: `run` cancels the work when the
    client goes away after its request was read."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self._body_read = asyncio.Event()
        self.started = False

    async def body(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ConnectError(Code.CANCELED, "Client disconnected before request completion")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ConnectError(
                    Code.RESOURCE_EXHAUSTED, f"message is larger than configured max {limit}"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                self._body_read.set()
                return b"".join(chunks)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, body: bytes, more: bool = True) -> None:
        await self._send({"type": "http.response.body", "body": body, "more_body": more})

    async def _watch(self) -> None:
        await self._body_read.wait()
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(self._watch())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            task.cancel()  # a no-op once it is done
            await asyncio.gather(watch, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await task


class NdjsonStreams:
    """Serves the server-streaming methods of `service` as newline-delimited JSON."""

    def __init__(self, service: ConnectChatService, admit: Admit, read_max_bytes: int) -> None:
        self._service = service
        self._admit = admit
        self._read_max_bytes = read_max_bytes

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, method: MethodDescriptor
    ) -> None:
        headers = Headers(
            {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        )
        exchange = _Exchange(receive, send)
        await exchange.run(self._serve(exchange, method, _context(method, headers)))

    async def _serve(
        self, exchange: _Exchange, method: MethodDescriptor, ctx: RequestContext[Any, Any]
    ) -> None:
        try:
            call = self._admit.begin(ctx, "json")
            try:
                request = self._decode(method, await exchange.body(self._read_max_bytes))
                responses = getattr(self._service, snake(method.name))(request, ctx)
                async with contextlib.aclosing(responses) as stream:
                    async for message in stream:
                        if not exchange.started:
                            await exchange.start(200, _headers(ctx, CONTENT_TYPE))
                        await exchange.write(_line(json_format.MessageToDict(message)))
            except asyncio.CancelledError:
                end(call, ConnectError(Code.CANCELED, "Client disconnected"))
                raise
            except Exception as exc:
                end(call, exc)  # raises the error to send, unless it is one already
                raise
            end(call, None)
        except ConnectError as error:
            if exchange.started:
                await exchange.write(_line({"error": error_json(error)}), more=False)
                return
            status = _HTTP_STATUS.get(error.code, 500)
            await exchange.start(status, _headers(ctx, b"application/json"))
            await exchange.write(json.dumps(error_json(error)).encode(), more=False)
            return
        if not exchange.started:
            await exchange.start(200, _headers(ctx, CONTENT_TYPE))
        await exchange.write(b"", more=False)

    @staticmethod
    def _decode(method: MethodDescriptor, body: bytes) -> Message:
        request: Message = getattr(chat_service_pb2, method.input_type.name)()
        try:
            json_format.Parse(body or b"{}", request)
        except json_format.ParseError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"unmarshal message: {exc}") from exc
        return request


def _headers(ctx: RequestContext[Any, Any], content_type: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type),
        *((k.encode(), v.encode()) for k, v in ctx.response_headers.items()),
    ]


def _context(method: MethodDescriptor, headers: Headers) -> RequestContext[Any, Any]:
    input_type = getattr(chat_service_pb2, method.input_type.name)
    output_type = getattr(chat_service_pb2, method.output_type.name)
    info: MethodInfo[Any, Any] = MethodInfo(
        name=method.name,
        service_name=method.containing_service.full_name,
        input=input_type,
        output=output_type,
        idempotency_level=IdempotencyLevel.UNKNOWN,
        stream_type=StreamType.SERVER_STREAM,
    )
    return RequestContext(method=info, http_method="POST", request_headers=headers)
