"""Metrics end to end: a real server, a few RPCs, then GET /metrics over HTTP."""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import session_pb2
from server.config import SettingsError, load
from tests.conftest import StartChatd

SERVICE = "chatd.v1.ChatService"


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics on 127.0.0.1:port, as {(sample name, labels): value}."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200"), head
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_scrape_after_rpcs_shows_rpcs_model_calls_tokens_tools_store_and_cache(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_chatd()
    running = chatd.running
    assert running.metrics_server is not None and running.metrics_server.port > 0

    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id="m", session=session_pb2.Session(tools=["calculate"]))
    )
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="m", text="hello"))
    call = chatd.stub.StreamReply(
        pb.StreamReplyRequest(session_id="m", text='/call calculate {"expression": "6*7"}')
    )
    events = [event async for event in call]
    assert events
    with pytest.raises(grpc.aio.AioRpcError):
        await chatd.stub.GetSession(pb.GetSessionRequest(session_id="nope"))

    s = await scrape(running.metrics_server.port)

    requests = "chatd_rpc_requests_total"
    assert (
        value(s, requests, grpc_service=SERVICE, grpc_method="CreateSession", grpc_code="OK") == 1
    )
    assert value(s, requests, grpc_service=SERVICE, grpc_method="SendMessage", grpc_code="OK") == 1
    assert value(s, requests, grpc_service=SERVICE, grpc_method="StreamReply", grpc_code="OK") == 1
    assert (
        value(s, requests, grpc_service=SERVICE, grpc_method="GetSession", grpc_code="NOT_FOUND")
        == 1
    )
    assert (
        value(
            s,
            "chatd_rpc_duration_seconds_count",
            grpc_service=SERVICE,
            grpc_method="SendMessage",
            grpc_code="OK",
        )
        == 1
    )
    assert value(s, "chatd_active_streams", grpc_service=SERVICE, grpc_method="StreamReply") == 0
    # SendMessage made one model call; StreamReply two (the call, then the answer to its result).
    calls = "chatd_model_call_duration_seconds_count"
    assert value(s, calls, provider="echo", model="echo", outcome="ok") == 3
    assert value(s, "chatd_tokens_total", direction="input", model="echo") > 0
    assert value(s, "chatd_tokens_total", direction="output", model="echo") > 0
    assert value(s, "chatd_tool_calls_total", tool="calculate", outcome="ok") == 1
    assert value(s, "chatd_tool_call_duration_seconds_count", tool="calculate") == 1
    ops = "chatd_store_operation_duration_seconds_count"
    assert value(s, ops, operation="commit_turn", outcome="ok") == 2
    assert value(s, ops, operation="get_session", outcome="not_found") == 1
    # SQLite sits behind the session cache by default.
    assert value(s, "chatd_cache_entries") == 1
    assert value(s, "chatd_cache_hits_total") > 0


async def test_scrape_shows_process_metrics_build_info_and_no_created_series(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_chatd()
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="p"))
    assert chatd.running.metrics_server is not None
    s = await scrape(chatd.running.metrics_server.port)
    names = {name for name, _ in s}
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    } <= names
    assert value(s, "process_open_fds") > 0
    assert value(s, "process_resident_memory_bytes") > 0
    build = [dict(labels) for name, labels in s if name == "chatd_build_info"]
    assert len(build) == 1
    assert build[0]["python"] == platform.python_version()
    assert build[0]["version"] == importlib.metadata.version("chatd")
    assert value(s, "chatd_build_info", **build[0]) == 1
    assert not [name for name in names if name.endswith("_created")]


async def test_empty_metrics_listen_serves_no_metrics(start_chatd: StartChatd) -> None:
    chatd = await start_chatd(metrics_listen="")
    assert chatd.running.metrics_server is None and chatd.running.metrics is None
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="plain"))


async def test_stopped_server_stops_serving_metrics(start_chatd: StartChatd) -> None:
    chatd = await start_chatd()
    assert chatd.running.metrics_server is not None
    port = chatd.running.metrics_server.port
    await chatd.running.stop(grace=0)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


def test_metrics_listen_defaults_on_and_empty_turns_it_off() -> None:
    assert load([], {}).metrics_listen == "127.0.0.1:9464"
    assert load([], {"CHATD_METRICS_LISTEN": ""}).metrics_listen == ""
    assert load(["--metrics-listen", ""], {}).metrics_listen == ""
    assert load(["--metrics-listen", "0.0.0.0:9100"], {}).metrics_listen == "0.0.0.0:9100"
    with pytest.raises(SettingsError, match="CHATD_METRICS_LISTEN"):
        load([], {"CHATD_METRICS_LISTEN": "nowhere"})


async def test_calls_refused_by_the_rate_limit_are_counted(start_chatd: StartChatd) -> None:
    chatd = await start_chatd(rate_limit=0.001, rate_burst=1)
    await chatd.stub.ListTools(pb.ListToolsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await chatd.stub.ListTools(pb.ListToolsRequest())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert chatd.running.metrics_server is not None
    s = await scrape(chatd.running.metrics_server.port)
    requests = "chatd_rpc_requests_total"
    assert value(s, requests, grpc_service=SERVICE, grpc_method="ListTools", grpc_code="OK") == 1
    assert (
        value(
            s,
            requests,
            grpc_service=SERVICE,
            grpc_method="ListTools",
            grpc_code="RESOURCE_EXHAUSTED",
        )
        == 1
    )
