"""The domain without a transport: TurnEngine and ChatSessions on the memory store, with
a scripted model (tests.scripted_model), server tools that wait on events, and a clock
the test moves by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

import pytest

from server.sessions.engine import TurnEngine, TurnInput
from server.sessions.events import (
    MessageCompleted,
    ReplyStarted,
    TextDelta,
    ToolCallAnswered,
    ToolCallRequested,
    TurnCompleted,
    TurnEvent,
)
from server.sessions.model import DEFAULT_TENANT, Message, Part, Session, SessionSettings
from server.sessions.ports import ReplyEvents
from server.sessions.service import ChatSessions
from server.store import MemoryStore
from server.tools import Tool, ToolError, ToolRegistry, tool
from tests.scripted_model import ScriptedModel

TENANT = DEFAULT_TENANT
T0 = 1_700_000_000.0
# The round limit every engine here runs with: small, so a test reaches it in a few calls.
MAX_TOOL_ROUNDS = 3


class Clock:
    """The time every component reads: it moves only when the test advances it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StoredEvents:
    """An EventEncoder keeping each payload's events in memory, so a test reads stored
    replies back as the domain's own events (the rpc layer's encoder writes protobuf)."""

    def __init__(self) -> None:
        self._payloads: dict[bytes, tuple[TurnEvent, ...]] = {}

    def __call__(self, first_seq: int, events: Sequence[TurnEvent]) -> bytes:
        key = f"{len(self._payloads)}:{first_seq}".encode()
        self._payloads[key] = tuple(events)
        return key

    def decode(self, chunks: Iterable[ReplyEvents]) -> list[TurnEvent]:
        return [event for chunk in chunks for event in self._payloads[chunk.payload]]


@dataclass
class Bench:
    """What the server tools report and wait on: `entered[name]` is set when a call of
    that tool starts, and `release` lets `block` calls return."""

    entered: dict[str, asyncio.Event] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runs: list[str] = field(default_factory=list)

    def started(self, name: str) -> asyncio.Event:
        return self.entered.setdefault(name, asyncio.Event())

    def tools(self) -> list[Tool]:
        bench = self

        @tool
        async def double(n: int) -> int:
            """Doubles a number.

            Args:
                n: The number to double.
            """
            bench.runs.append(f"double({n})")
            return 2 * n

        @tool
        async def refuse(why: str) -> str:
            """Always refuses.

            Args:
                why: What to say.
            """
            bench.runs.append("refuse")
            raise ToolError(f"refused: {why}")

        @tool
        async def block() -> str:
            """Returns once the test releases it."""
            bench.runs.append("block")
            bench.started("block").set()
            await bench.release.wait()
            return "released"

        @tool
        async def meet(side: str) -> str:
            """Returns once the call for the other side has started too: two calls of it
            in one round end only if they run at the same time.

            Args:
                side: "left" or "right".
            """
            other = "right" if side == "left" else "left"
            bench.started(side).set()
            await bench.started(other).wait()
            return f"{side} met {other}"

        return [double, refuse, block, meet]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    opened = MemoryStore()
    yield opened
    await opened.close()


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
def bench() -> Bench:
    return Bench()


@pytest.fixture
def tools(bench: Bench) -> ToolRegistry:
    return ToolRegistry(bench.tools())


@pytest.fixture
def engine(
    store: MemoryStore, model: ScriptedModel, tools: ToolRegistry, clock: Clock
) -> TurnEngine:
    return TurnEngine(store, model, tools, max_tool_rounds=MAX_TOOL_ROUNDS, clock=clock)


@pytest.fixture
def events() -> StoredEvents:
    return StoredEvents()


@pytest.fixture
async def chats(
    store: MemoryStore,
    model: ScriptedModel,
    tools: ToolRegistry,
    clock: Clock,
    events: StoredEvents,
) -> AsyncIterator[ChatSessions]:
    sessions = ChatSessions(
        store,
        model,
        tools,
        event_encoder=events,
        clock=clock,
        max_tool_rounds=MAX_TOOL_ROUNDS,
    )
    yield sessions
    await sessions.drain(0)


# ----------------------------------------------------------------------------- helpers


async def new_session(
    store: MemoryStore, clock: Clock, session_id: str = "s", **settings: object
) -> Session:
    """Stores an empty session with these SessionSettings fields, as CreateSession would."""
    session = Session(
        TENANT,
        session_id,
        SessionSettings(**settings),  # type: ignore[arg-type]
        create_time=clock(),
        update_time=clock(),
        uid=f"uid-{session_id}",
    )
    await store.create_session(session)
    return session


async def settle() -> None:
    """Lets every task that can run, run, until all wait on something (no time passes):
    then a task still waiting is held by what it waits on, not by the scheduler."""
    for _ in range(50):
        await asyncio.sleep(0)


def said(text: str) -> TurnInput:
    return TurnInput(parts=(Part(text=text),))


async def run(engine: TurnEngine, turn: TurnInput | str, session_id: str = "s") -> list[TurnEvent]:
    """Runs one turn to its end; its events."""
    given = said(turn) if isinstance(turn, str) else turn
    return [event async for event in engine.run(TENANT, session_id, given)]


async def run_turn(
    chats: ChatSessions, turn: TurnInput | str, session_id: str = "s", **options: object
) -> list[object]:
    """ChatSessions.run_turn to its end: ReplyStarted, then the turn's events (or, for a
    replayed reply, its stored payloads)."""
    given = said(turn) if isinstance(turn, str) else turn
    return [event async for event in chats.run_turn(TENANT, session_id, given, **options)]  # type: ignore[arg-type]


def outcome(events: Sequence[object]) -> TurnCompleted:
    last = events[-1]
    assert isinstance(last, TurnCompleted), last
    return last


def describe(message: Message) -> str:
    """A message in one line: "user: hi", "model: call double({'n': 2})",
    "user: double -> {'result': 4}"."""
    said_: list[str] = []
    for part in message.parts:
        if part.text is not None:
            said_.append(part.text)
        elif part.function_call is not None:
            said_.append(f"call {part.function_call.name}({part.function_call.args})")
        elif part.function_response is not None:
            response = part.function_response
            said_.append(f"{response.name} -> {response.response}")
    return f"{message.role.value}: {' | '.join(said_)}"


async def history(store: MemoryStore, session_id: str = "s") -> list[str]:
    return [describe(m) for m in await store.recent_messages(TENANT, session_id)]


def kinds(events: Iterable[object]) -> list[str]:
    """Event kinds in order, consecutive text deltas as one "text"."""
    names = {
        ReplyStarted: "started",
        TextDelta: "text",
        ToolCallRequested: "call",
        ToolCallAnswered: "answer",
        MessageCompleted: "message",
        TurnCompleted: "completed",
    }
    out: list[str] = []
    for event in events:
        name = names.get(type(event), type(event).__name__)
        if not (name == "text" and out and out[-1] == "text"):
            out.append(name)
    return out
