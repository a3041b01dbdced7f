"""Shared helpers of the reliability suite: turns, history checks, tallies, processes."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2
from tests.helpers import all_messages
from tests.process import ChatdProcess

# The echo provider's reply: `Echo: "<user text>" - turn N of this conversation, M earlier ...`.
ECHO_REPLY = re.compile(
    r'^Echo: "(?P<said>.*)" - turn (?P<turn>\d+) of this conversation, '
    r"(?P<earlier>\d+) earlier messages",
    re.DOTALL,
)


@dataclass(frozen=True)
class Ack:
    """A turn the server acknowledged: it must be in history from then on."""

    session_id: str
    turn_id: str
    text: str
    reply: str


def echo_turn(reply_text: str) -> tuple[str, int, int]:
    """(what the user said, the turn number, earlier messages) of an echo reply."""
    match = ECHO_REPLY.match(reply_text)
    assert match is not None, f"not an echo reply: {reply_text[:120]!r}"
    return match["said"], int(match["turn"]), int(match["earlier"])


def text_of(message: content_pb2.Message) -> str:
    return "".join(part.text for part in message.parts)


async def send_turn(
    stub: Any,
    session_id: str,
    text: str,
    *,
    stream: bool,
    request_id: str = "",
    timeout: float | None = None,
) -> pb.Reply:
    """One turn through SendMessage or StreamReply; the reply summary either way."""
    if not stream:
        request = pb.SendMessageRequest(session_id=session_id, text=text, request_id=request_id)
        sent: pb.SendMessageResponse = await stub.SendMessage(request, timeout=timeout)
        return sent.reply
    streamed = stub.StreamReply(
        pb.StreamReplyRequest(session_id=session_id, text=text, request_id=request_id),
        timeout=timeout,
    )
    final: pb.Reply | None = None
    async for event in streamed:
        if event.HasField("reply"):
            final = event.reply
    assert final is not None, "the stream ended without its final reply event"
    return final


def echo_pair(user: content_pb2.Message, model: content_pb2.Message) -> bool:
    """The model message is the echo provider's answer to this user message."""
    return text_of(model).startswith(f'Echo: "{text_of(user)}"')


def history_problems(
    history: Sequence[content_pb2.Message],
    pair_ok: Callable[[content_pb2.Message, content_pb2.Message], bool] = echo_pair,
) -> list[str]:
    """Every way `history` is not a run of whole turns (a user message and its model reply,
    with one turn id each): a half turn, a torn pair, a repeated turn or a text stored twice
    (every test sends each text once)."""
    problems: list[str] = []
    if len(history) % 2:
        problems.append(f"odd length {len(history)}: a half turn")
    seen: set[str] = set()
    said: set[str] = set()
    for index, (user, model) in enumerate(zip(history[::2], history[1::2], strict=False)):
        where = f"messages {2 * index}-{2 * index + 1}"
        if user.role != content_pb2.ROLE_USER or model.role != content_pb2.ROLE_MODEL:
            problems.append(f"{where}: roles {user.role}/{model.role}")
        elif user.turn_id != model.turn_id or not user.turn_id:
            problems.append(f"{where}: turn ids {user.turn_id!r}/{model.turn_id!r}")
        elif not pair_ok(user, model):
            problems.append(f"{where}: reply {text_of(model)[:60]!r} to {text_of(user)[:60]!r}")
        if user.turn_id in seen:
            problems.append(f"{where}: turn {user.turn_id} appears twice")
        if text_of(user) in said:
            problems.append(f"{where}: {text_of(user)[:60]!r} was stored twice")
        seen.add(user.turn_id)
        said.add(text_of(user))
    return problems


def lost_turns(acks: Iterable[Ack], history: Sequence[content_pb2.Message]) -> list[Ack]:
    """Acknowledged turns missing from history (or stored with other text)."""
    stored = {m.turn_id: text_of(m) for m in history if m.role == content_pb2.ROLE_USER}
    return [ack for ack in acks if stored.get(ack.turn_id) != ack.text]


def misplaced_turns(acks: Iterable[Ack], history: Sequence[content_pb2.Message]) -> list[Ack]:
    """Acknowledged echo turns whose "turn N" is not their place in history: the model saw
    another history than the one the turn was stored on top of (interleaving, stale cache)."""
    wrong: list[Ack] = []
    for ack in acks:
        _, number, earlier = echo_turn(ack.reply)
        index = 2 * (number - 1)
        if (
            earlier != index
            or index >= len(history)
            or history[index].turn_id != ack.turn_id
            or text_of(history[index]) != ack.text
        ):
            wrong.append(ack)
    return wrong


@dataclass
class SessionCheck:
    """What reading one session back found."""

    turns: int
    half_turns: int
    lost: int
    misplaced: int
    count_mismatch: bool
    problems: list[str]


async def check_session(stub: Any, session_id: str, acks: Sequence[Ack]) -> SessionCheck:
    history = await all_messages(stub, session_id)
    problems = history_problems(history)
    lost = lost_turns(acks, history)
    misplaced = misplaced_turns([a for a in acks if a not in lost], history)
    got = await stub.GetSession(pb.GetSessionRequest(session_id=session_id))
    mismatch = got.session.message_count != len(history)
    details = problems + [f"lost {a.turn_id} {a.text!r}" for a in lost[:3]]
    details += [f"misplaced {a.turn_id} {a.text!r}" for a in misplaced[:3]]
    if mismatch:
        details.append(f"message_count {got.session.message_count} != {len(history)} read")
    return SessionCheck(
        len(history) // 2, len(problems), len(lost), len(misplaced), mismatch, details
    )


def histogram(codes: Counter[str]) -> str:
    """`OK=812 INVALID_ARGUMENT=140 ...`, most frequent first."""
    return " ".join(f"{code}={count}" for code, count in codes.most_common()) or "(none)"


def sqlite_url(tmp_path: Path, name: str = "chatd.db") -> str:
    return f"sqlite:///{tmp_path}/{name}"


async def start_process(database_url: str, *args: str) -> ChatdProcess:
    """A chatd subprocess on `database_url`, rate limiting off so load is never refused."""
    return await ChatdProcess("--database-url", database_url, "--rate-limit", "0", *args).start()


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls `predicate` every 10 ms; fails the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
