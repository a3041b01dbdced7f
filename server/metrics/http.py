"""GET /metrics on its own port: prometheus_client's WSGI app and threading WSGI server.

The exposition is prometheus_client's own (`make_wsgi_app`): the text format, or OpenMetrics
when the scraper's Accept asks for it; gzip when Accept-Encoding allows it; `name[]` query
parameters selecting series; OPTIONS, and 405 for other methods. It is served by
prometheus_client's `ThreadingWSGIServer` (a thread per request) from a daemon thread, so
scrapes never run on the event loop.

Why not `prometheus_client.start_http_server`, which wires the same two pieces together
(prometheus_client/exposition.py, start_wsgi_server): it serves the exposition at every
path, kept so "for backwards compatibility", and takes no app to change that, while chatd
answers 404 away from /metrics, so that a scrape job with a wrong path fails instead of
passing; and its request handler sets no socket timeout, so a client that connects and
sends nothing holds a thread until it leaves, while chatd's drops it after CLIENT_TIMEOUT.
Those two are the only parts written here, beside closing (MetricsServer.close).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable
from typing import cast
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from server.metrics.core import Metrics

PATH = "/metrics"
# How long a scrape connection may stay silent before it is dropped, in seconds.
CLIENT_TIMEOUT = 10.0


def metrics_app(metrics: Metrics) -> WSGIApplication:
    """Serves the registry at /metrics (prometheus_client's app) and 404 everywhere else."""
    exposition = cast(WSGIApplication, make_wsgi_app(metrics.registry))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: metrics are at /metrics\n"]
        return exposition(environ, start_response)

    return app


class _Handler(WSGIRequestHandler):
    """Logs nothing, and gives up on a client that stalls."""

    timeout = CLIENT_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged."""


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """A running metrics endpoint: its bound `host` and `port`; close() stops it."""

    def __init__(self, httpd: ThreadingWSGIServer, thread: threading.Thread) -> None:
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


async def start_metrics_server(
    metrics: Metrics, host: str, port: int, client_timeout: float = CLIENT_TIMEOUT
) -> MetricsServer:
    """Serves GET /metrics on host:port (0 picks a free port) in a daemon thread; a
    connection silent for `client_timeout` seconds is dropped.

    Scrapes run on that thread, never on the event loop. Raises OSError if it cannot bind.
    """
    server_class = _Server6 if ":" in host else ThreadingWSGIServer
    handler = type("_Handler", (_Handler,), {"timeout": client_timeout})
    # Binding resolves the host name, which may block: not on the event loop either.
    httpd = await asyncio.to_thread(
        make_server, host, port, metrics_app(metrics), server_class, handler
    )
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="chatd-metrics", daemon=True
    )
    thread.start()
    return MetricsServer(httpd, thread)
