"""Concurrent retries of one request_id: the request runs once and every retry gets its
result (README: "a retry that arrives while the first is still running waits for it")."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2
from tests.conftest import StartChatd
from tests.helpers import all_messages

CALL_TIMEOUT = 2.0  # a retry left waiting forever shows up as DEADLINE_EXCEEDED
CHANNELS = 4


def tally(
    codes: Counter[str],
    problems: list[str],
    sid: str,
    results: list[Any],
    history: list[content_pb2.Message],
) -> None:
    """Counts the statuses of one round; notes other than one turn answered and stored."""
    for result in results:
        codes[result.code().name if isinstance(result, grpc.aio.AioRpcError) else "OK"] += 1
    turn_ids = {r.reply.turn_id for r in results if isinstance(r, pb.SendMessageResponse)}
    if len(turn_ids) > 1:
        problems.append(f"{sid}: one request_id answered with turns {sorted(turn_ids)}")
    if len(history) != 2:
        problems.append(f"{sid}: {len(history)} messages stored for one turn")


async def duplicates(start_chatd: StartChatd, rounds: int, copies: int) -> None:
    """Each round sends `copies` copies of a CreateSession, then of a SendMessage, each pair
    of copies sharing a request_id, over CHANNELS connections so that they truly overlap."""
    chatd = await start_chatd(rate_limit=0)
    channels = [grpc.aio.insecure_channel(chatd.address) for _ in range(CHANNELS)]
    stubs = [chat_service_pb2_grpc.ChatServiceStub(channel) for channel in channels]
    codes: Counter[str] = Counter()
    problems: list[str] = []
    try:
        for round_ in range(rounds):
            sid = f"dup-{round_}"
            create = pb.CreateSessionRequest(session_id=sid, request_id=f"create-{round_}")
            created = await asyncio.gather(
                *(
                    stubs[n % CHANNELS].CreateSession(create, timeout=CALL_TIMEOUT)
                    for n in range(copies)
                ),
                return_exceptions=True,
            )
            send = pb.SendMessageRequest(session_id=sid, text="once", request_id=f"send-{round_}")
            sent = await asyncio.gather(
                *(
                    stubs[n % CHANNELS].SendMessage(send, timeout=CALL_TIMEOUT)
                    for n in range(copies)
                ),
                return_exceptions=True,
            )
            tally(codes, problems, sid, [*created, *sent], await all_messages(chatd.stub, sid))
    finally:
        for channel in channels:
            await channel.close()
    print(
        f"{copies} concurrent copies of one request_id x {rounds} rounds (CreateSession and "
        f"SendMessage): statuses {' '.join(f'{c}={n}' for c, n in codes.most_common())}; "
        f"{len(problems)} sessions with other than one turn"
    )
    assert set(codes) == {"OK"}, codes
    assert not problems, problems[:10]


async def test_concurrent_retries_of_one_request_id_all_get_the_first_result(
    start_chatd: StartChatd,
) -> None:
    """Fast tier: 5 rounds of 12 simultaneous copies of a CreateSession and of a SendMessage
    with one request_id each: all OK with the same turn, one turn stored, none left hanging."""
    await duplicates(start_chatd, rounds=5, copies=12)


@pytest.mark.soak
@pytest.mark.timeout(600)
async def test_soak_concurrent_retries_of_one_request_id_run_once(
    start_chatd: StartChatd,
) -> None:
    """Soak: 20 rounds of 20 simultaneous copies."""
    await duplicates(start_chatd, rounds=20, copies=20)
