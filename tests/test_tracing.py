"""OpenTelemetry traces through the public surface: chatd exports OTLP/HTTP to a collector
in this test suite when OTEL_EXPORTER_OTLP_ENDPOINT is set, and nothing when it is not."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import session_pb2
from server import app
from server.tracing import Tracing, TracingError
from tests.otlp_collector import OtlpCollector, Span
from tests.process import ROOT, ChatdProcess

SERVICE = "chatd.v1.ChatService"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


def descendants(spans: list[Span], root: Span) -> list[Span]:
    found, todo = [], [root]
    while todo:
        for child in children(spans, todo.pop()):
            found.append(child)
            todo.append(child)
    return found


async def test_a_turn_with_a_tool_call_is_one_trace_of_rpc_model_tool_and_store_spans(
    tmp_path: Path,
) -> None:
    with OtlpCollector() as collector:
        server = await ChatdProcess(
            "--database-url",
            f"sqlite:///{tmp_path}/chatd.db",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint},
        ).start()
        try:
            async with server.channel() as channel:
                stub, _ = server.stubs(channel)
                await stub.CreateSession(
                    pb.CreateSessionRequest(
                        session_id="t",
                        session=session_pb2.Session(
                            tools=["calculate"],
                            generation_config=session_pb2.GenerationConfig(
                                temperature=0.5, max_output_tokens=256
                            ),
                        ),
                    )
                )
                call = stub.StreamReply(
                    pb.StreamReplyRequest(
                        session_id="t", text='/call calculate {"expression": "6*7"}'
                    ),
                    metadata=(("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),),
                )
                events = [event async for event in call]
        finally:
            server.send_signal(signal.SIGTERM)
            # Shutting down flushes the batch of spans to the collector.
            assert await server.wait() == 0
        spans = collector.spans

    # The RPC's log line names its trace.
    (line,) = [
        e for e in server.log if e.get("event") == "rpc" and e["method"].endswith("/StreamReply")
    ]
    assert line["trace_id"] == TRACE_ID

    call_ids = [e.tool_call.function_call.id for e in events if e.HasField("tool_call")]
    assert len(call_ids) == 1 and call_ids[0]

    assert {s.resource["service.name"] for s in spans} == {"chatd"}
    (create,) = [s for s in spans if s.name == f"{SERVICE}/CreateSession"]
    assert create.parent_span_id == "" and create.kind == SERVER
    assert create.attributes["rpc.grpc.status_code"] == 0

    # The caller's traceparent is honoured: the RPC span continues its trace.
    (rpc,) = [s for s in spans if s.name == f"{SERVICE}/StreamReply"]
    assert rpc.trace_id == TRACE_ID and rpc.parent_span_id == PARENT_ID
    assert rpc.kind == SERVER
    assert rpc.attributes == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "StreamReply",
        "rpc.grpc.status_code": 0,
    }
    assert rpc.status_code != STATUS_ERROR

    below = descendants(spans, rpc)
    assert all(s.trace_id == TRACE_ID for s in below)
    # The model call, the tool call, the model's answer to the tool's result.
    models = [s for s in children(spans, rpc) if s.name == "chat echo"]
    assert len(models) == 2
    for model in models:
        assert model.kind == CLIENT
        attrs = model.attributes
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "chatd.echo"
        assert attrs["gen_ai.system"] == "echo"
        assert attrs["gen_ai.request.model"] == "echo"
        assert attrs["gen_ai.response.model"] == "echo"
        assert attrs["gen_ai.usage.input_tokens"] > 0
        assert attrs["gen_ai.usage.output_tokens"] > 0
        assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
        assert attrs["gen_ai.request.temperature"] == 0.5
        assert attrs["gen_ai.request.max_tokens"] == 256
        assert "gen_ai.request.top_p" not in attrs

    (tool,) = [s for s in children(spans, rpc) if s.name == "execute_tool calculate"]
    assert tool.kind == INTERNAL
    assert tool.attributes == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "calculate",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": call_ids[0],
    }

    store = [s for s in below if "db.operation.name" in s.attributes]
    assert "commit_turn" in {s.name for s in store}
    for span in store:
        assert span.kind == CLIENT
        assert span.attributes["db.system.name"] == "sqlite"
        assert span.attributes["db.system"] == "sqlite"
        assert span.attributes["db.operation.name"] == span.name


async def test_without_otel_variables_nothing_is_exported(tmp_path: Path) -> None:
    with OtlpCollector() as collector:
        server = await ChatdProcess(
            "--database-url",
            "memory://",
            env={"OTEL_SERVICE_NAME": "unused", "OTEL_EXPORTER_OTLP_ENDPOINT": ""},
        ).start()
        try:
            async with server.channel() as channel:
                stub, _ = server.stubs(channel)
                await stub.CreateSession(pb.CreateSessionRequest(session_id="quiet"))
        finally:
            server.send_signal(signal.SIGTERM)
            assert await server.wait() == 0
        assert collector.collector.requests == 0
    assert not any(entry.get("event") == "tracing on" for entry in server.log)


def test_otel_variables_turn_tracing_on_and_off() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert Tracing.from_environ({}) is None
    assert Tracing.from_environ({"OTEL_TRACES_EXPORTER": "none", **endpoint}) is None
    assert Tracing.from_environ({"OTEL_SDK_DISABLED": "true", **endpoint}) is None
    for on in (endpoint, {"OTEL_TRACES_EXPORTER": "otlp"}):
        tracing = Tracing.from_environ(on)
        assert tracing is not None
        tracing.shutdown()
    with pytest.raises(TracingError, match="OTEL_TRACES_EXPORTER"):
        Tracing.from_environ({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(TracingError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        Tracing.from_environ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **endpoint})


def test_otel_sdk_disabled_is_true_only_for_the_string_true(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The specification's boolean rule: only case-insensitive "true" disables the SDK;
    "1", "yes" or "on" are false, with a warning; "false" and empty are false silently."""
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    for true in ("true", "TRUE", "True"):
        assert Tracing.from_environ({"OTEL_SDK_DISABLED": true, **endpoint}) is None
    caplog.set_level("WARNING", logger="chatd.tracing")
    for value, warned in (("1", True), ("yes", True), ("on", True), ("false", False), ("", False)):
        caplog.clear()
        tracing = Tracing.from_environ({"OTEL_SDK_DISABLED": value, **endpoint})
        assert tracing is not None, value
        tracing.shutdown()
        warnings = [r.getMessage() for r in caplog.records if r.name == "chatd.tracing"]
        assert bool(warnings) == warned, (value, warnings)
        if warned:
            assert f"OTEL_SDK_DISABLED={value}" in warnings[0] and "false" in warnings[0]


async def test_an_exporter_chatd_does_not_ship_refuses_to_start_naming_the_variable(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--database-url",
        "memory://",
        cwd=ROOT,
        env={**os.environ, "CHATD_LOG_FORMAT": "json", "OTEL_TRACES_EXPORTER": "zipkin"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    records = [json.loads(line) for line in err.decode().splitlines()]
    (refusal,) = [r for r in records if r["event"] == "cannot start"]
    assert refusal["path"] == "OTEL_TRACES_EXPORTER"
    assert "zipkin" in refusal["cause"] and "otlp" in refusal["cause"]


@pytest.mark.parametrize(
    ("url", "system"),
    [
        ("sqlite:///var/chatd.db", "sqlite"),
        ("postgresql://u@h/db", "postgresql"),
        ("postgres://u@h/db", "postgresql"),
        ("memory://", "other_sql"),
    ],
)
def test_store_spans_name_the_database_system(url: str, system: str) -> None:
    assert app.db_system(url) == system
