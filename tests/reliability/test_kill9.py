"""kill -9 under concurrent clients, then restart: no acknowledged turn lost, no half turn."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from tests.process import ChatdProcess
from tests.reliability.common import (
    Ack,
    check_session,
    histogram,
    send_turn,
    sqlite_url,
    start_process,
    wait_until,
)

MAX_TURNS_PER_CLIENT = 2_000  # a client never sends more than this in one cycle
LOAD_TIMEOUT = 60.0  # seconds a cycle may run before the kill at the latest


@dataclass
class Cycle:
    """One life of the server: clients load it until it is killed."""

    number: int
    killed: bool = False
    acks: list[Ack] = field(default_factory=list)
    errors_before_kill: Counter[str] = field(default_factory=Counter)
    errors_at_kill: Counter[str] = field(default_factory=Counter)


async def client(
    server: ChatdProcess, cycle: Cycle, n: int, sessions: list[str], rng: random.Random
) -> None:
    """Sends turns to random sessions, alternating SendMessage and StreamReply, until the
    server dies (or the per-cycle bound is reached)."""
    async with server.channel() as channel:
        stub, _ = server.stubs(channel)
        for i in range(MAX_TURNS_PER_CLIENT):
            sid = rng.choice(sessions)
            text = f"k{cycle.number}-c{n}-{i}"
            try:
                reply = await send_turn(stub, sid, text, stream=bool(i % 2), timeout=LOAD_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                errors = cycle.errors_at_kill if cycle.killed else cycle.errors_before_kill
                errors[exc.code().name] += 1
                if cycle.killed:
                    return  # in flight at the kill: never acknowledged
                continue
            cycle.acks.append(Ack(sid, reply.turn_id, text, reply.text))


async def load_and_kill(
    server: ChatdProcess,
    cycle: Cycle,
    clients: int,
    sessions: list[str],
    rng: random.Random,
    window: tuple[float, float],
) -> float:
    """Runs `clients` clients and SIGKILLs the server at a random moment in `window` seconds
    after the load is up (twice as many turns acknowledged as there are clients); returns
    that moment."""
    tasks = [
        asyncio.create_task(client(server, cycle, n, sessions, random.Random(rng.random())))
        for n in range(clients)
    ]
    await wait_until(lambda: len(cycle.acks) >= 2 * clients, LOAD_TIMEOUT, "the load to be up")
    delay = rng.uniform(*window)
    await asyncio.sleep(delay)
    cycle.killed = True
    server.send_signal(signal.SIGKILL)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await server.wait()
    return delay


async def kill9_cycles(
    tmp_path: Path,
    *,
    cycles: int,
    clients: int,
    sessions: int,
    window: tuple[float, float],
    seed: int,
) -> None:
    rng = random.Random(seed)
    db = sqlite_url(tmp_path)
    session_ids = [f"kill-{i}" for i in range(sessions)]
    acks: dict[str, list[Ack]] = defaultdict(list)
    server = await start_process(db)
    try:
        async with server.channel() as channel:
            stub, _ = server.stubs(channel)
            for sid in session_ids:
                await stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
        totals = Counter[str]()
        for number in range(1, cycles + 1):
            cycle = Cycle(number)
            delay = await load_and_kill(server, cycle, clients, session_ids, rng, window)
            for ack in cycle.acks:
                acks[ack.session_id].append(ack)
            server = await start_process(db)
            async with server.channel() as channel:
                stub, _ = server.stubs(channel)
                checks = [await check_session(stub, sid, acks[sid]) for sid in session_ids]
            stored = sum(c.turns for c in checks)
            acked = sum(len(v) for v in acks.values())
            figures = Counter(
                acked=len(cycle.acks),
                lost=sum(c.lost for c in checks),
                half=sum(c.half_turns for c in checks),
                misplaced=sum(c.misplaced for c in checks),
                count_mismatch=sum(c.count_mismatch for c in checks),
            )
            totals.update(figures)
            print(
                f"kill -9 #{number}/{cycles} under {clients} clients (seed {seed}, killed "
                f"{delay:.2f}s after load-up): {figures['acked']} acknowledged turns "
                f"({acked} so far, {stored} stored incl. {stored - acked} in flight at a kill), "
                f"{figures['lost']} lost, {figures['half']} half turns, "
                f"{figures['misplaced']} misplaced; errors before kill: "
                f"{histogram(cycle.errors_before_kill)}; at kill: "
                f"{histogram(cycle.errors_at_kill)}"
            )
            problems = [p for c in checks for p in c.problems]
            assert not problems, problems[:10]
            assert not cycle.errors_before_kill, "calls failed while the server was up"
        print(
            f"kill -9 under {clients} clients, {cycles} cycles: {totals['acked']} acknowledged "
            f"turns, {totals['lost']} lost, {totals['half']} half turns"
        )
        assert totals["lost"] == totals["half"] == totals["misplaced"] == 0
        assert totals["count_mismatch"] == 0
    finally:
        await server.kill()


async def test_sigkill_under_16_clients_loses_no_acknowledged_turn(tmp_path: Path) -> None:
    """Fast tier: one SIGKILL under 16 clients on 12 SQLite sessions, then a restart: every
    acknowledged turn is stored, history is whole user/model pairs."""
    await kill9_cycles(
        tmp_path,
        cycles=1,
        clients=16,
        sessions=12,
        window=(0.1, 1.5),
        seed=random.randrange(1 << 30),
    )


@pytest.mark.soak
@pytest.mark.timeout(600)
async def test_soak_sigkill_cycles_under_64_clients_lose_no_acknowledged_turn(
    tmp_path: Path,
) -> None:
    """Soak: five kill -9/restart cycles under 64 clients on 48 sessions of one database."""
    await kill9_cycles(
        tmp_path,
        cycles=5,
        clients=64,
        sessions=48,
        window=(0.5, 6.0),
        seed=random.randrange(1 << 30),
    )
