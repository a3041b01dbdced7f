"""The standard gRPC health service, with Watch streams that end when the server drains.

grpc's asyncio `HealthServicer` answers `Watch` with the status and then every change,
and never ends the call by itself. On shutdown it turns every service NOT_SERVING, but
an open Watch is an RPC in flight, so `grpc.aio.Server.stop(grace)` waits the whole grace
period for it. Here a watcher gets NOT_SERVING and then the call completes with OK, so
the process stops as soon as the real work is done; a client that wants to know when the
server is back watches again (https://github.com/grpc/grpc/blob/master/doc/health-checking.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Seen:
    """A Watch call's context that remembers the last status written through it."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context
        self.last: int | None = None

    async def write(self, response: health_pb2.HealthCheckResponse) -> None:
        # Noted first: a write cut short by the drain's cancel was handed to grpc already.
        self.last = response.status
        await self._context.write(response)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class DrainingHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc's asyncio health servicer whose Watch calls end once shutdown begins: the
    watcher's last message is NOT_SERVING, then the call completes with OK."""

    def __init__(self) -> None:
        super().__init__()
        self._draining = asyncio.Event()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING (for good), and every Watch call ends after saying so."""
        await super().enter_graceful_shutdown()
        self._draining.set()

    async def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        seen = _Seen(context)
        watching = asyncio.ensure_future(super().Watch(request, seen))
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait((watching, draining), return_when=asyncio.FIRST_COMPLETED)
        finally:
            draining.cancel()
            if not watching.done():
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
        if not self._draining.is_set():
            watching.result()  # the call ended on its own (its error, if any)
            return
        if seen.last != _NOT_SERVING:
            await context.write(health_pb2.HealthCheckResponse(status=_NOT_SERVING))
