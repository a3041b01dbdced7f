"""kill -9 of the process running a background reply: the reply fails UNAVAILABLE
(REPLICA_LOST, retryable) with nothing of it stored, and sending the same request again
runs the turn once. chatd runs as a real process; its model is the fake Gemini, holding
the answer mid-stream so the kill always lands mid-turn."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2
from tests.fake_gemini import FakeGemini, Hold, Reply
from tests.helpers import all_messages
from tests.process import ChatdProcess
from tests.store.conftest import fresh_schema, postgres_dsn

REQUEST = pb.StreamReplyRequest(session_id="s", text="hi", request_id="r1", background=True)
# Generous: how long a surviving replica may take to declare a lost replica's reply failed.
LOST_TIMEOUT = 60.0


def gemini_process(fake: FakeGemini, database_url: str, **env: str) -> ChatdProcess:
    """chatd on `database_url` whose model is the fake Gemini, configured by environment."""
    return ChatdProcess(
        "--database-url",
        database_url,
        "--rate-limit",
        "0",
        env={
            "CHATD_PROVIDER": "gemini",
            "GEMINI_API_KEY": "crash-key",
            "CHATD_GEMINI_BASE_URL": fake.base_url,
            **env,
        },
    )


async def read_all(call: Any) -> list[pb.StreamReplyResponse]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def start_held_turn(stub: Any, fake: FakeGemini) -> tuple[str, Hold]:
    """Starts REQUEST in the background with the model held mid-answer; its reply id."""
    hold = Hold()
    fake.push(Reply(text="never finished", chunks=4, hold=hold, hold_after=1))
    call = stub.StreamReply(REQUEST)
    first = await call.read()
    assert first.sequence_number == 1 and first.reply_id
    await hold.wait_reached()
    call.cancel()
    return first.reply_id, hold


async def kill9(process: ChatdProcess) -> None:
    process.send_signal(signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL


def assert_lost(info: pb.ReplyInfo) -> None:
    assert info.state == pb.REPLY_STATE_FAILED
    assert info.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert info.error.reason == "REPLICA_LOST" and info.error.retryable
    assert not info.HasField("reply")
    # Marked failed at a time of this era, not at some far lease horizon.
    assert info.create_time.ToSeconds() <= info.update_time.ToSeconds() <= time.time() + 1


async def retried_twice_runs_once(stub: Any, fake: FakeGemini) -> None:
    """REQUEST sent again runs the turn once (one more model call); once more replays it."""
    calls = len(fake.requests)
    retried = await read_all(stub.StreamReply(REQUEST))
    assert retried[-1].reply.text == "echo: hi"
    assert len(fake.requests) == calls + 1
    replayed = await read_all(stub.StreamReply(REQUEST))
    assert replayed[-1].reply.text == "echo: hi"
    assert replayed[-1].reply.turn_id == retried[-1].reply.turn_id
    assert len(fake.requests) == calls + 1, "the second retry called the model"
    history = await all_messages(stub, "s")
    assert [(m.role, m.parts[0].text) for m in history] == [
        (content_pb2.ROLE_USER, "hi"),
        (content_pb2.ROLE_MODEL, "echo: hi"),
    ]


async def test_sqlite_kill9_mid_turn_then_restart_fails_the_reply_and_a_retry_runs_once(
    tmp_path: Path, fake_gemini: FakeGemini
) -> None:
    url = f"sqlite:///{tmp_path}/crash.db"
    first = await gemini_process(fake_gemini, url).start()
    try:
        async with first.channel() as channel:
            stub, _ = first.stubs(channel)
            await stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
            reply_id, hold = await start_held_turn(stub, fake_gemini)
            await kill9(first)
    finally:
        await first.kill()
    hold.open()

    second = await gemini_process(fake_gemini, url).start()
    try:
        async with second.channel() as channel:
            stub, _ = second.stubs(channel)
            got = await stub.GetReply(pb.GetReplyRequest(reply_id=reply_id))
            assert_lost(got.reply)
            assert got.reply.background and got.reply.request_id == "r1"
            assert await all_messages(stub, "s") == []
            await retried_twice_runs_once(stub, fake_gemini)
    finally:
        await second.kill()


@pytest.fixture
async def postgres_replicas(fake_gemini: FakeGemini) -> AsyncIterator[list[ChatdProcess]]:
    """Processes A and B on one fresh schema, with 1-second reply leases."""
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        env = {"CHATD_POSTGRES_SCHEMA": schema, "CHATD_REPLY_LEASE": "1"}
        processes: list[ChatdProcess] = []
        try:
            for _ in range(2):  # one after the other: the first creates the schema
                processes.append(await gemini_process(fake_gemini, dsn, **env).start())
            yield processes
        finally:
            for process in processes:
                await process.kill()


async def test_postgres_kill9_of_a_replica_mid_turn_the_other_fails_the_reply_and_runs_the_retry(
    postgres_replicas: list[ChatdProcess], fake_gemini: FakeGemini
) -> None:
    a, b = postgres_replicas
    async with a.channel() as to_a, b.channel() as to_b:
        stub_a, _ = a.stubs(to_a)
        stub_b, _ = b.stubs(to_b)
        await stub_a.CreateSession(pb.CreateSessionRequest(session_id="s"))
        reply_id, hold = await start_held_turn(stub_a, fake_gemini)
        running = await stub_b.GetReply(pb.GetReplyRequest(reply_id=reply_id))
        assert running.reply.state == pb.REPLY_STATE_RUNNING
        await kill9(a)
        hold.open()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOST_TIMEOUT
        while (
            got := await stub_b.GetReply(pb.GetReplyRequest(reply_id=reply_id, skip_events=True))
        ).reply.state == pb.REPLY_STATE_RUNNING:
            assert loop.time() < deadline, f"still RUNNING after {LOST_TIMEOUT}s"
            await asyncio.sleep(0.05)
        assert_lost(got.reply)
        assert await all_messages(stub_b, "s") == []
        await retried_twice_runs_once(stub_b, fake_gemini)
