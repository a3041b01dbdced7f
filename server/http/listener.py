"""The HTTP listener (CHATD_HTTP_LISTEN): one ASGI app served by uvicorn in chatd's own event
loop, started and stopped with the rest of chatd (server/app.py).

- `POST /chatd.v1.ChatService/<Method>`: the Connect protocol (unary `application/json` or
  `application/proto`, streams `application/connect+json` or `+proto`) and gRPC-Web
  (`application/grpc-web+proto`, `application/grpc-web-text` is not served), by connectrpc;
  a server-streaming method POSTed as plain `application/json` answers newline-delimited
  JSON (server/http/ndjson.py).
- `GET /` and other paths: files of server/http/static (index.html at `/`; 404 when absent).

Native gRPC (HTTP/2 with trailers) stays on CHATD_LISTEN: an HTTP/2 connection here is
answered (server/http/listener._NativeGrpcAnswer) with a gRPC status UNIMPLEMENTED saying
so, and an HTTP/1.1 request with a gRPC Content-Type gets a 415 saying so.

Before any call is read: a request whose request line and headers pass MAX_HEADER_BYTES is
refused 431; a header that is not UTF-8 is 400 (INVALID_ARGUMENT, HEADER_MALFORMED); with
no API keys set, a Host that is not a loopback name or address is 421 (DNS rebinding). A
request body that sends nothing for CHATD_HTTP_BODY_TIMEOUT seconds ends its call
(DEADLINE_EXCEEDED, REQUEST_BODY_STALLED), giving back its stream slot and budget; request
headers that take longer than that get 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import structlog
import uvicorn
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatd.v1.chat_service_connect import ChatServiceASGIApplication
from server.addresses import parse_host_port
from server.http.errors import error_json
from server.http.ndjson import HTTP_STATUS, NdjsonStreams, Receive, Scope, Send
from server.http.service import (
    SERVER_STREAMING,
    SERVICE,
    Admit,
    ChargedCodec,
    ConnectChatService,
)
from server.metrics import NO_RPC_METRICS, RpcObserver
from server.rpc.interceptors import REQUEST_ID_KEY, Admission
from server.rpc.servicer import ChatServicer
from server.sessions.errors import DeadlineExceeded, InvalidArgument
from server.startup import StartupError, bind_error
from server.tracing import Tracing

log = structlog.get_logger("chatd.http")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SERVICE_PREFIX = f"/{SERVICE.full_name}/"
# The most bytes of request line and headers one request may send (431 past it): native
# gRPC's default metadata limit is 8 KiB (grpc.max_metadata_size), browsers send at most
# a few KiB; uvicorn's httptools parser would otherwise buffer a header of any size.
MAX_HEADER_BYTES = 16 * 1024
# How long calls cut at shutdown get to write their ending before they are cancelled again.
_UNWIND_SECONDS = 1.0
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_NATIVE_GRPC = (
    "native gRPC is served on CHATD_LISTEN; this listener (CHATD_HTTP_LISTEN) "
    "serves Connect, gRPC-Web and JSON over HTTP/1.1"
)


def _content_type(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return str(value.decode("latin-1")).lower()
    return ""


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame (RFC 9113 section 4.1)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream)
        + payload
    )


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header as an HPACK literal without indexing, new name, no Huffman (RFC 7541
    section 6.2.2)."""

    def length(n: int) -> bytes:  # a 7-bit prefix integer (RFC 7541 section 5.1)
        if n < 127:
            return bytes((n,))
        out, n = [127], n - 127
        while n >= 128:
            out.append(n % 128 + 128)
            n //= 128
        return bytes((*out, n))

    return b"\x00" + length(len(name)) + name + length(len(value)) + value


class _NativeGrpcAnswer:
    """Answers an HTTP/2 connection (a native gRPC client on the wrong port): the server
    preface, then each request stream a trailers-only gRPC status UNIMPLEMENTED saying
    where native gRPC is served, then GOAWAY (RFC 9113; gRPC over HTTP/2's
    PROTOCOL-HTTP2.md)."""

    _SETTINGS, _HEADERS, _GOAWAY = 0x4, 0x1, 0x7

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._buffer = b""
        self._preface_seen = False
        self._transport.write(_frame(self._SETTINGS, 0, 0))

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if not self._preface_seen:
            if len(self._buffer) < len(_HTTP2_PREFACE):
                return
            self._buffer = self._buffer[len(_HTTP2_PREFACE) :]
            self._preface_seen = True
        while len(self._buffer) >= 9:
            size = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + size:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            self._buffer = self._buffer[9 + size :]
            if kind == self._SETTINGS and not flags & 0x1:
                self._transport.write(_frame(self._SETTINGS, 0x1, 0))  # ACK
            elif kind == self._HEADERS and stream:
                self._answer(stream)
                return

    def _answer(self, stream: int) -> None:
        block = b"\x88" + b"".join(  # 0x88: ":status: 200" from HPACK's static table
            _hpack_literal(name, value)
            for name, value in (
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"12"),  # UNIMPLEMENTED
                (b"grpc-message", _NATIVE_GRPC.encode()),
            )
        )
        self._transport.write(_frame(self._HEADERS, 0x5, stream, block))  # END_STREAM|HEADERS
        # NO_ERROR: grpc-core (grpcio 1.85) aborts the client process on HTTP_1_1_REQUIRED (0xd).
        goaway = struct.pack(">II", stream, 0) + _NATIVE_GRPC.encode()
        self._transport.write(_frame(self._GOAWAY, 0, 0, goaway))
        self._transport.close()


class HeaderCappedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol refusing (431, connection closed) a request whose request
    line and headers pass MAX_HEADER_BYTES, before the parser buffers more, and closing
    (408) a connection whose request line and headers take longer than `header_timeout`
    seconds (0 = no limit) from its first byte or from the connection's start; an HTTP/2
    connection (a native gRPC client) gets a gRPC status naming CHATD_LISTEN."""

    header_timeout: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True
        self._header_bytes = 0
        self._first = True
        self._http2: _NativeGrpcAnswer | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        if self.header_timeout > 0 and self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self._in_headers or self.transport.is_closing() or self._http2 is not None:
            return
        if self._header_bytes == 0 and self.cycle is not None:
            return  # between keep-alive requests: uvicorn's keep-alive timeout applies
        log.info("http request refused", status=408, header_bytes=self._header_bytes)
        self._write_refusal(408, "Request Timeout", "request headers took too long")

    def on_message_begin(self) -> None:
        self._in_headers = True
        self._start_header_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        self._stop_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True

    def data_received(self, data: bytes) -> None:
        if self._http2 is not None:
            self._http2.feed(data)
            return
        if self._first:
            self._first = False
            if data.startswith(_HTTP2_PREFACE[: len(data)]) and data[:3] == b"PRI":
                log.info("http/2 connection refused", reason=_NATIVE_GRPC)
                self._http2 = _NativeGrpcAnswer(self.transport)
                self._http2.feed(data)
                return
        counting = self._in_headers
        if counting:
            self._header_bytes += len(data)
        super().data_received(data)
        if counting and self._in_headers and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse_headers()

    def _refuse_headers(self) -> None:
        log.info("http request refused", status=431, header_bytes=self._header_bytes)
        self._write_refusal(
            431,
            "Request Header Fields Too Large",
            f"request headers exceed {MAX_HEADER_BYTES} bytes",
        )

    def _write_refusal(self, status: int, phrase: str, text: str) -> None:
        body = f"{text}\n".encode()
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\n".encode()
            + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self._in_headers = False
        self._stop_header_timer()
        self.transport.close()


def _loopback_host(host: str) -> bool:
    """Whether a Host header value names this machine's loopback: "localhost" (or a name
    under .localhost, RFC 6761) or a loopback IP, with or without a port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.rstrip(".") == "localhost" or name.rstrip(".").endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _timed_body(receive: Receive, seconds: float) -> Receive:
    """`receive` whose wait for the next piece of the request body is bounded by `seconds`
    (0 = unbounded): past it, a DeadlineExceeded (REQUEST_BODY_STALLED) ends the call."""
    body_done = not seconds

    async def timed() -> Any:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout(seconds):
                message = await receive()
        except TimeoutError:
            body_done = True
            raise DeadlineExceeded(
                f"the request body sent nothing for {seconds:g} s (CHATD_HTTP_BODY_TIMEOUT)",
                reason="REQUEST_BODY_STALLED",
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return timed


class HttpApp:
    """The listener's ASGI app: ChatService over Connect, gRPC-Web and JSON, and static
    files. `static_dir` defaults to server/http/static; with `tracing`, each call has its
    server span (rpc.system connect_rpc, or grpc for gRPC-Web). `body_timeout` is
    CHATD_HTTP_BODY_TIMEOUT (seconds; 0 = none). With no API keys, only loopback Host
    values are served."""

    def __init__(
        self,
        servicer: ChatServicer,
        admission: Admission,
        metrics: RpcObserver | None = None,
        tracing: Tracing | None = None,
        *,
        read_max_bytes: int,
        body_timeout: float = 30.0,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        service = ConnectChatService(servicer)
        admit = Admit(
            admission,
            NO_RPC_METRICS if metrics is None else metrics,
            tracing,
            read_max_bytes=read_max_bytes,
        )
        self._admit = admit
        self._loopback_only = not admission.keys
        self._body_timeout = body_timeout
        self._connect = ChatServiceASGIApplication(
            service.as_service(),
            interceptors=(admit,),
            read_max_bytes=read_max_bytes,
            # Unknown JSON fields are errors naming them, as a typo should be. Each request
            # message is charged to the large-request budget as it is decoded.
            codecs=cast(
                Any,
                (
                    ChargedCodec(google_protobuf_binary_codec()),
                    ChargedCodec(google_protobuf_json_codec(ignore_unknown_fields=False)),
                ),
            ),
        )
        self._ndjson = NdjsonStreams(service, admit, read_max_bytes)
        self._static_dir = static_dir
        self._static = StaticFiles(directory=static_dir, html=True, check_dir=False)

    @property
    def stopping(self) -> bool:
        """Set when the listener stops: calls cut from then end UNAVAILABLE."""
        return self._admit.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._admit.stopping = value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        path: str = scope["path"]
        if self._loopback_only and not self._host_allowed(scope):
            await _plain(
                send,
                421,
                "this listener has no API keys (CHATD_API_KEYS), so it serves only "
                "Host: localhost or a loopback address",
            )
            return
        if scope["method"] not in ("GET", "HEAD"):  # those have no body to wait for
            receive = _timed_body(receive, self._body_timeout)
        if path.startswith(SERVICE_PREFIX):
            content_type = _content_type(scope)
            if content_type.startswith("application/grpc") and not content_type.startswith(
                "application/grpc-web"
            ):
                await _plain(send, 415, _NATIVE_GRPC)
                return
            if not await self._headers_readable(scope, send, path, content_type):
                return
            streaming = SERVER_STREAMING.get(path)
            if (
                streaming is not None
                and scope["method"] == "POST"
                and content_type.partition(";")[0].strip() == "application/json"
            ):
                await self._ndjson(scope, receive, send, streaming)
                return
            await self._connect(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD") and self._static_dir.is_dir():
            try:
                await self._static(scope, receive, send)
            except HTTPException as exc:  # StaticFiles outside a Starlette app raises it
                await _plain(send, exc.status_code, exc.detail)
            return
        await _plain(send, 404, "Not Found")

    @staticmethod
    def _host_allowed(scope: Scope) -> bool:
        for key, value in scope.get("headers", ()):
            if key == b"host":
                return _loopback_host(value.decode("latin-1"))
        return True  # HTTP/1.0 without Host: not a browser's request

    async def _headers_readable(
        self, scope: Scope, send: Send, path: str, content_type: str
    ) -> bool:
        """Whether every header is UTF-8 (connectrpc decodes them so); if not, answers 400
        INVALID_ARGUMENT (HEADER_MALFORMED), logged and counted as the call's rpc line."""
        for key, value in scope.get("headers", ()):
            try:
                key.decode()
                value.decode()
            except UnicodeDecodeError:
                name = key.decode("latin-1")
                refused = InvalidArgument(
                    f"header {name!r}", "is not UTF-8", reason="HEADER_MALFORMED"
                )
                break
        else:
            return True
        protocol = "grpc-web" if content_type.startswith("application/grpc-web") else "connect"
        error, request_id = self._admit.refuse(path, path in SERVER_STREAMING, protocol, refused)
        body = json.dumps(error_json(error)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (REQUEST_ID_KEY.encode(), request_id.encode()),
        ]
        status = HTTP_STATUS[error.code]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return False


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (chatd's loop owns SIGTERM and SIGINT), telling
    when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


class _ToStructlog(logging.Handler):
    """uvicorn's own log records, in chatd's log format."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError):
            # A call chatd cancelled itself: shutdown past its grace period.
            log.info("http call cancelled", logger=record.name)
            return
        if record.getMessage().startswith("Cancel ") and "graceful shutdown" in record.msg:
            # Calls past the grace period are cut (UNAVAILABLE): chatd's plan, not a fault.
            log.info(record.getMessage(), logger=record.name)
            return
        log.log(record.levelno, record.getMessage(), logger=record.name, exc_info=record.exc_info)


def _route_uvicorn_logs() -> None:
    handler = _ToStructlog()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler] if name == "uvicorn" else []
        logger.propagate = name != "uvicorn"
        # Its start-up and shutdown notes are chatd's own "http serving" and "stopped".
        logger.setLevel(logging.WARNING)


def bind(address: str) -> socket.socket:
    """A listening socket on `address` (host:port, port 0 picks one); a StartupError naming
    CHATD_HTTP_LISTEN when it cannot be had."""
    try:
        parsed = parse_host_port(address)
        family = socket.AF_INET6 if parsed.ipv6 else socket.AF_INET
        return socket.create_server(tuple(parsed), family=family)
    except (OSError, ValueError) as exc:
        raise bind_error(
            address,
            "CHATD_HTTP_LISTEN",
            "--http-listen",
            exc,
            off="an empty value turns the HTTP listener off",
        ) from exc


class HttpListener:
    """uvicorn serving `app` on an already bound socket, inside the running event loop.
    `tls` is (certificate chain, key, client CA or "") PEM paths; a StartupError when they
    cannot be used. `header_timeout`: seconds a request's line and headers may take (408
    and closed past it; 0 = no limit), CHATD_HTTP_BODY_TIMEOUT in chatd."""

    def __init__(
        self,
        app: HttpApp,
        sock: socket.socket,
        *,
        grace_period: float,
        tls: tuple[str, str, str] | None = None,
        header_timeout: float = 0.0,
    ) -> None:
        _route_uvicorn_logs()
        options: dict[str, Any] = {}
        if tls is not None:
            cert, key, client_ca = tls
            options = {"ssl_certfile": cert, "ssl_keyfile": key}
            if client_ca:
                options |= {"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self._app = app
        protocol = type(
            "HeaderCappedProtocol", (HeaderCappedProtocol,), {"header_timeout": header_timeout}
        )
        config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            ws="none",
            timeout_graceful_shutdown=math.ceil(grace_period),
            **options,
        )
        try:
            config.load()  # the TLS context: unreadable files fail here, before serving
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise StartupError(
                tls[0] if tls else "CHATD_HTTP_LISTEN",
                f"cannot serve HTTPS: {exc}",
                "check CHATD_TLS_CERT, CHATD_TLS_KEY and CHATD_TLS_CLIENT_CA",
            ) from exc
        self._server = _Server(config)
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serves from now on; returns once uvicorn listens."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        listening = asyncio.ensure_future(self._server.listening.wait())
        await asyncio.wait({self._task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():
            listening.cancel()
            self._task.result()  # its exception, if it has one
            raise StartupError(str(self.port), "the HTTP listener stopped", "see the log")

    async def stop(self, grace: float) -> None:
        """Stops accepting; calls in flight get `grace` seconds, then are cancelled."""
        if self._task is None:
            self._sock.close()
            return
        self._app.stopping = True
        self._server.config.timeout_graceful_shutdown = math.ceil(grace) if grace > 0 else None
        if grace <= 0:
            # No grace: calls are cancelled now, and uvicorn closes without waiting.
            self._server.force_exit = True
            for task in list(self._server.server_state.tasks):
                task.cancel()
        self._server.should_exit = True
        await self._task
        # Calls still running (no grace, or past it) were cancelled: they get a moment to
        # write their UNAVAILABLE ending, then are cancelled again, and finish unwinding
        # before chatd closes the store under them.
        tasks = list(self._server.server_state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_UNWIND_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
