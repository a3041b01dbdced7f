"""GET /metrics on its own port: prometheus_client's WSGI app, served by a stdlib thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import make_wsgi_app

from server.metrics.core import Metrics

PATH = "/metrics"


def parse_listen(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6 host]:port"; ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def metrics_app(metrics: Metrics) -> WSGIApplication:
    """Serves the registry at GET /metrics and 404 everywhere else."""
    exposition = cast(WSGIApplication, make_wsgi_app(metrics.registry))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: metrics are at /metrics\n"]
        return exposition(environ, start_response)

    return app


class _Handler(WSGIRequestHandler):
    """Logs nothing, and gives up on a client that stalls."""

    timeout = 10.0

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """A running metrics endpoint: its bound `host` and `port`; close() stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self._closed = False
        address = httpd.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])

    async def close(self) -> None:
        """Stops accepting, waits for the serving thread, releases the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._httpd.shutdown()
        self._thread.join()
        self._httpd.server_close()


async def start_metrics_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serves GET /metrics on host:port (0 picks a free port) in a daemon thread.

    Scrapes run on that thread, never on the event loop. Raises OSError if it cannot bind.
    """
    server_class = _Server6 if ":" in host else _Server
    # Binding resolves the host name, which may block: not on the event loop either.
    httpd = await asyncio.to_thread(
        make_server, host, port, metrics_app(metrics), server_class, _Handler
    )
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="chatd-metrics", daemon=True
    )
    thread.start()
    return MetricsServer(httpd, thread)
