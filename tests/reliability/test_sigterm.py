"""SIGTERM with live streams: health flips, streams drain within the grace period, exit 0,
no half turns after a restart."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2
from tests.reliability.common import Ack, check_session, sqlite_url, start_process

STREAMS = 20
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Stream:
    """One live StreamReply: when it ended, how, and how many events came after SIGTERM."""

    session_id: str
    text: str
    live: asyncio.Event
    reply: pb.Reply | None = None
    error: str | None = None
    ended: float = 0.0
    events_after_term: int = 0


async def run_stream(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, stream: Stream, term: asyncio.Event
) -> None:
    """Reads one StreamReply to its end, noting events that arrive after SIGTERM."""
    loop = asyncio.get_running_loop()
    call = stub.StreamReply(
        pb.StreamReplyRequest(session_id=stream.session_id, text=stream.text), timeout=60
    )
    try:
        async for event in call:
            stream.live.set()
            stream.events_after_term += term.is_set()
            if event.HasField("reply"):
                stream.reply = event.reply
    except grpc.aio.AioRpcError as exc:
        stream.error = exc.code().name
    stream.ended = loop.time()


@dataclass
class Drain:
    """What one SIGTERM did."""

    health_flip: float  # seconds from SIGTERM to NOT_SERVING on the Watch stream
    last_stream_end: float  # seconds from SIGTERM to the last stream's end
    exit_after: float
    exit_code: int
    streams: list[Stream]


async def sigterm_during_streams(
    db: str, cycle: int, *, echo_delay_ms: int, grace: float, words_per_chunk: int = 4
) -> Drain:
    """Starts chatd, opens a health Watch and STREAMS replies, sends SIGTERM once every
    stream has had an event, and waits for the streams and the process to end."""
    loop = asyncio.get_running_loop()
    server = await start_process(
        db,
        "--echo-delay-ms",
        str(echo_delay_ms),
        "--grace-period",
        str(grace),
        "--echo-words-per-chunk",
        str(words_per_chunk),
    )
    try:
        async with server.channel() as channel:
            stub, health = server.stubs(channel)
            streams = [
                Stream(f"term{cycle}-{i}", f"stream {i} of cycle {cycle}", asyncio.Event())
                for i in range(STREAMS)
            ]
            for stream in streams:
                await stub.CreateSession(pb.CreateSessionRequest(session_id=stream.session_id))
            watch = health.Watch(health_pb2.HealthCheckRequest(service="chatd.v1.ChatService"))
            assert (await watch.read()).status == SERVING
            term = asyncio.Event()
            tasks = [asyncio.create_task(run_stream(stub, s, term)) for s in streams]
            await asyncio.wait_for(asyncio.gather(*(s.live.wait() for s in streams)), 20)
            signalled = loop.time()
            term.set()
            server.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(watch.read(), 5)
            assert status.status == NOT_SERVING, status
            flip = loop.time() - signalled
            await asyncio.wait_for(asyncio.gather(*tasks), grace + 10)
        code = await server.wait(grace + 10)
        exited = loop.time() - signalled
    finally:
        await server.kill()
    last = max(s.ended for s in streams) - signalled
    return Drain(flip, last, exited, code, streams)


async def half_turns_after_restart(db: str, streams: list[Stream]) -> tuple[int, int, int]:
    """(turns stored, half turns, acknowledged turns lost) on a restarted server."""
    server = await start_process(db)
    try:
        async with server.channel() as channel:
            stub, _ = server.stubs(channel)
            checks = []
            for s in streams:
                acks = [Ack(s.session_id, s.reply.turn_id, s.text, s.reply.text)] if s.reply else []
                checks.append(await check_session(stub, s.session_id, acks))
    finally:
        await server.kill()
    problems = [p for c in checks for p in c.problems]
    assert not problems, problems[:10]
    return (
        sum(c.turns for c in checks),
        sum(c.half_turns for c in checks),
        sum(c.lost for c in checks),
    )


async def drain_cycles(tmp_path: Path, cycles: int) -> None:
    db = sqlite_url(tmp_path)
    grace = 10.0
    for cycle in range(1, cycles + 1):
        drain = await sigterm_during_streams(db, cycle, echo_delay_ms=50, grace=grace)
        whole = [
            s
            for s in drain.streams
            if s.reply is not None and s.reply.finish_reason == content_pb2.FINISH_REASON_STOP
        ]
        stored, half, lost = await half_turns_after_restart(db, drain.streams)
        print(
            f"SIGTERM #{cycle}/{cycles} with {STREAMS} live streams: health NOT_SERVING after "
            f"{drain.health_flip * 1e3:.0f} ms, {len(whole)}/{STREAMS} streams finished with a "
            f"final reply {drain.last_stream_end:.2f}s after SIGTERM (grace {grace:.0f}s, "
            f"{sum(s.events_after_term for s in drain.streams)} events sent while draining), "
            f"exit {drain.exit_code} after {drain.exit_after:.2f}s; after restart {stored} "
            f"turns stored, {half} half turns, {lost} lost"
        )
        assert len(whole) == STREAMS, [s.error for s in drain.streams if s.reply is None]
        assert drain.last_stream_end < grace
        assert drain.exit_code == 0
        assert stored == STREAMS and half == lost == 0


async def test_sigterm_with_20_live_streams_drains_them_within_the_grace_period(
    tmp_path: Path,
) -> None:
    """Fast tier: SIGTERM while 20 one-second streams run: the Watch stream sees NOT_SERVING,
    every stream ends with its final reply inside the 10 s grace period, the process exits 0,
    and after a restart each session holds exactly its one whole turn."""
    await drain_cycles(tmp_path, cycles=1)


@pytest.mark.soak
@pytest.mark.timeout(600)
async def test_soak_sigterm_cycles_with_20_live_streams_drain_whole(tmp_path: Path) -> None:
    """Soak: five SIGTERM/restart cycles on one database, 20 live streams each."""
    await drain_cycles(tmp_path, cycles=5)


@pytest.mark.soak
@pytest.mark.timeout(300)
async def test_soak_sigterm_past_the_grace_period_stores_no_half_turn(tmp_path: Path) -> None:
    """Soak: streams that outlast a 1 s grace period are cut off; the process still exits 0
    and none of the cut turns is stored, whole or in part."""
    db = sqlite_url(tmp_path)
    # One word a delta: 20 deltas 150 ms apart, a 3 s stream.
    drain = await sigterm_during_streams(db, 1, echo_delay_ms=150, grace=1.0, words_per_chunk=1)
    cut = [s for s in drain.streams if s.reply is None]
    stored, half, lost = await half_turns_after_restart(db, drain.streams)
    print(
        f"SIGTERM past a 1 s grace period with {STREAMS} three-second streams: {len(cut)} cut "
        f"off ({', '.join(sorted({s.error or '?' for s in cut}))}), exit {drain.exit_code} "
        f"after {drain.exit_after:.2f}s; after restart {stored} turns stored, {half} half turns"
    )
    assert len(cut) == STREAMS
    assert drain.exit_code == 0
    assert stored == half == lost == 0
