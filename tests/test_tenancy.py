"""One tenant cannot take another's share: per-tenant stream slots and the large-request budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from server.malloc import Trimmer
from server.rpc.guards import ByteBudget, StreamSlots
from server.sessions.errors import ResourceExhausted
from server.sessions.model import FinishReason, Part
from server.sessions.ports import ModelChunk, ModelRequest, TokenCount
from tests.conftest import StartChatd
from tests.helpers import outcome, rich_details

KEYS = "alpha:key-alpha,beta:key-beta"
ALPHA = (("authorization", "Bearer key-alpha"),)
BETA = (("authorization", "Bearer key-beta"),)


class GatedProvider:
    """Each reply starts, then waits for `gate` before it finishes: streams stay open for as
    long as a test needs, and `running` says how many are inside the provider."""

    name = "gated"
    default_model = "gated-model"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.running = 0

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.running += 1
        try:
            yield ModelChunk(parts=(Part(text="waiting "),))
            await self.gate.wait()
            yield ModelChunk(parts=(Part(text="done"),), finish_reason=FinishReason.STOP)
        finally:
            self.running -= 1

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        return TokenCount(1, estimated=True)

    async def close(self) -> None:
        return None


async def until(predicate: Any, what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def stream(chatd: Any, session_id: str, metadata: Any, text: str = "go") -> Any:
    return chatd.stub.StreamReply(
        pb.StreamReplyRequest(session_id=session_id, text=text), metadata=metadata
    )


async def test_one_tenant_at_its_stream_limit_leaves_the_others_room(
    start_chatd: StartChatd,
) -> None:
    provider = GatedProvider()
    chatd = await start_chatd(
        provider=provider, api_keys=KEYS, max_streams=10, max_streams_per_tenant=2
    )
    for sid in ("a0", "a1", "a2"):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid), metadata=ALPHA)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="b0"), metadata=BETA)
    held = [asyncio.ensure_future(outcome(stream(chatd, f"a{i}", ALPHA))) for i in range(2)]
    await until(lambda: provider.running == 2, "alpha's two streams")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await outcome(stream(chatd, "a2", ALPHA))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = rich_details(err.value)
    assert details["ErrorInfo"].reason == "TOO_MANY_TENANT_STREAMS"
    assert details["ErrorInfo"].metadata["limit"] == "CHATD_MAX_STREAMS_PER_TENANT"
    assert details["ErrorInfo"].metadata["limit_value"] == "2"
    assert "RetryInfo" in details
    assert "CHATD_MAX_STREAMS_PER_TENANT" in (err.value.details() or "")

    beta = asyncio.ensure_future(outcome(stream(chatd, "b0", BETA)))
    await until(lambda: provider.running == 3, "beta's stream, admitted beside alpha's")
    provider.gate.set()
    for events in await asyncio.gather(*held, beta):
        assert events[-1].HasField("reply")
    events = await outcome(stream(chatd, "a2", ALPHA))
    assert events[-1].HasField("reply"), "alpha's slots come back when its streams end"


async def test_without_authentication_only_the_global_cap_limits_streams(
    start_chatd: StartChatd,
) -> None:
    """With authentication off every caller is one tenant: the per-tenant cap would be a
    second, lower global one, so only CHATD_MAX_STREAMS applies."""
    provider = GatedProvider()
    chatd = await start_chatd(provider=provider, max_streams=4, max_streams_per_tenant=2)
    for i in range(4):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=f"s{i}"))
    held = [asyncio.ensure_future(outcome(stream(chatd, f"s{i}", ()))) for i in range(3)]
    await until(lambda: provider.running == 3, "three streams past the per-tenant cap")
    provider.gate.set()
    for events in await asyncio.gather(*held):
        assert events[-1].HasField("reply")


async def test_the_global_stream_cap_names_its_setting(start_chatd: StartChatd) -> None:
    provider = GatedProvider()
    chatd = await start_chatd(provider=provider, max_streams=1, max_streams_per_tenant=0)
    for sid in ("s0", "s1"):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    held = asyncio.ensure_future(outcome(stream(chatd, "s0", ())))
    await until(lambda: provider.running == 1, "the first stream")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await outcome(stream(chatd, "s1", ()))
    info = rich_details(err.value)["ErrorInfo"]
    assert (info.reason, info.metadata["limit"]) == ("TOO_MANY_STREAMS", "CHATD_MAX_STREAMS")
    provider.gate.set()
    await held


def test_stream_slots_count_each_tenant_apart() -> None:
    slots = StreamSlots(limit=3, per_tenant=2)
    slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(ResourceExhausted) as err:
        slots.acquire("a")
    assert err.value.reason == "TOO_MANY_TENANT_STREAMS"
    slots.acquire("b")
    with pytest.raises(ResourceExhausted) as err:
        slots.acquire("c")
    assert err.value.reason == "TOO_MANY_STREAMS"
    slots.release("a")
    slots.release("a")
    assert (slots.held("a"), slots.active) == (0, 1)
    slots.acquire("c")


def test_byte_budget_admits_small_requests_and_one_large_one_always() -> None:
    drained: list[int] = []
    budget = ByteBudget(threshold=100, budget=250, on_drained=lambda: drained.append(1))
    assert budget.admits(99) and budget.in_flight == 0
    assert budget.admits(1000), "alone, a request bigger than the budget still runs"
    assert not budget.admits(100)
    budget.release(1000)
    assert drained == [1]
    assert budget.admits(150) and budget.admits(100)
    assert not budget.admits(100)
    budget.release(150)
    budget.release(100)
    assert drained == [1, 1]
    assert ByteBudget(threshold=100, budget=0).admits(10**9), "0 turns the budget off"


async def test_large_requests_beyond_the_budget_are_refused_not_decoded(
    start_chatd: StartChatd,
) -> None:
    provider = GatedProvider()
    chatd = await start_chatd(
        provider=provider, large_request_bytes=1000, large_request_budget=3000
    )
    for sid in ("s0", "s1", "s2"):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    big = "x" * 2000
    held = asyncio.ensure_future(outcome(stream(chatd, "s0", (), big)))
    await until(lambda: provider.running == 1, "the first large request")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await outcome(stream(chatd, "s1", (), big))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = rich_details(err.value)
    assert details["ErrorInfo"].reason == "REQUEST_MEMORY_BUDGET"
    assert details["ErrorInfo"].metadata["limit"] == "CHATD_LARGE_REQUEST_BUDGET"
    assert "RetryInfo" in details
    small = asyncio.ensure_future(outcome(stream(chatd, "s2", (), "small")))
    await until(lambda: provider.running == 2, "a small request beside the large one")
    provider.gate.set()
    await asyncio.gather(held, small)
    events = await outcome(stream(chatd, "s1", (), big))
    assert events[-1].HasField("reply"), "the budget comes back when the large call ends"


async def test_the_trimmer_hands_memory_back_once_per_burst_of_requests() -> None:
    trimmer = Trimmer()
    if not trimmer.available:
        pytest.skip("no glibc malloc_trim on this system")
    trimmer.request()
    trimmer.request()  # before the trim began: the same trim serves it
    await until(lambda: not trimmer.running, "the trim")
    assert trimmer.trims == 1
    trimmer.request()
    await until(lambda: not trimmer.running, "the next trim")
    assert trimmer.trims == 2
