"""chatd as a real process: kill -9 loses no acknowledged turn, SIGTERM drains live streams."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2
from tests.helpers import all_messages
from tests.process import ChatdProcess


def assert_whole_turns(history: list[content_pb2.Message]) -> None:
    """History is user/model pairs of one turn each: no half turn survived."""
    assert len(history) % 2 == 0, f"odd history length {len(history)}"
    for user, model in zip(history[::2], history[1::2], strict=True):
        assert user.role == content_pb2.ROLE_USER and model.role == content_pb2.ROLE_MODEL
        assert user.turn_id == model.turn_id
        assert f'"{user.parts[0].text}"' in model.parts[0].text


async def test_sigkill_loses_no_acknowledged_turn(tmp_path: Path) -> None:
    """Turns acknowledged before SIGKILL are all there after a restart, and no half turns."""
    db = f"sqlite:///{tmp_path}/chatd.db"
    server = await ChatdProcess("--database-url", db).start()
    acknowledged: dict[str, set[str]] = {}
    # Killed once this many turns were acknowledged, with 16 more in flight.
    wanted = 60
    enough = asyncio.Event()
    try:
        async with server.channel() as channel:
            stub, _ = server.stubs(channel)
            sessions = [f"s{i}" for i in range(8)]
            for sid in sessions:
                await stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
                acknowledged[sid] = set()

            async def client(n: int) -> None:
                sid = sessions[n % len(sessions)]
                i = 0
                while True:
                    text = f"c{n}-{i}"
                    try:
                        reply = await stub.SendMessage(
                            pb.SendMessageRequest(session_id=sid, text=text)
                        )
                    except grpc.aio.AioRpcError:
                        return  # the server died under us: this turn was never acknowledged
                    acknowledged[sid].add(reply.reply.turn_id)
                    if sum(len(turns) for turns in acknowledged.values()) >= wanted:
                        enough.set()
                    i += 1

            clients = [asyncio.create_task(client(n)) for n in range(16)]
            counted = asyncio.create_task(enough.wait())
            await asyncio.wait([counted, *clients], return_when=asyncio.FIRST_COMPLETED)
            assert enough.is_set(), "a client stopped before the kill"
            server.send_signal(signal.SIGKILL)
            await asyncio.gather(*clients)
    finally:
        await server.kill()

    restarted = await ChatdProcess("--database-url", db).start()
    try:
        async with restarted.channel() as channel:
            stub, _ = restarted.stubs(channel)
            for sid, turn_ids in acknowledged.items():
                history = await all_messages(stub, sid)
                assert_whole_turns(history)
                assert turn_ids <= {m.turn_id for m in history}, f"{sid} lost acknowledged turns"
                got = await stub.GetSession(pb.GetSessionRequest(session_id=sid))
                assert got.session.message_count == len(history)
    finally:
        await restarted.kill()


async def test_sigterm_drains_live_streams_and_flips_health(tmp_path: Path) -> None:
    """On SIGTERM health turns NOT_SERVING, running streams finish whole, the process exits 0."""
    server = await ChatdProcess(
        "--database-url",
        f"sqlite:///{tmp_path}/chatd.db",
        "--echo-delay-ms",
        "20",
        "--grace-period",
        "10",
    ).start()
    try:
        async with server.channel() as channel:
            stub, health = server.stubs(channel)
            await stub.CreateSession(pb.CreateSessionRequest(session_id="live"))
            for i in range(5):
                await stub.CreateSession(pb.CreateSessionRequest(session_id=f"st{i}"))
            watch = health.Watch(health_pb2.HealthCheckRequest(service="chatd.v1.ChatService"))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            started = [asyncio.Event() for _ in range(5)]
            # About ten 20 ms chunks: the streams are still running when SIGTERM comes.
            text = " ".join(["x"] * 40)

            async def stream(i: int) -> pb.Reply:
                events = []
                request = pb.StreamReplyRequest(session_id=f"st{i}", text=text)
                async for event in stub.StreamReply(request):
                    events.append(event)
                    started[i].set()
                return events[-1].reply

            streams = [asyncio.create_task(stream(i)) for i in range(5)]
            # Every stream is admitted (it has its first event) before the signal.
            for each in started:
                await each.wait()
            server.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(watch.read(), 30)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            replies = await asyncio.gather(*streams)
            assert all(r.finish_reason == content_pb2.FINISH_REASON_STOP for r in replies)
        assert await server.wait() == 0
        assert any(e.get("event") == "stopped" for e in server.log)
    finally:
        await server.kill()

    restarted = await ChatdProcess("--database-url", f"sqlite:///{tmp_path}/chatd.db").start()
    try:
        async with restarted.channel() as channel:
            stub, _ = restarted.stubs(channel)
            for i in range(5):
                history = await all_messages(stub, f"st{i}")
                assert len(history) == 2
                assert_whole_turns(history)
    finally:
        await restarted.kill()
