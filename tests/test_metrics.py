"""Metrics: the decorators record around the real ports transparently, and /metrics serves them."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import prometheus_client
import pytest

from server.metrics import (
    OTHER,
    BoundedLabel,
    InstrumentedProvider,
    InstrumentedStore,
    InstrumentedTools,
    Metrics,
    start_metrics_server,
)
from server.providers.echo import EchoProvider
from server.sessions.errors import AlreadyExists, Conflict, NotFound, Unavailable
from server.sessions.model import FunctionDeclaration, Message, Part, Role, Usage
from server.sessions.ports import (
    ModelChunk,
    ModelRequest,
    SessionStore,
    TokenCount,
    ToolOutcome,
)
from server.store import CachedStore, MemoryStore
from server.tools import BUILTIN_TOOLS, ToolRegistry
from tests.helpers import HANG_GUARD
from tests.store.builders import TENANT, new_session, turn_of

STORE_OPS = "chatd_store_operation_duration_seconds_count"
MODEL_CALLS = "chatd_model_call_duration_seconds_count"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def request(model: str = "fake-model", text: str = "hi") -> ModelRequest:
    return ModelRequest(model=model, contents=[Message(Role.USER, (Part(text=text),))])


# ----------------------------------------------------------------------------- fakes


@dataclass
class FakeProvider:
    """Streams `chunks`, then raises `error` if set, or waits forever if `hang`; records
    whether its stream was cancelled or closed, and when its cleanup ran."""

    chunks: list[ModelChunk] = field(default_factory=list)
    error: BaseException | None = None
    hang: bool = False
    default: str = "fake-model"
    cleaned_up: asyncio.Event = field(default_factory=asyncio.Event)
    saw: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "fake"

    @property
    def default_model(self) -> str:
        return self.default

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        try:
            for chunk in self.chunks:
                yield chunk
            if self.error is not None:
                raise self.error
            if self.hang:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.saw.append("cancelled")
            raise
        except GeneratorExit:
            self.saw.append("closed")
            raise
        finally:
            self.cleaned_up.set()

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        return TokenCount(7, estimated=False)

    async def close(self) -> None:
        self.saw.append("provider closed")


@dataclass
class FakeTools:
    """Answers every call with `outcome`, after `started` is set and `release` is."""

    outcome: ToolOutcome = ToolOutcome({"result": 1}, is_error=False)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def declarations(self) -> Sequence[FunctionDeclaration]:
        return (FunctionDeclaration(name="wait"),)

    def names(self) -> frozenset[str]:
        return frozenset({"wait"})

    async def run(self, name: str, args: Mapping[str, object]) -> ToolOutcome:
        self.started.set()
        await self.release.wait()
        return self.outcome


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


async def drain(stream: AsyncIterator[ModelChunk]) -> list[ModelChunk]:
    return [chunk async for chunk in stream]


# ----------------------------------------------------------------------------- registry


def test_each_metrics_object_has_its_own_registry_not_the_global_one() -> None:
    one, two = Metrics(), Metrics()
    one.rpc_finished("/chatd.v1.ChatService/GetSession", "OK", 0.01, streaming=False)
    labels = {
        "grpc_service": "chatd.v1.ChatService",
        "grpc_method": "GetSession",
        "grpc_code": "OK",
    }
    assert one.registry.get_sample_value("chatd_rpc_requests_total", labels) == 1
    assert two.registry.get_sample_value("chatd_rpc_requests_total", labels) is None
    assert prometheus_client.REGISTRY.get_sample_value("chatd_rpc_requests_total", labels) is None


def test_rpc_hooks_count_calls_time_them_and_track_active_streams() -> None:
    metrics = Metrics()
    service = "chatd.v1.ChatService"
    stream = {"grpc_service": service, "grpc_method": "StreamReply"}
    unary = {"grpc_service": service, "grpc_method": "GetSession"}
    metrics.rpc_started(f"/{service}/StreamReply", streaming=True)
    metrics.rpc_started(f"/{service}/StreamReply", streaming=True)
    metrics.rpc_started(f"/{service}/GetSession", streaming=False)
    assert sample(metrics, "chatd_active_streams", **stream) == 2
    assert sample(metrics, "chatd_active_streams", **unary) is None

    metrics.rpc_finished(f"/{service}/StreamReply", "CANCELLED", 2.0, streaming=True)
    metrics.rpc_finished(f"/{service}/GetSession", "NOT_FOUND", 0.003, streaming=False)
    assert sample(metrics, "chatd_active_streams", **stream) == 1
    assert sample(metrics, "chatd_rpc_requests_total", **stream, grpc_code="CANCELLED") == 1
    assert sample(metrics, "chatd_rpc_requests_total", **unary, grpc_code="NOT_FOUND") == 1
    assert sample(metrics, "chatd_rpc_duration_seconds_sum", **stream, grpc_code="CANCELLED") == 2
    # 3 ms lands in the 5 ms bucket and not the 2.5 ms one: buckets start at 1 ms.
    bucket = "chatd_rpc_duration_seconds_bucket"
    assert sample(metrics, bucket, **unary, grpc_code="NOT_FOUND", le="0.0025") == 0
    assert sample(metrics, bucket, **unary, grpc_code="NOT_FOUND", le="0.005") == 1
    assert sample(metrics, bucket, **unary, grpc_code="NOT_FOUND", le="60.0") == 1


def test_bounded_label_folds_values_past_its_limit_into_other() -> None:
    label = BoundedLabel(2, ("default",))
    assert label.get("new") == OTHER  # get() never admits
    assert label.admit("new") == "new"
    assert label.admit("third") == OTHER
    assert (label.get("default"), label.get("new"), label.get("third")) == ("default", "new", OTHER)


# ----------------------------------------------------------------------------- store


def test_store_decorator_implements_every_session_store_method() -> None:
    wanted = {name for name in vars(SessionStore) if not name.startswith("_")}
    missing = {
        name
        for name in wanted
        if not inspect.iscoroutinefunction(getattr(InstrumentedStore, name, None))
    }
    assert missing == set()


async def test_store_operations_are_timed_by_outcome_and_answer_as_the_inner_store() -> None:
    metrics = Metrics()
    inner = MemoryStore()
    store = InstrumentedStore(inner, metrics)
    session = new_session("s1")

    await store.create_session(session)
    assert await store.get_session(TENANT, "s1") == await inner.get_session(TENANT, "s1")
    updated, messages = turn_of(session, ["hello", "hi"])
    await store.commit_turn(updated, messages, expected_version=session.version)
    assert await store.recent_messages(TENANT, "s1") == messages
    assert await store.count_sessions(TENANT) == 1

    with pytest.raises(NotFound):
        await store.get_session(TENANT, "missing")
    with pytest.raises(AlreadyExists):
        await store.create_session(session)
    with pytest.raises(Conflict):
        await store.commit_turn(updated, [], expected_version=session.version)

    assert sample(metrics, STORE_OPS, operation="create_session", outcome="ok") == 1
    assert sample(metrics, STORE_OPS, operation="create_session", outcome="duplicate") == 1
    assert sample(metrics, STORE_OPS, operation="get_session", outcome="ok") == 1
    assert sample(metrics, STORE_OPS, operation="get_session", outcome="not_found") == 1
    assert sample(metrics, STORE_OPS, operation="commit_turn", outcome="ok") == 1
    assert sample(metrics, STORE_OPS, operation="commit_turn", outcome="conflict") == 1
    assert sample(metrics, STORE_OPS, operation="recent_messages", outcome="ok") == 1
    assert sample(metrics, STORE_OPS, operation="count_sessions", outcome="ok") == 1


async def test_store_failure_propagates_unchanged_and_counts_as_error() -> None:
    failure = Unavailable("database down", reason="STORE_UNAVAILABLE")

    class BrokenStore(MemoryStore):
        async def list_messages(
            self, tenant: str, session_id: str, after_seq: int, limit: int
        ) -> list[Message]:
            raise failure

    metrics = Metrics()
    store = InstrumentedStore(BrokenStore(), metrics)
    with pytest.raises(Unavailable) as raised:
        await store.list_messages(TENANT, "s1", 0, 10)
    assert raised.value is failure
    assert sample(metrics, STORE_OPS, operation="list_messages", outcome="error") == 1


# ----------------------------------------------------------------------------- provider


async def test_provider_passes_chunks_through_and_counts_the_last_usage_once() -> None:
    """Streaming usage is cumulative: only the last report counts, once, per call."""
    chunks = [
        ModelChunk(parts=(Part(text="Hel"),), usage=Usage(prompt_tokens=10, candidates_tokens=1)),
        ModelChunk(parts=(Part(text="lo"),), usage=Usage(prompt_tokens=10, candidates_tokens=2)),
        ModelChunk(usage=Usage(prompt_tokens=10, candidates_tokens=3, thoughts_tokens=4)),
    ]
    inner = FakeProvider(chunks)
    metrics = Metrics()
    provider = InstrumentedProvider(inner, metrics)

    received = await drain(provider.stream(request("fake-model")))

    assert all(a is b for a, b in zip(received, chunks, strict=True))
    assert sample(metrics, "chatd_tokens_total", direction="input", model="fake-model") == 10
    assert sample(metrics, "chatd_tokens_total", direction="output", model="fake-model") == 3
    assert sample(metrics, "chatd_tokens_total", direction="thoughts", model="fake-model") == 4
    labels = {"provider": "fake", "model": "fake-model", "outcome": "ok"}
    assert sample(metrics, MODEL_CALLS, **labels) == 1


async def test_provider_error_propagates_unchanged_and_counts_by_its_reason() -> None:
    failure = Unavailable("try later", reason="UPSTREAM_UNAVAILABLE")
    metrics = Metrics()
    provider = InstrumentedProvider(FakeProvider([ModelChunk()], error=failure), metrics)

    with pytest.raises(Unavailable) as raised:
        await drain(provider.stream(request()))

    assert raised.value is failure
    reason = {"provider": "fake", "reason": "UPSTREAM_UNAVAILABLE"}
    assert sample(metrics, "chatd_model_errors_total", **reason) == 1
    labels = {"provider": "fake", "model": "fake-model", "outcome": "error"}
    assert sample(metrics, MODEL_CALLS, **labels) == 1


async def test_provider_bug_counts_as_reason_internal() -> None:
    metrics = Metrics()
    provider = InstrumentedProvider(FakeProvider(error=KeyError("oops")), metrics)
    with pytest.raises(KeyError):
        await drain(provider.stream(request()))
    assert sample(metrics, "chatd_model_errors_total", provider="fake", reason="INTERNAL") == 1


async def test_cancelling_the_consumer_mid_stream_cancels_upstream_and_records_cancelled() -> None:
    inner = FakeProvider([ModelChunk(parts=(Part(text="first"),))], hang=True)
    metrics = Metrics()
    provider = InstrumentedProvider(inner, metrics)
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(request()):
            got_first.set()

    task = asyncio.create_task(consume())
    await got_first.wait()  # the consumer goes on to wait on the hung upstream
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert inner.saw == ["cancelled"]
    labels = {"provider": "fake", "model": "fake-model", "outcome": "cancelled"}
    assert sample(metrics, MODEL_CALLS, **labels) == 1
    assert sample(metrics, "chatd_model_errors_total", provider="fake", reason="CANCELLED") is None


async def test_closing_the_stream_early_closes_upstream_at_once() -> None:
    """aclose() at a yield reaches the provider's stream before it returns, not at GC."""
    inner = FakeProvider([ModelChunk(parts=(Part(text=w),)) for w in ("a", "b", "c")])
    metrics = Metrics()
    stream = InstrumentedProvider(inner, metrics).stream(request())
    assert isinstance(stream, AsyncIterator)

    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]

    assert inner.saw == ["closed"] and inner.cleaned_up.is_set()
    labels = {"provider": "fake", "model": "fake-model", "outcome": "cancelled"}
    assert sample(metrics, MODEL_CALLS, **labels) == 1


async def test_client_chosen_models_are_labelled_only_once_served() -> None:
    """A model name a client made up cannot add series: it is "other" until a call succeeds."""
    metrics = Metrics()
    failing = InstrumentedProvider(
        FakeProvider(error=NotFound("no such model", reason="MODEL_NOT_FOUND")), metrics
    )
    with pytest.raises(NotFound):
        await drain(failing.stream(request("made-up-123")))
    assert sample(metrics, MODEL_CALLS, provider="fake", model=OTHER, outcome="error") == 1

    ok = InstrumentedProvider(FakeProvider([ModelChunk()]), metrics, max_models=2)
    for model in ("real-a", "real-b", "real-c"):
        await drain(ok.stream(request(model)))
    # The default model is admitted up front, so one more fits under max_models=2.
    assert sample(metrics, MODEL_CALLS, provider="fake", model="real-a", outcome="ok") == 1
    assert sample(metrics, MODEL_CALLS, provider="fake", model="real-b", outcome="ok") is None
    assert sample(metrics, MODEL_CALLS, provider="fake", model=OTHER, outcome="ok") == 2


async def test_provider_decorator_is_transparent_over_the_echo_provider() -> None:
    echo = EchoProvider(default_model="echo-1")
    metrics = Metrics()
    provider = InstrumentedProvider(echo, metrics)

    req = request("echo-1", "hello there")
    assert await drain(provider.stream(req)) == await drain(echo.stream(req))
    assert await provider.count_tokens(req) == await echo.count_tokens(req)
    assert (provider.name, provider.default_model) == ("echo", "echo-1")
    output = sample(metrics, "chatd_tokens_total", direction="output", model="echo-1")
    assert output is not None and output > 0


async def test_provider_close_reaches_the_inner_provider() -> None:
    inner = FakeProvider()
    await InstrumentedProvider(inner, Metrics()).close()
    assert inner.saw == ["provider closed"]


# ----------------------------------------------------------------------------- tools


async def test_tool_calls_are_counted_by_tool_and_outcome_and_timed() -> None:
    registry = ToolRegistry(BUILTIN_TOOLS)
    metrics = Metrics()
    tools = InstrumentedTools(registry, metrics)

    assert tools.names() == registry.names()
    assert tools.declarations() == registry.declarations()
    assert await tools.run("calculate", {"expression": "6*7"}) == await registry.run(
        "calculate", {"expression": "6*7"}
    )
    refused = await tools.run("calculate", {"expression": "1/0"})
    unknown = await tools.run("no_such_tool", {})

    assert refused.is_error and unknown.is_error
    assert sample(metrics, "chatd_tool_calls_total", tool="calculate", outcome="ok") == 1
    assert sample(metrics, "chatd_tool_calls_total", tool="calculate", outcome="error") == 1
    # Unregistered names, which a model may invent, never become label values.
    assert sample(metrics, "chatd_tool_calls_total", tool=OTHER, outcome="error") == 1
    assert sample(metrics, "chatd_tool_call_duration_seconds_count", tool="calculate") == 2


async def test_cancelled_tool_call_propagates_and_is_not_counted() -> None:
    fake = FakeTools()
    metrics = Metrics()
    task = asyncio.create_task(InstrumentedTools(fake, metrics).run("wait", {}))
    await fake.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sample(metrics, "chatd_tool_call_duration_seconds_count", tool="wait") is None


async def test_tool_runner_exception_propagates_unchanged_and_counts_as_error() -> None:
    """The ToolRunner contract rules exceptions out; if one escapes, it is still seen."""
    failure = RuntimeError("runner bug")

    class BrokenTools(FakeTools):
        async def run(self, name: str, args: Mapping[str, object]) -> ToolOutcome:
            raise failure

    metrics = Metrics()
    with pytest.raises(RuntimeError) as raised:
        await InstrumentedTools(BrokenTools(), metrics).run("wait", {})
    assert raised.value is failure
    assert sample(metrics, "chatd_tool_calls_total", tool="wait", outcome="error") == 1


# ----------------------------------------------------------------------------- cache


def test_cache_metrics_are_read_from_stats_at_scrape_time() -> None:
    metrics = Metrics()
    assert sample(metrics, "chatd_cache_hits_total") is None  # nothing watched yet
    stats = Stats(hits=3, misses=1, evictions=0, entries=2, bytes=512)
    metrics.watch_cache(lambda: stats)

    assert sample(metrics, "chatd_cache_hits_total") == 3
    stats.hits, stats.evictions, stats.bytes = 10, 4, 2048
    assert sample(metrics, "chatd_cache_hits_total") == 10
    assert sample(metrics, "chatd_cache_misses_total") == 1
    assert sample(metrics, "chatd_cache_evictions_total") == 4
    assert sample(metrics, "chatd_cache_entries") == 2
    assert sample(metrics, "chatd_cache_bytes") == 2048


async def test_cache_metrics_follow_a_real_cached_store() -> None:
    cached = CachedStore(MemoryStore(), 1 << 20)
    metrics = Metrics()
    metrics.watch_cache(lambda: cached.stats)
    await cached.create_session(new_session("s1"))
    await cached.get_session(TENANT, "s1")
    assert sample(metrics, "chatd_cache_hits_total") == cached.stats.hits == 1
    assert sample(metrics, "chatd_cache_entries") == 1
    assert sample(metrics, "chatd_cache_bytes") == cached.stats.bytes > 0


def test_failing_cache_stats_leave_the_other_metrics_scrapable() -> None:
    def broken() -> Stats:
        raise RuntimeError("store gone")

    metrics = Metrics()
    metrics.watch_cache(broken)
    metrics.rpc_finished("/s/m", "OK", 0.1, streaming=False)
    text = metrics.exposition().decode()
    assert 'chatd_rpc_requests_total{grpc_code="OK",grpc_method="m",grpc_service="s"} 1.0' in text
    assert "chatd_cache_hits_total" not in text


# ----------------------------------------------------------------------------- HTTP


async def http_request(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request on 127.0.0.1: status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.0", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), fields, body


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    """One HTTP/1.0 GET on 127.0.0.1: status, headers (lower-case names) and body."""
    status, headers, body = await http_request(port, path)
    return status, headers, body.decode()


async def test_endpoint_serves_the_exposition_at_metrics_and_404_elsewhere() -> None:
    metrics = Metrics()
    metrics.rpc_finished("/chatd.v1.ChatService/SendMessage", "OK", 0.2, streaming=False)
    server = await start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        assert server.port > 0
        status, headers, body = await http_get(server.port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert (
            "chatd_rpc_requests_total"
            '{grpc_code="OK",grpc_method="SendMessage",grpc_service="chatd.v1.ChatService"} 1.0'
        ) in body
        assert "# TYPE chatd_model_call_duration_seconds histogram" in body

        for path in ("/", "/metrics/extra", "/favicon.ico"):
            assert (await http_get(server.port, path))[0] == 404
    finally:
        await server.close()


async def test_endpoint_negotiates_openmetrics_gzip_and_methods_as_prometheus_client_does() -> None:
    metrics = Metrics()
    metrics.rpc_finished("/chatd.v1.ChatService/SendMessage", "OK", 0.2, streaming=False)
    server = await start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        status, headers, body = await http_request(server.port, "/metrics", accept)
        assert status == 200
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.decode().endswith("# EOF\n")

        status, headers, body = await http_request(
            server.port, "/metrics", {"Accept-Encoding": "gzip"}
        )
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert b"# TYPE chatd_rpc_requests_total counter" in gzip.decompress(body)

        # name[] selects series, as prometheus_client's exposition reads it.
        query = "/metrics?name[]=chatd_rpc_requests_total"
        text = (await http_get(server.port, query))[2]
        assert "chatd_rpc_requests_total{" in text and "chatd_model_call" not in text

        assert (await http_request(server.port, "/metrics", method="POST"))[0] == 405
        status, headers, _ = await http_request(server.port, "/metrics", method="OPTIONS")
        assert status == 200 and headers["allow"] == "OPTIONS,GET"
    finally:
        await server.close()


async def test_a_silent_client_is_dropped_and_holds_up_no_scrape() -> None:
    server = await start_metrics_server(Metrics(), "127.0.0.1", 0, client_timeout=0.05)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Connected, and nothing sent: another scrape is answered meanwhile...
        assert (await http_get(server.port, "/metrics"))[0] == 200
        # ...and the server closes the silent connection (end of stream) without a reply.
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
    finally:
        await server.close()


async def test_closed_endpoint_refuses_connections_and_closes_again_quietly() -> None:
    server = await start_metrics_server(Metrics(), "127.0.0.1", 0)
    await server.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)
    await server.close()


async def test_event_loop_keeps_running_while_a_scrape_is_served() -> None:
    """Scrapes run on the server's thread: a collector that waits for the event loop
    (which it could never get, were the scrape served on the loop) does not stall it."""
    entered = threading.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_stats() -> Stats:
        entered.set()
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(HANG_GUARD)
        return Stats()

    metrics = Metrics()
    metrics.watch_cache(slow_stats)
    server = await start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        scrape = asyncio.create_task(http_get(server.port, "/metrics"))
        # The loop runs on while the scrape waits for `release`.
        assert await asyncio.to_thread(entered.wait, HANG_GUARD)
        assert not scrape.done()
        release.set()
        status, _, body = await scrape
        assert status == 200 and "chatd_cache_hits_total 0.0" in body
    finally:
        await server.close()
