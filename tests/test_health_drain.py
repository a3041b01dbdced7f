"""Health Watch streams during a graceful stop: they see NOT_SERVING and then end, so an
open Watch does not hold the server for its whole grace period."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2

from tests.conftest import StartChatd

SERVICE = "chatd.v1.ChatService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_graceful_stop_ends_open_watches_after_not_serving(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_chatd()
    watches = [
        chatd.health.Watch(health_pb2.HealthCheckRequest(service=name)) for name in (SERVICE, "")
    ]
    for watch in watches:
        assert (await watch.read()).status == SERVING
    # An hour of grace: were the watches to hold the server, this stop would not end
    # before the test's own timeout.
    stopping = asyncio.create_task(chatd.running.stop(grace=3600))
    for watch in watches:
        assert (await watch.read()).status == NOT_SERVING
        assert await watch.read() is grpc.aio.EOF
        assert await watch.code() == grpc.StatusCode.OK
    await stopping
