"""The HTTP listener of a chatd process: the README's curl and buf curl blocks as written,
buf curl over Connect and gRPC-Web, a busy port, and SIGTERM draining an HTTP stream."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest
from google.rpc import error_details_pb2

from tests.http_helpers import HttpStream, NdjsonLines, post_json
from tests.otlp_collector import OtlpCollector
from tests.process import ROOT, ChatdProcess
from tests.test_grpcurl import json_stream, readme_block

BUF = shutil.which("buf", path=str(Path(sys.executable).parent))
CURL = shutil.which("curl")
SERVICE = "/chatd.v1.ChatService"


async def http_chatd(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[ChatdProcess, int]:
    server = ChatdProcess(
        "--database-url",
        f"sqlite:///{tmp_path}/chatd.db",
        "--http-listen",
        "127.0.0.1:0",
        *args,
        env=env,
    )
    await server.start()
    serving = next(e for e in server.log if e.get("event") == "serving")
    port = int(serving["http_port"])
    assert port > 0
    return server, port


async def run(argv: list[str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_script(script: str, http_port: int) -> str:
    assert "127.0.0.1:8080" in script
    script = script.replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
    if BUF is not None:
        script = script.replace(".venv/bin/buf", BUF)
    code, out, err = await run(["bash", "-euo", "pipefail", "-c", script])
    assert code == 0, err
    return out


@pytest.mark.skipif(
    CURL is None or BUF is None, reason="needs curl and buf (make test installs buf)"
)
async def test_readme_curl_and_buf_curl_blocks_run_as_written(tmp_path: Path) -> None:
    server, port = await http_chatd(tmp_path)
    try:
        curl_out = await run_script(readme_block("H=http://127.0.0.1:8080"), port)
        buf_out = await run_script(readme_block("B=.venv/bin/buf; H=http://127.0.0.1:8080"), port)
    finally:
        await server.kill()
    created, *lines = json_stream(curl_out)
    assert created["session"]["sessionId"] == "web"  # type: ignore[index]
    assert lines[-1]["reply"]["finishReason"] == "FINISH_REASON_STOP"  # type: ignore[index]
    assert "Stream this over HTTP" in lines[-1]["reply"]["text"]  # type: ignore[index]
    got, *events = json_stream(buf_out)
    assert got["session"]["messageCount"] == "2"  # type: ignore[index]
    assert "turn 2 of this conversation" in events[-1]["reply"]["text"]  # type: ignore[index]
    rpcs = [e for e in server.log if e.get("event") == "rpc"]
    assert [e["protocol"] for e in rpcs] == ["connect", "json", "connect", "grpc-web"]


@pytest.mark.skipif(BUF is None, reason="buf is a dev dependency (buf-bin)")
@pytest.mark.parametrize("protocol", ["connect", "grpcweb"])
async def test_buf_curl_unary_streaming_and_errors(tmp_path: Path, protocol: str) -> None:
    assert BUF is not None
    server, port = await http_chatd(tmp_path, env={"CHATD_API_KEYS": "t:key-t"})
    base = f"http://127.0.0.1:{port}{SERVICE}"

    def buf(method: str, data: object, key: str = "key-t") -> list[str]:
        auth = ["-H", f"Authorization: Bearer {key}"] if key else []
        return [
            *(BUF, "curl", "--schema", "protos", "--protocol", protocol),
            *auth,
            *("-d", json.dumps(data), f"{base}/{method}"),
        ]

    try:
        code, out, err = await run(buf("CreateSession", {"session": {"display_name": "buf"}}))
        assert code == 0, err
        session_id = json.loads(out)["session"]["sessionId"]
        code, out, err = await run(buf("StreamReply", {"session_id": session_id, "text": "hi"}))
        assert code == 0, err
        events = json_stream(out)
        assert events[-1]["reply"]["finishReason"] == "FINISH_REASON_STOP"  # type: ignore[index]
        code, out, err = await run(buf("GetSession", {"session_id": "missing"}))
        assert code != 0
        error = json.loads(out + err)
        assert error["code"] == "not_found"
        [detail] = error["details"]
        assert detail["type"] == "google.rpc.ErrorInfo"
        info = error_details_pb2.ErrorInfo.FromString(base64.b64decode(detail["value"] + "=="))
        assert info.reason == "SESSION_NOT_FOUND"
        code, out, err = await run(buf("ListSessions", {}, key=""))
        assert code != 0
        assert "unauthenticated" in out + err
    finally:
        await server.kill()
    # One log line per call, refused ones included, naming the protocol.
    rpcs = [e for e in server.log if e.get("event") == "rpc"]
    assert [e["code"] for e in rpcs] == ["OK", "OK", "NOT_FOUND", "UNAUTHENTICATED"]
    assert {e["protocol"] for e in rpcs} == {"connect" if protocol == "connect" else "grpc-web"}
    assert rpcs[1]["method"] == f"{SERVICE}/StreamReply" and rpcs[1]["tenant"] == "t"


async def test_a_busy_http_port_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        server = ChatdProcess(
            "--database-url", f"sqlite:///{tmp_path}/chatd.db", "--http-listen", address
        )
        with pytest.raises(RuntimeError, match="exited before serving"):
            await server.start()
        assert await server.wait() == 1
    [failure] = [e for e in server.log if e.get("event") == "cannot start"]
    assert failure["path"] == address
    assert "CHATD_HTTP_LISTEN" in failure["fix"]


async def test_sigterm_lets_an_http_stream_finish(tmp_path: Path) -> None:
    server, port = await http_chatd(tmp_path, env={"CHATD_ECHO_DELAY_MS": "50"})
    try:
        stream = await HttpStream.post(port, f"{SERVICE}/CreateSession", b'{"sessionId": "g"}')
        await stream.body()
        await stream.close()
        stream = await HttpStream.post(
            port, f"{SERVICE}/StreamReply", b'{"sessionId": "g", "text": "one two three"}'
        )
        lines = NdjsonLines(stream)
        assert await lines.next() is not None
        server.send_signal(signal.SIGTERM)
        rest = await lines.rest()
        await stream.close()
        assert rest[-1]["reply"]["finishReason"] == "FINISH_REASON_STOP"
        assert await server.wait() == 0
    finally:
        await server.kill()


async def test_http_calls_are_traced_like_grpc_ones(tmp_path: Path) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with OtlpCollector() as collector:
        server, port = await http_chatd(
            tmp_path, env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
        )
        try:
            created = await post_json(port, f"{SERVICE}/CreateSession", {"sessionId": "t"})
            assert created.status == 200
            streamed = await post_json(
                port,
                f"{SERVICE}/StreamReply",
                {"sessionId": "t", "text": "hi"},
                headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
            )
            assert streamed.lines[-1]["reply"]
        finally:
            server.send_signal(signal.SIGTERM)
            assert await server.wait() == 0  # shutting down flushes the spans
        spans = collector.spans
    (create,) = [s for s in spans if s.name == "chatd.v1.ChatService/CreateSession"]
    assert create.attributes["rpc.system"] == "connect_rpc"
    (rpc,) = [s for s in spans if s.name == "chatd.v1.ChatService/StreamReply"]
    assert rpc.trace_id == trace_id and rpc.parent_span_id == parent_id
    assert any(s.parent_span_id == rpc.span_id and s.name == "chat echo" for s in spans)
    (line,) = [e for e in server.log if e.get("event") == "rpc" and "StreamReply" in e["method"]]
    assert line["trace_id"] == trace_id and line["protocol"] == "json"
