"""Two replicas on one PostgreSQL under load: nothing lost, no half turns, races ABORTED."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from tests.conftest import Chatd, StartChatd
from tests.helpers import all_messages, rich_details
from tests.reliability.common import Ack, check_session, histogram, send_turn
from tests.store.conftest import fresh_schema, postgres_dsn

MAX_ATTEMPTS = 100  # tries of one turn (same request_id) before a client gives up on it


@pytest.fixture
async def replicas(start_chatd: StartChatd) -> AsyncIterator[tuple[Chatd, Chatd]]:
    """Two servers sharing one fresh schema; echo replies take ~20 ms so turns overlap."""
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        options = {
            "database_url": dsn,
            "postgres_schema": schema,
            "echo_delay_ms": 1,
            "rate_limit": 0,
        }
        first = await start_chatd(**options)
        second = await start_chatd(**options)
        yield first, second
        for replica in (first, second):
            await replica.running.stop(grace=0)


@dataclass
class Load:
    """What the clients saw."""

    acks: list[Ack] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    aborted: int = 0
    aborted_with_reason: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0


async def client(
    n: int,
    replicas: tuple[Chatd, Chatd],
    sessions: list[str],
    load: Load,
    turns: int,
    stop_at: float,
    rng: random.Random,
    round_: int,
) -> None:
    """Sends turns to random shared sessions, alternating replicas; a turn that loses a race
    (ABORTED) is retried with the same request_id on the other replica."""
    loop = asyncio.get_running_loop()
    for i in range(turns):
        if loop.time() > stop_at:
            return
        sid, text, stream = rng.choice(sessions), f"r{round_}-c{n}-{i}", bool(i % 2)
        for attempt in range(MAX_ATTEMPTS):
            replica = replicas[(n + i + attempt) % 2]
            try:
                reply = await send_turn(
                    replica.stub,
                    sid,
                    text,
                    stream=stream,
                    request_id=f"r{round_}-{n}-{i}",
                    timeout=60,
                )
            except grpc.aio.AioRpcError as exc:
                load.codes[exc.code().name] += 1
                if exc.code() != grpc.StatusCode.ABORTED:
                    return
                load.aborted += 1
                info = rich_details(exc).get("ErrorInfo")
                load.aborted_with_reason[info.reason if info else "(no ErrorInfo)"] += 1
                await asyncio.sleep(rng.uniform(0, 0.005 * min(attempt + 1, 10)))
                continue
            load.codes["OK"] += 1
            load.acks.append(Ack(sid, reply.turn_id, text, reply.text))
            break
        else:
            load.gave_up += 1


async def replicated_load(
    replicas: tuple[Chatd, Chatd],
    *,
    clients: int,
    sessions: int,
    turns: int,
    seconds: float,
    round_: int,
) -> None:
    a, b = replicas
    loop = asyncio.get_running_loop()
    ids = [f"pg{round_}-{i}" for i in range(sessions)]
    for n, sid in enumerate(ids):
        await replicas[n % 2].stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    load = Load()
    rng = random.Random()
    started = loop.time()
    await asyncio.gather(
        *(
            client(
                n,
                replicas,
                ids,
                load,
                turns,
                started + seconds,
                random.Random(rng.random()),
                round_,
            )
            for n in range(clients)
        )
    )
    elapsed = loop.time() - started
    problems: list[str] = []
    lost = half = misplaced = differing = 0
    for sid in ids:
        acks = [ack for ack in load.acks if ack.session_id == sid]
        for replica in replicas:
            check = await check_session(replica.stub, sid, acks)
            lost, half = lost + check.lost, half + check.half_turns
            misplaced += check.misplaced
            problems += [f"{sid}: {p}" for p in check.problems]
        if await all_messages(a.stub, sid) != await all_messages(b.stub, sid):
            differing += 1
            problems.append(f"{sid}: the replicas read different histories")
    print(
        f"two replicas on PostgreSQL, round {round_}: {clients} clients alternating replicas on "
        f"{sessions} shared sessions for {elapsed:.1f}s: {len(load.acks)} acknowledged turns, "
        f"{lost} lost, {half} half turns, {misplaced} misplaced, {load.aborted} race losers "
        f"ABORTED ({histogram(load.aborted_with_reason)}) and retried, {load.gave_up} given up, "
        f"{differing} sessions read differently; statuses: {histogram(load.codes)}"
    )
    assert not problems, problems[:10]
    assert set(load.codes) <= {"OK", "ABORTED"}, load.codes
    assert load.gave_up == 0
    assert len(load.acks) >= clients, "too little load to mean anything"


async def test_two_replicas_under_load_lose_nothing_and_abort_race_losers_cleanly(
    replicas: tuple[Chatd, Chatd],
) -> None:
    """Fast tier: 16 clients alternate two replicas on 4 shared PostgreSQL sessions: every
    acknowledged turn is stored once, whole and where its reply said; losers get ABORTED
    (with ErrorInfo) and store nothing; both replicas read identical histories."""
    await replicated_load(replicas, clients=16, sessions=4, turns=30, seconds=4.0, round_=1)


@pytest.mark.soak
@pytest.mark.timeout(600)
async def test_soak_two_replicas_under_64_clients_lose_nothing(
    replicas: tuple[Chatd, Chatd],
) -> None:
    """Soak: 64 clients on 8 shared sessions, two rounds of up to 45 s each."""
    for round_ in (1, 2):
        await replicated_load(
            replicas, clients=64, sessions=8, turns=400, seconds=45.0, round_=round_
        )
