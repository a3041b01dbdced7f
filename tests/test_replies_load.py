"""100 background replies whose callers leave after the first event, on one chatd process:
every one completes and is stored, and the process hands the memory they took back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2
from tests.helpers import all_messages
from tests.process import ChatdProcess

SESSIONS = 100
WARM_UP = 10
# Seconds the whole load may take to complete: generous, it takes about one second.
LOAD_TIMEOUT = 60.0


def rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ChatdProcess]:
    """chatd on SQLite with the echo provider, each reply taking a moment (5 deltas,
    10 ms before each)."""
    process = ChatdProcess(
        "--database-url",
        f"sqlite:///{tmp_path}/load.db",
        "--rate-limit",
        "0",
        env={"CHATD_PROVIDER": "echo", "CHATD_ECHO_DELAY_MS": "10"},
    )
    await process.start()
    try:
        yield process
    finally:
        await process.kill()


async def leave_after_the_first_event(stub: Any, session_id: str) -> str:
    """A background StreamReply whose caller reads the first event and goes; its reply id."""
    call = stub.StreamReply(
        pb.StreamReplyRequest(session_id=session_id, text=f"to {session_id}", background=True)
    )
    first = await call.read()
    call.cancel()
    assert first.sequence_number == 1 and first.reply_id
    return str(first.reply_id)


async def wait_until_ended(stub: Any, reply_ids: Sequence[str]) -> list[pb.ReplyInfo]:
    """Polls GetReply until none of the replies is RUNNING; their final records."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOAD_TIMEOUT
    ended: dict[str, pb.ReplyInfo] = {}
    while True:
        for reply_id in reply_ids:
            if reply_id not in ended:
                got = await stub.GetReply(pb.GetReplyRequest(reply_id=reply_id, skip_events=True))
                if got.reply.state != pb.REPLY_STATE_RUNNING:
                    ended[reply_id] = got.reply
        if len(ended) == len(reply_ids):
            return [ended[r] for r in reply_ids]
        assert loop.time() < deadline, f"{len(reply_ids) - len(ended)} replies still running"
        await asyncio.sleep(0.05)


async def run_batch(stub: Any, session_ids: Sequence[str]) -> list[pb.ReplyInfo]:
    """One background reply per session, all at once, each caller leaving at once; waits
    for them all to end."""
    reply_ids = await asyncio.gather(
        *(leave_after_the_first_event(stub, sid) for sid in session_ids)
    )
    return await wait_until_ended(stub, reply_ids)


async def settle(stub: Any) -> None:
    """A few cheap calls, so that whatever runs after the load has run."""
    for _ in range(5):
        await stub.ListSessions(pb.ListSessionsRequest(page_size=1))
        await asyncio.sleep(0.05)


async def test_100_background_replies_left_by_their_callers_complete_and_memory_returns(
    server: ChatdProcess,
) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    async with server.channel() as channel:
        stub, _ = server.stubs(channel)
        warm = [f"warm-{i}" for i in range(WARM_UP)]
        sessions = [f"load-{i}" for i in range(SESSIONS)]
        for sid in warm + sessions:
            await stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
        for info in await run_batch(stub, warm):
            assert info.state == pb.REPLY_STATE_COMPLETED
        await settle(stub)
        before = rss_kib(pid)

        infos = await run_batch(stub, sessions)
        await settle(stub)
        after = rss_kib(pid)

        states = [pb.ReplyState.Name(info.state) for info in infos]
        assert states == ["REPLY_STATE_COMPLETED"] * SESSIONS
        for sid, info in zip(sessions, infos, strict=True):
            assert info.session_id == sid and info.background
            history = await all_messages(stub, sid)
            assert [m.role for m in history] == [content_pb2.ROLE_USER, content_pb2.ROLE_MODEL]
            assert history[0].parts[0].text == f"to {sid}"
            assert {m.turn_id for m in history} == {info.turn_id}
    print(f"RSS before {before} KiB, after {after} KiB ({(after - before) / before:+.1%})")
    assert after <= before * 1.10, f"RSS grew from {before} KiB to {after} KiB"
