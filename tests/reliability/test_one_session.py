"""Concurrent senders on one session: every turn whole, none interleaved, none lost."""

from __future__ import annotations

import asyncio

import pytest

from chatd.v1 import chat_service_pb2 as pb
from tests.conftest import Chatd, StartChatd
from tests.helpers import all_messages
from tests.reliability.common import Ack, echo_turn, history_problems, misplaced_turns, send_turn

SENDERS = 50


async def burst(chatd: Chatd, session_id: str, round_: int, senders: int) -> list[Ack]:
    """`senders` turns sent at once on one session, half SendMessage, half StreamReply."""

    async def sender(n: int) -> Ack:
        text = f"{session_id} r{round_} sender {n}"
        reply = await send_turn(chatd.stub, session_id, text, stream=bool(n % 2), timeout=120)
        return Ack(session_id, reply.turn_id, text, reply.text)

    return await asyncio.gather(*(sender(n) for n in range(senders)))


async def check_burst(chatd: Chatd, session_id: str, acks: list[Ack], before: int) -> list[str]:
    """Problems with one burst: its turn numbers are exactly before+1..before+len(acks), each
    reply answered its own text, and history holds each turn at the place its reply named."""
    numbers = sorted(echo_turn(ack.reply)[1] for ack in acks)
    problems: list[str] = []
    if numbers != list(range(before + 1, before + len(acks) + 1)):
        problems.append(f"{session_id}: turn numbers {numbers} are not distinct and consecutive")
    problems += [
        f"{a.turn_id} answered another text" for a in acks if echo_turn(a.reply)[0] != a.text
    ]
    history = await all_messages(chatd.stub, session_id)
    if len(history) != 2 * (before + len(acks)):
        problems.append(f"{session_id}: {len(history)} messages, want {2 * (before + len(acks))}")
    problems += [f"{session_id}: {p}" for p in history_problems(history)]
    problems += [f"{session_id}: {a.text!r} misplaced" for a in misplaced_turns(acks, history)]
    return problems


async def run_bursts(chatd: Chatd, sessions: int, rounds: int) -> None:
    ids = [f"one-{i}" for i in range(sessions)]
    for sid in ids:
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    loop = asyncio.get_running_loop()
    for round_ in range(rounds):
        started = loop.time()
        bursts = await asyncio.gather(*(burst(chatd, sid, round_, SENDERS) for sid in ids))
        elapsed = loop.time() - started
        problems = [
            p
            for sid, acks in zip(ids, bursts, strict=True)
            for p in await check_burst(chatd, sid, acks, round_ * SENDERS)
        ]
        turns = sum(len(acks) for acks in bursts)
        print(
            f"{SENDERS} concurrent senders x {sessions} session(s), round {round_ + 1}/{rounds}: "
            f"{turns} whole turns in {elapsed:.2f}s, turn numbers "
            f"{round_ * SENDERS + 1}..{(round_ + 1) * SENDERS} each exactly once per session, "
            f"{len(problems)} interleaved/lost/misplaced"
        )
        assert not problems, problems[:10]


async def test_50_concurrent_senders_on_one_session_make_50_whole_turns(
    start_chatd: StartChatd,
) -> None:
    """Fast tier: 50 turns sent at once on one session run one at a time in full: replies
    say turn 1..50 once each and history holds each turn where its reply said."""
    chatd = await start_chatd(rate_limit=0, echo_delay_ms=1)
    await run_bursts(chatd, sessions=1, rounds=1)


@pytest.mark.soak
@pytest.mark.timeout(600)
async def test_soak_50_concurrent_senders_on_10_sessions_never_interleave(
    start_chatd: StartChatd,
) -> None:
    """Soak: 10 sessions each take 50 concurrent senders at once, for 4 rounds (2,000 turns)."""
    chatd = await start_chatd(rate_limit=0, echo_delay_ms=2)
    await run_bursts(chatd, sessions=10, rounds=4)
