"""Fuzzed and malformed requests to every RPC: no crash, never UNKNOWN or INTERNAL."""

from __future__ import annotations

import asyncio
import os
import random
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from hypothesis.strategies import SearchStrategy

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import session_pb2
from server.rpc import interceptors
from tests.conftest import Chatd, StartChatd
from tests.helpers import all_messages
from tests.reliability.common import histogram, send_turn
from tests.reliability.fuzz_values import Pools
from tests.reliability.fuzzing import Method, methods, requests, spread
from tests.reliability.hostile import hostile_cases
from tests.reliability.malformed import malformed
from tests.store.conftest import fresh_schema, postgres_dsn

# UNDECODABLE: a successful response a standard protobuf client cannot decode.
BAD_CODES = frozenset({"UNKNOWN", "INTERNAL", "UNDECODABLE"})
SOAK_CONCURRENCY = 16  # the fast tier sends one at a time, so that its fixed seed replays exactly
CALL_TIMEOUT = 10.0  # a call still running then counts as left hanging


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class Outcomes:
    """Every status seen, per code and per method, with an example of each kind of bad one."""

    codes: Counter[str] = field(default_factory=Counter)
    bad: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def record(self, method: Method, code: str, details: str, request: Any) -> None:
        self.codes[code] += 1
        if code in BAD_CODES:
            name = method.path.rsplit("/", 1)[1]
            self.bad[(name, code)] += 1
            kind = (name, code, details[:70])
            if kind not in self.examples and len(self.examples) < 12:
                shown = repr(request)[:200].replace("\n", " ")
                self.examples[kind] = f"{name} -> {code} {details[:150]!r} for {shown}"


class ExceptionRecorder:
    """Stands in for chatd's RPC logger and counts the exceptions it logs as unhandled (the
    causes of INTERNAL), by type, message and innermost frame in server/."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: Counter[str] = Counter()  # by "Type at server/file.py:line"
        self.samples: dict[str, str] = {}  # one message of each

    def error(self, event: str, **fields: Any) -> Any:
        exc = fields.get("exc_info")
        if isinstance(exc, BaseException):
            where = describe(exc)
            self.seen[where] += 1
            self.samples.setdefault(where, str(exc)[:100])
        return self.inner.error(event, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def describe(exc: BaseException) -> str:
    """`Type at server/file.py:line`, the innermost frame of chatd's own code."""
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/server/" in frame.filename:
            where = f"{frame.filename.split('/server/', 1)[1]}:{frame.lineno}"
    return f"{type(exc).__name__} at server/{where}"


@pytest.fixture
def unhandled(monkeypatch: pytest.MonkeyPatch) -> ExceptionRecorder:
    recorder = ExceptionRecorder(interceptors.log)
    monkeypatch.setattr(interceptors, "log", recorder)
    return recorder


async def call_raw(channel: grpc.aio.Channel, method: Method, data: bytes) -> tuple[str, str]:
    """Sends `data` as the serialized request of `method`; (status code, details). Every
    response is decoded with the standard protobuf client: one it refuses is UNDECODABLE."""
    try:
        if not method.streaming:
            unary = channel.unary_unary(
                method.path, request_serializer=_identity, response_deserializer=_identity
            )
            return _decodable(method, [await unary(data, timeout=CALL_TIMEOUT)])
        stream = channel.unary_stream(
            method.path, request_serializer=_identity, response_deserializer=_identity
        )
        call = stream(data, timeout=CALL_TIMEOUT)
        responses = []
        async for response in call:
            responses.append(response)
            if method.endless:  # health Watch: the first status answers the request
                call.cancel()
                break
        return _decodable(method, responses)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""


def _decodable(method: Method, responses: list[bytes]) -> tuple[str, str]:
    for data in responses:
        try:
            method.response.FromString(data)
        except DecodeError as exc:
            return "UNDECODABLE", str(exc)
    return "OK", ""


async def unreadable_sessions(chatd: Chatd) -> list[str]:
    """Sessions whose GetSession, ListMessages or ExportSession the typed stub (the standard
    protobuf client) cannot read back: what a poisoned session looks like."""
    stub = chatd.stub
    problems: list[str] = []
    token = ""
    while True:
        page = await stub.ListSessions(pb.ListSessionsRequest(page_size=100, page_token=token))
        for session in page.sessions:
            sid = session.session_id
            try:
                await stub.GetSession(pb.GetSessionRequest(session_id=sid))
                await all_messages(stub, sid)
                await stub.ExportSession(pb.ExportSessionRequest(session_id=sid))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # expired meanwhile
                    problems.append(f"{sid}: {exc.code().name} {exc.details()}")
        token = page.next_page_token
        if not token:
            return problems


def encode(request: Any) -> bytes:
    """A request message serialized, or malformed bytes as they are."""
    return request if isinstance(request, bytes) else request.SerializeToString()


async def fire(chatd: Chatd, cases: list[tuple[Method, Any]], concurrency: int) -> Outcomes:
    """Sends every case, `concurrency` at a time, and tallies the statuses."""
    outcomes = Outcomes()
    limit = asyncio.Semaphore(concurrency)

    async def one(method: Method, request: Any) -> None:
        async with limit:
            code, details = await call_raw(chatd.channel, method, encode(request))
        outcomes.record(method, code, details, request)

    await asyncio.gather(*(one(m, r) for m, r in cases))
    return outcomes


async def seed_pools(chatd: Chatd) -> Pools:
    """Sessions of every kind (plain, tools, caller tools with a paused turn, a context
    policy, labels) with history, so fuzzed requests reach real sessions, messages, page
    tokens and exported documents."""
    stub = chatd.stub
    kinds = [
        session_pb2.Session(),
        session_pb2.Session(tools=["get_current_time", "calculate", "date_diff"]),
        session_pb2.Session(
            function_declarations=[session_pb2.FunctionDeclaration(name="lookup_order")]
        ),
        session_pb2.Session(
            context_policy=session_pb2.ContextPolicy(max_messages=2, max_tokens=50)
        ),
        session_pb2.Session(labels={"env": "prod", "team": "search"}, display_name="fz"),
    ]
    ids = [f"fz-{i}" for i in range(len(kinds))]
    for sid, session in zip(ids, kinds, strict=True):
        await stub.CreateSession(pb.CreateSessionRequest(session_id=sid, session=session))
        for n in range(3):
            await send_turn(stub, sid, f"seed {n}", stream=bool(n % 2))
    await send_turn(stub, ids[2], '/call lookup_order {"order": 7}', stream=False)
    message_ids = [m.message_id for sid in ids for m in await all_messages(stub, sid)]
    tokens = [
        (await stub.ListSessions(pb.ListSessionsRequest(page_size=1))).next_page_token,
        (
            await stub.ListMessages(pb.ListMessagesRequest(session_id=ids[0], page_size=1))
        ).next_page_token,
        (await stub.ListTools(pb.ListToolsRequest(page_size=1))).next_page_token,
    ]
    documents = [
        (await stub.ExportSession(pb.ExportSessionRequest(session_id=sid))).document for sid in ids
    ]
    paused = (await stub.GetSession(pb.GetSessionRequest(session_id=ids[2]))).session
    return Pools(
        ids,
        message_ids,
        [t for t in tokens if t],
        [d.SerializeToString() for d in documents],
        [c.id for c in paused.pending_tool_calls],
    )


async def health_problem(chatd: Chatd) -> str | None:
    """Why the server is not healthy (health not SERVING, a normal turn failing), or None."""
    try:
        checked = await chatd.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        if checked.status != health_pb2.HealthCheckResponse.SERVING:
            return f"health says {checked.status}"
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="after"), timeout=10)
        reply = await send_turn(chatd.stub, "after", "still there?", stream=True, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return None if "still there?" in reply.text else f"odd reply {reply.text!r}"


FAST_SEED = 20261122  # the fast tier replays one seed; soak runs draw a new one


def fuzz_seed(default: int | None) -> int:
    """CHATD_FUZZ_SEED if set, else `default`, else a random seed (printed to repeat it)."""
    chosen = os.environ.get("CHATD_FUZZ_SEED")
    if chosen:
        return int(chosen)
    return default if default is not None else random.randrange(1 << 30)


def report(
    what: str,
    outcomes: Outcomes,
    unhandled: ExceptionRecorder,
    sick: str | None,
    seed: int,
    seconds: float,
) -> None:
    total = sum(outcomes.codes.values())
    bad = sum(outcomes.codes[c] for c in BAD_CODES)
    print(
        f"{what}: {total} requests in {seconds:.1f}s (seed {seed}, CHATD_FUZZ_SEED to repeat), "
        f"{1 if sick else 0} crashes, {bad} UNKNOWN/INTERNAL/UNDECODABLE, "
        f"{outcomes.codes['DEADLINE_EXCEEDED']} left hanging past {CALL_TIMEOUT:.0f}s; "
        f"statuses: {histogram(outcomes.codes)}"
    )
    if sick:
        print(f"  unhealthy afterwards: {sick}")
    if bad:
        by_method = ", ".join(f"{m} {c}={n}" for (m, c), n in outcomes.bad.most_common())
        print(f"  UNKNOWN/INTERNAL/UNDECODABLE by method: {by_method}")
        for example in outcomes.examples.values():
            print(f"  e.g. {example}")
    for cause, count in unhandled.seen.most_common():
        print(f"  server logged {count} x {cause}, e.g. {unhandled.samples[cause]!r}")


async def fuzz(
    start_chatd: StartChatd,
    unhandled: ExceptionRecorder,
    what: str,
    cases_for: Callable[[Method, Pools], SearchStrategy[Any]],
    total: int,
    seed: int | None,
    concurrency: int,
    *,
    hostile: bool = False,
    **server: Any,
) -> None:
    """Sends `total` cases drawn from `cases_for` (spread over every method) to a fresh
    server, then checks it is still healthy, that no status was UNKNOWN or INTERNAL and no
    response undecodable (other codes, DEADLINE_EXCEEDED included, are counted and
    printed), and that every session it left can still be read back."""
    chatd = await start_chatd(rate_limit=0, **server)
    pools = await seed_pools(chatd)
    chosen = fuzz_seed(seed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    cases = spread(methods(), lambda m: cases_for(m, pools), total, chosen)
    if hostile:
        cases = hostile_cases(pools) + cases
    outcomes = await fire(chatd, cases, concurrency)
    elapsed = loop.time() - started
    sick = await health_problem(chatd)
    report(what, outcomes, unhandled, sick, chosen, elapsed)
    assert sick is None, sick
    assert not outcomes.bad, list(outcomes.examples.values())
    poisoned = await unreadable_sessions(chatd)
    assert not poisoned, poisoned


async def test_fuzzed_requests_never_crash_or_answer_unknown_or_internal(
    start_chatd: StartChatd, unhandled: ExceptionRecorder
) -> None:
    """Fast tier: ~700 hypothesis-built requests spread over every RPC (random strings incl.
    unicode/NUL/huge, extreme ints, unknown enums, nested parts, bad masks and page tokens),
    after the known-hostile cases of tests/reliability/hostile.py."""
    await fuzz(start_chatd, unhandled, "fuzzed requests", requests, 700, FAST_SEED, 1, hostile=True)


async def test_fuzzed_requests_on_postgresql_never_crash_or_answer_unknown_or_internal(
    start_chatd: StartChatd, unhandled: ExceptionRecorder
) -> None:
    """Fast tier on PostgreSQL (CHATD_TEST_POSTGRES_DSN): the hostile cases and ~300 fuzzed
    requests meet a second SQL dialect, whose text columns refuse NUL and whose integers
    are bounded differently."""
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        await fuzz(
            start_chatd,
            unhandled,
            "fuzzed requests on PostgreSQL",
            requests,
            300,
            FAST_SEED,
            1,
            hostile=True,
            database_url=dsn,
            postgres_schema=schema,
        )


async def test_malformed_request_bytes_never_answer_unknown_or_internal(
    start_chatd: StartChatd, unhandled: ExceptionRecorder
) -> None:
    """Fast tier: ~300 undecodable payloads (random, truncated, corrupted, bad UTF-8, wrong
    wire types, lying lengths, nesting past the recursion limit) to every method path."""
    await fuzz(start_chatd, unhandled, "malformed wire bytes", malformed, 300, FAST_SEED, 1)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_soak_10000_fuzzed_requests_never_crash_or_answer_unknown_or_internal(
    start_chatd: StartChatd, unhandled: ExceptionRecorder
) -> None:
    """Soak: 10,000 hypothesis-built requests over every RPC."""
    await fuzz(
        start_chatd,
        unhandled,
        "fuzzed requests",
        requests,
        10_000,
        None,
        SOAK_CONCURRENCY,
        hostile=True,
    )


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_soak_5000_malformed_request_bytes_are_never_unknown_or_internal(
    start_chatd: StartChatd, unhandled: ExceptionRecorder
) -> None:
    """Soak: 5,000 undecodable payloads to every method path."""
    await fuzz(
        start_chatd, unhandled, "malformed wire bytes", malformed, 5_000, None, SOAK_CONCURRENCY
    )
