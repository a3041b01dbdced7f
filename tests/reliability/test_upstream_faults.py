"""Upstream faults on the fake Gemini: the right status, bounded retries, history unchanged."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import Drop, FakeGemini, HttpError, RecordedRequest, Reply, Script
from tests.helpers import all_messages, rich_details
from tests.reliability.common import (
    Ack,
    history_problems,
    misplaced_turns,
    send_turn,
    wait_until,
)

PROVIDER_TIMEOUT = 2.0  # chatd's own bound on a model call (3 quick tries fit easily)
SLOW = 4.0  # how long the slow faults keep the model silent
CALLER_DEADLINE = 0.5
RPCS = ("SendMessage", "StreamReply")


@dataclass(frozen=True)
class Fault:
    """An upstream misbehaviour and what chatd must make of it."""

    name: str
    script: Script
    code: grpc.StatusCode
    tries: int  # upstream requests per turn: the SDK retries 429/5xx, 3 tries in all
    reasons: tuple[str | None, ...]  # chatd's ErrorInfo reason (None: the caller's deadline)
    caller_deadline: float | None = None
    retry_seconds: int | None = None  # the RetryInfo delay chatd must pass on


FAULTS = (
    Fault(
        "429",
        HttpError(429, "slow down", retry_delay="3s"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        3,
        ("UPSTREAM_RATE_LIMITED",),
        retry_seconds=3,
    ),
    Fault("500", HttpError(500, "oops"), grpc.StatusCode.UNAVAILABLE, 3, ("UPSTREAM_UNAVAILABLE",)),
    Fault(
        "503",
        HttpError(503, "overloaded"),
        grpc.StatusCode.UNAVAILABLE,
        3,
        ("UPSTREAM_UNAVAILABLE",),
    ),
    Fault(
        "slow-past-provider-timeout",
        Reply(text="late", delay=SLOW),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        1,
        ("UPSTREAM_TIMEOUT",),
    ),
    Fault(
        "slow-past-caller-deadline",
        Reply(text="late", delay=SLOW),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        1,
        # Either deadline may fire first: chatd shortens its own to the caller's.
        (None, "UPSTREAM_TIMEOUT"),
        caller_deadline=CALLER_DEADLINE,
    ),
    Fault(
        "mid-stream-error",
        Reply(text="a b c d", chunks=4, error_after=2, error=HttpError(503, "gone")),
        grpc.StatusCode.UNAVAILABLE,
        1,
        ("UPSTREAM_UNAVAILABLE",),
    ),
    Fault(
        "mid-stream-drop",
        Reply(text="a b c d", chunks=4, drop_after=2),
        grpc.StatusCode.UNAVAILABLE,
        1,
        ("UPSTREAM_UNAVAILABLE",),
    ),
    Fault(
        "dropped-before-response", Drop(), grpc.StatusCode.UNAVAILABLE, 1, ("UPSTREAM_UNAVAILABLE",)
    ),
)
BY_NAME = {fault.name: fault for fault in FAULTS}


def route(request: RecordedRequest) -> Script:
    """The fake's answer: the fault a turn's text names (`<fault>#<n>`), else a reply worded
    like the echo provider's, so turn numbers can be checked against history."""
    said = request.texts()
    last = said[-1] if said else ""
    fault = BY_NAME.get(last.split("#", 1)[0])
    if fault is not None:
        return fault.script
    earlier = len(request.contents) - 1
    text = f'Echo: "{last}" - turn {len(said)} of this conversation, {earlier} earlier messages'
    return Reply(text=text)


@dataclass
class Outcome:
    """One turn and what came of it."""

    session_id: str
    text: str
    rpc: str
    fault: Fault | None
    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str | None = None
    retry_seconds: int | None = None
    reply: pb.Reply | None = None

    def problem(self, tries: int) -> str | None:
        """What is wrong with this outcome given the upstream requests it caused."""
        where = f"{self.rpc} {self.text!r}"
        if self.fault is None:
            return None if self.code == grpc.StatusCode.OK else f"{where}: {self.code.name}"
        fault = self.fault
        if self.code != fault.code or self.reason not in fault.reasons:
            want = f"{fault.code.name}/{'|'.join(map(str, fault.reasons))}"
            return f"{where}: {self.code.name}/{self.reason}, want {want}"
        if self.retry_seconds != fault.retry_seconds:
            return f"{where}: RetryInfo {self.retry_seconds}, want {fault.retry_seconds}"
        if tries > fault.tries:
            return f"{where}: {tries} upstream tries, at most {fault.tries} allowed"
        return None


async def run_turn(chatd: Chatd, session_id: str, text: str, rpc: str) -> Outcome:
    fault = BY_NAME.get(text.split("#", 1)[0])
    outcome = Outcome(session_id, text, rpc, fault)
    timeout = fault.caller_deadline if fault and fault.caller_deadline else 120.0
    try:
        outcome.reply = await send_turn(
            chatd.stub, session_id, text, stream=rpc == "StreamReply", timeout=timeout
        )
    except grpc.aio.AioRpcError as exc:
        outcome.code = exc.code()
        details = rich_details(exc)
        if "ErrorInfo" in details:
            outcome.reason = details["ErrorInfo"].reason
        if "RetryInfo" in details:
            outcome.retry_seconds = details["RetryInfo"].retry_delay.seconds
    return outcome


def upstream_tries(fake: FakeGemini) -> Counter[str]:
    """Model requests per turn text (the last user text of each request)."""
    return Counter(r.texts()[-1] for r in fake.requests if r.method and r.texts())


async def gemini_chatd(start_chatd: StartChatd, fake: FakeGemini) -> Chatd:
    fake.set_default(route)
    provider = fast_gemini(fake, timeout=PROVIDER_TIMEOUT, retry_attempts=3)
    server: Chatd = await start_chatd(provider=provider, rate_limit=0)
    return server


async def seeded_sessions(chatd: Chatd, ids: Sequence[str]) -> dict[str, list[content_pb2.Message]]:
    """Creates sessions with one good turn each; their histories."""

    async def seed(sid: str) -> list[content_pb2.Message]:
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
        await send_turn(chatd.stub, sid, f"ok#{sid}-seed", stream=False)
        return await all_messages(chatd.stub, sid)

    return dict(zip(ids, await asyncio.gather(*(seed(sid) for sid in ids)), strict=True))


async def settled(chatd: Chatd) -> None:
    """Waits until chatd has ended every turn, those of callers that gave up included (it
    makes no upstream try after)."""
    replies = chatd.running.chats.replies
    await wait_until(lambda: replies.running == 0, 30, "chatd to end the turns callers left")


async def fault_wave(
    chatd: Chatd, fake: FakeGemini, fault: Fault, per_rpc: int, wave: int
) -> tuple[list[str], Counter[int]]:
    """`per_rpc` turns failing with `fault` through each RPC at once, each on its own
    session; the problems found and how many upstream tries the turns made."""
    cells = [(rpc, n) for rpc in RPCS for n in range(per_rpc)]
    ids = [f"w{wave}-{fault.name}-{rpc}-{n}" for rpc, n in cells]
    before = await seeded_sessions(chatd, ids)
    outcomes = await asyncio.gather(
        *(
            run_turn(chatd, sid, f"{fault.name}#{sid}", rpc)
            for sid, (rpc, _) in zip(ids, cells, strict=True)
        )
    )
    await settled(chatd)
    tries = upstream_tries(fake)
    problems = [p for o in outcomes if (p := o.problem(tries[o.text])) is not None]
    # A caller whose deadline passes while chatd is still getting to the model made no try.
    least = 0 if fault.caller_deadline else fault.tries
    problems += [
        f"{o.rpc} {o.text!r}: made {tries[o.text]} tries, want {least}..{fault.tries}"
        for o in outcomes
        if not least <= tries[o.text] <= fault.tries
    ]
    for sid in ids:
        if await all_messages(chatd.stub, sid) != before[sid]:
            problems.append(f"{sid}: history changed by a failed turn")
    return problems, Counter(tries[o.text] for o in outcomes)


async def run_matrix(chatd: Chatd, fake: FakeGemini, per_rpc: int, wave: int) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    problems: list[str] = []
    summary: list[str] = []
    for fault in FAULTS:
        found, tries = await fault_wave(chatd, fake, fault, per_rpc, wave)
        problems += found
        summary.append(f"{fault.name}={'/'.join(str(t) for t in sorted(tries))}")
    turns = len(FAULTS) * len(RPCS) * per_rpc
    print(
        f"upstream fault matrix #{wave} ({per_rpc} concurrent turn(s) per fault and RPC, "
        f"{turns} failing turns in {loop.time() - started:.1f}s): {turns - len(problems)} right "
        f"status/tries/history, {len(problems)} wrong; upstream tries per turn: "
        f"{' '.join(summary)}"
    )
    assert not problems, problems[:10]


async def test_upstream_fault_matrix_gives_right_status_bounded_retries_unchanged_history(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """Fast tier: 429, 500, 503, slow past chatd's timeout, slow past the caller's deadline,
    mid-stream error, mid-stream drop and a drop before any response, through SendMessage
    and StreamReply: the README's status and reason, 3 tries for 429/5xx and 1 otherwise,
    and the session's history exactly as before."""
    chatd = await gemini_chatd(start_chatd, fake_gemini)
    await run_matrix(chatd, fake_gemini, per_rpc=1, wave=1)


async def mixed_sessions(
    chatd: Chatd, fake: FakeGemini, sessions: int, turns: int, round_: int, rng: random.Random
) -> None:
    """Every session gets `turns` turns at once, about 60% good and 40% failing with random
    faults; at the end each history is exactly its good turns, whole and in place."""
    ids = [f"mix{round_}-{i}" for i in range(sessions)]
    for sid in ids:
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    plan = [
        (
            sid,
            f"{'ok' if rng.random() < 0.6 else rng.choice(FAULTS).name}#{sid}-{n}",
            rng.choice(RPCS),
        )
        for sid in ids
        for n in range(turns)
    ]
    outcomes = await asyncio.gather(*(run_turn(chatd, sid, text, rpc) for sid, text, rpc in plan))
    await settled(chatd)
    tries = upstream_tries(fake)
    problems = [p for o in outcomes if (p := o.problem(tries[o.text])) is not None]
    good: dict[str, list[Ack]] = defaultdict(list)
    for o in outcomes:
        if o.fault is None and o.reply is not None:
            good[o.session_id].append(Ack(o.session_id, o.reply.turn_id, o.text, o.reply.text))
    for sid in ids:
        history = await all_messages(chatd.stub, sid)
        stored = [m.parts[0].text for m in history[::2]]
        if sorted(stored) != sorted(a.text for a in good[sid]):
            problems.append(f"{sid}: history holds {len(stored)} turns, {len(good[sid])} succeeded")
        problems += [f"{sid}: {p}" for p in history_problems(history)]
        problems += [f"{sid}: {a.text} misplaced" for a in misplaced_turns(good[sid], history)]
    codes = Counter(o.code.name for o in outcomes)
    print(
        f"mixed good and failing turns, round {round_}: {len(plan)} turns on {sessions} sessions "
        f"({sum(len(v) for v in good.values())} good), statuses "
        f"{' '.join(f'{c}={n}' for c, n in codes.most_common())}; {len(problems)} problems"
    )
    assert not problems, problems[:10]


@pytest.mark.soak
@pytest.mark.timeout(600)
async def test_soak_upstream_faults_under_concurrency_leave_histories_whole(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """Soak: the matrix with 16 concurrent failing turns per fault and RPC, three times, then
    rounds of good and failing turns mixed on the same sessions."""
    chatd = await gemini_chatd(start_chatd, fake_gemini)
    for wave in range(1, 4):
        await run_matrix(chatd, fake_gemini, per_rpc=16, wave=wave)
    rng = random.Random()
    for round_ in range(1, 4):
        await mixed_sessions(chatd, fake_gemini, sessions=12, turns=24, round_=round_, rng=rng)
