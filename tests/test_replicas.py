"""Two chatd replicas on one PostgreSQL database, through gRPC: shared history, clean races."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from tests.conftest import Chatd, StartChatd
from tests.helpers import all_messages
from tests.store.conftest import fresh_schema, postgres_dsn


@pytest.fixture
async def replicas(start_chatd: StartChatd) -> AsyncIterator[tuple[Chatd, Chatd]]:
    """Two servers sharing one schema, each with its own (shared-mode) cache."""
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        options = {"database_url": dsn, "postgres_schema": schema, "echo_delay_ms": 5}
        first = await start_chatd(**options)
        second = await start_chatd(**options)
        yield first, second
        for replica in (first, second):
            await replica.running.stop(grace=0)


async def test_turns_alternated_between_replicas_see_the_whole_history(
    replicas: tuple[Chatd, Chatd],
) -> None:
    a, b = replicas
    await a.stub.CreateSession(pb.CreateSessionRequest(session_id="shared"))
    for n in range(1, 7):
        replica = a if n % 2 else b
        sent = await replica.stub.SendMessage(
            pb.SendMessageRequest(session_id="shared", text=f"turn {n}")
        )
        assert f"turn {n} of this conversation" in sent.reply.text, "no replica saw stale history"
    assert len(await all_messages(a.stub, "shared")) == 12
    assert await all_messages(b.stub, "shared") == await all_messages(a.stub, "shared")


async def test_racing_replicas_never_interleave_the_loser_is_aborted(
    replicas: tuple[Chatd, Chatd],
) -> None:
    """Both call the model; one commits, the other fails ABORTED with nothing stored, and a
    retry of the loser then succeeds on top of the winner's turn."""
    a, b = replicas
    await a.stub.CreateSession(pb.CreateSessionRequest(session_id="race"))
    requests = [
        pb.SendMessageRequest(session_id="race", text=f"from {name}", request_id=f"r-{name}")
        for name in ("a", "b")
    ]
    results = await asyncio.gather(
        a.stub.SendMessage(requests[0]), b.stub.SendMessage(requests[1]), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(failures) == 1, results
    assert failures[0].code() == grpc.StatusCode.ABORTED
    assert len(await all_messages(a.stub, "race")) == 2
    loser = 0 if isinstance(results[0], grpc.aio.AioRpcError) else 1
    retried = await (a, b)[loser].stub.SendMessage(requests[loser])
    assert "turn 2 of this conversation" in retried.reply.text
    history = await all_messages(b.stub, "race")
    assert [m.turn_id for m in history[::2]] == [m.turn_id for m in history[1::2]]


async def test_request_ids_hold_across_replicas(replicas: tuple[Chatd, Chatd]) -> None:
    a, b = replicas
    await a.stub.CreateSession(pb.CreateSessionRequest(session_id="idem"))
    request = pb.SendMessageRequest(session_id="idem", text="once", request_id="same")
    first = await a.stub.SendMessage(request)
    again = await b.stub.SendMessage(request)
    assert again == first
    assert len(await all_messages(b.stub, "idem")) == 2
