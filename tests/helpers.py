"""Test helpers: reading rich error details and walking a session's history."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2


def rich_details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The google.rpc details of a failed call, keyed by their message name."""
    found: dict[str, Any] = {}
    # from_call also checks that the trailer's code and message are the call's own.
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.DESCRIPTOR.name] = message
    return found


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    bad = rich_details(error).get("BadRequest")
    return [v.field for v in bad.field_violations] if bad else []


async def all_messages(
    stub: Any, session_id: str, page_size: int = 1000
) -> list[content_pb2.Message]:
    messages: list[content_pb2.Message] = []
    token = ""
    while True:
        page = await stub.ListMessages(
            pb.ListMessagesRequest(session_id=session_id, page_size=page_size, page_token=token)
        )
        messages.extend(page.messages)
        token = page.next_page_token
        if not token:
            return messages


async def read_event(
    call: grpc.aio.UnaryStreamCall[pb.StreamReplyRequest, pb.StreamReplyResponse],
) -> pb.StreamReplyResponse:
    """The next response of a StreamReply call; fails the test if the stream ended."""
    event = await call.read()
    assert isinstance(event, pb.StreamReplyResponse), "the stream ended"
    return event


async def outcome(call: Any) -> list[Any]:
    """Awaits a unary call or drains a streaming one; the responses as a list."""
    if hasattr(call, "__aiter__"):
        return [response async for response in call]
    return [await call]


# How long `until` polls before it fails the test as hung: generous, since it bounds only a
# test that would otherwise never end, never how fast a passing one is.
HANG_GUARD = 30.0


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, *, timeout: float = HANG_GUARD
) -> None:
    """Polls `predicate` (state a fake, the server or a database keeps without an event to
    wait on; a coroutine function too) until it holds; AssertionError naming `what` after
    `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        holds = predicate()
        if not isinstance(holds, bool):
            holds = await holds
        if holds:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.005)
