"""The HTTP listener (CHATD_HTTP_LISTEN): one ASGI app served by uvicorn in chatd's own event
loop, started and stopped with the rest of chatd (server/app.py).

- `POST /chatd.v1.ChatService/<Method>`: the Connect protocol (unary `application/json` or
  `application/proto`, streams `application/connect+json` or `+proto`) and gRPC-Web
  (`application/grpc-web+proto`, `application/grpc-web-text` is not served), by connectrpc;
  a server-streaming method POSTed as plain `application/json` answers newline-delimited
  JSON (server/http/ndjson.py).
- `GET /` and other paths: files of server/http/static (index.html at `/`; 404 when absent).

Native gRPC (HTTP/2 with trailers) stays on CHATD_LISTEN; a gRPC request here is refused
with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from chatd.v1.chat_service_connect import ChatServiceASGIApplication
from server.http.ndjson import NdjsonStreams, Receive, Scope, Send
from server.http.service import SERVER_STREAMING, SERVICE, Admit, ConnectChatService
from server.metrics import NO_RPC_METRICS, RpcObserver
from server.rpc.interceptors import Admission
from server.rpc.servicer import ChatServicer
from server.startup import StartupError, bind_error
from server.tracing import Tracing

log = structlog.get_logger("chatd.http")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SERVICE_PREFIX = f"/{SERVICE.full_name}/"


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


class HttpApp:
    """The listener's ASGI app: ChatService over Connect, gRPC-Web and JSON, and static
    files. `static_dir` defaults to server/http/static; with `tracing`, each call has its
    server span (rpc.system connect_rpc, or grpc for gRPC-Web)."""

    def __init__(
        self,
        servicer: ChatServicer,
        admission: Admission,
        metrics: RpcObserver | None = None,
        tracing: Tracing | None = None,
        *,
        read_max_bytes: int,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        service = ConnectChatService(servicer)
        admit = Admit(admission, NO_RPC_METRICS if metrics is None else metrics, tracing)
        self._connect = ChatServiceASGIApplication(
            service.as_service(),
            interceptors=(admit,),
            read_max_bytes=read_max_bytes,
            # Unknown JSON fields are errors naming them, as a typo should be.
            codecs=(
                google_protobuf_binary_codec(),
                google_protobuf_json_codec(ignore_unknown_fields=False),
            ),
        )
        self._ndjson = NdjsonStreams(service, admit, read_max_bytes)
        self._static_dir = static_dir
        self._static = StaticFiles(directory=static_dir, html=True, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        path: str = scope["path"]
        if path.startswith(SERVICE_PREFIX):
            content_type = _content_type(scope)
            if content_type.startswith("application/grpc") and not content_type.startswith(
                "application/grpc-web"
            ):
                await _plain(
                    send,
                    415,
                    "native gRPC is served on CHATD_LISTEN; this listener (CHATD_HTTP_LISTEN) "
                    "serves Connect, gRPC-Web and JSON",
                )
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
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, int(port)), family=family)
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
    cannot be used."""

    def __init__(
        self,
        app: HttpApp,
        sock: socket.socket,
        *,
        grace_period: float,
        tls: tuple[str, str, str] | None = None,
    ) -> None:
        _route_uvicorn_logs()
        options: dict[str, Any] = {}
        if tls is not None:
            cert, key, client_ca = tls
            options = {"ssl_certfile": cert, "ssl_keyfile": key}
            if client_ca:
                options |= {"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            app,
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
        self._server.config.timeout_graceful_shutdown = math.ceil(grace) if grace > 0 else None
        if grace <= 0:
            # No grace: calls are cancelled now, and uvicorn closes without waiting.
            self._server.force_exit = True
            for task in list(self._server.server_state.tasks):
                task.cancel()
        self._server.should_exit = True
        await self._task
        # Calls still running (no grace, or past it) are cancelled, and finish unwinding
        # before chatd closes the store under them.
        tasks = list(self._server.server_state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
