"""What chatd's process prints: every line in the configured log format, grpc's C-core
lines and stray output included; error lines say what went wrong; a rejected Gemini key
is one warning naming the fix, not one per turn."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc
from server import logs
from tests.fake_gemini import FakeGemini
from tests.process import ROOT, ChatdProcess


async def run_chatd(env: dict[str, str], tmp_path: Path) -> tuple[list[str], list[str]]:
    """Starts `chatd serve` with stdout and stderr piped, makes one RPC once it serves,
    stops it with SIGTERM; returns every stdout and stderr line."""
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
        f"sqlite:///{tmp_path}/chatd.db",
        cwd=ROOT,
        env={**os.environ, "CHATD_LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    err: list[str] = []
    port = 0
    while not port:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, f"chatd exited before serving: {err[-5:]}"
        err.append(line.decode())
        entry = json.loads(line)
        if entry.get("event") == "serving":
            port = int(entry["port"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        await stub.CreateSession(pb.CreateSessionRequest(session_id="log"))
    proc.send_signal(signal.SIGTERM)
    out, rest = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    err += rest.decode().splitlines(keepends=True)
    return out.decode().splitlines(), [line.rstrip("\n") for line in err]


async def test_every_line_is_json_grpc_c_core_debug_lines_included(tmp_path: Path) -> None:
    out, err = await run_chatd(
        # GRPC_TRACE=api makes the C-core print lines for every call, also at shutdown.
        {"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "api", "PYTHONWARNINGS": "always"},
        tmp_path,
    )
    records: list[dict[str, Any]] = []
    for line in [*out, *err]:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    grpc_lines = [r for r in records if r.get("logger") == "grpc"]
    # grpc's start-up warning about DEBUG verbosity comes before chatd serves.
    assert any("not suitable for production" in r["event"] for r in grpc_lines)
    assert any(r["level"] == "info" for r in grpc_lines)
    assert all(r["source"] and r["timestamp"] and r["level"] for r in grpc_lines)
    assert {"serving", "stopped"} <= {r["event"] for r in records}


def test_an_error_record_carries_the_error_message() -> None:
    out = io.StringIO()
    structlog.configure(
        processors=logs._processors(as_json=True, colors=False),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    try:
        try:
            raise ValueError("the disk is full")
        except ValueError:
            structlog.get_logger().error("write failed", exc_info=True)
        structlog.get_logger().error("write failed", exc_info=KeyError("k"))
    finally:
        logs.configure("console", os.environ.get("CHATD_TEST_LOG_LEVEL", "warning"))
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["error"] == "ValueError: the disk is full"
    assert "Traceback" in first["exception"]
    assert second["error"] == "KeyError: 'k'"


def test_c_core_lines_and_python_tracebacks_become_one_record_each() -> None:
    out = io.StringIO()
    reemit = logs._Reemit(logs._processors(as_json=True, colors=False), out)
    lines = [
        "E1130 13:54:57.844184   19394 chttp2_server.cc:1215] bind failed: Address in use",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "RuntimeError: gone",
        "plain words",
    ]
    for kind, group in logs._grouped(iter(lines)):
        if kind == "traceback":
            reemit.traceback(group)
        else:
            reemit.line(group[0], "stderr")
    core, trace, plain = (json.loads(line) for line in out.getvalue().splitlines())
    assert core == {
        "event": "bind failed: Address in use",
        "logger": "grpc",
        "source": "chttp2_server.cc:1215",
        "level": "error",
        "timestamp": core["timestamp"],
    }
    assert trace["level"] == "error" and trace["error"] == "RuntimeError: gone"
    assert trace["exception"].startswith("Traceback")
    assert plain["event"] == "plain words" and plain["level"] == "warning"


async def test_a_rejected_gemini_key_is_one_warning_naming_the_fix(tmp_path: Path) -> None:
    """The Gemini API answers an unknown key with 400 INVALID_ARGUMENT, reason
    API_KEY_INVALID (tests/fake_gemini.py, as https://ai.google.dev/gemini-api/docs/troubleshooting
    lists it); every turn fails FAILED_PRECONDITION, and the log says so once."""
    with FakeGemini() as fake:
        fake.expected_api_key = "right-key"
        server = await ChatdProcess(
            "--database-url",
            f"sqlite:///{tmp_path}/chatd.db",
            env={
                "GEMINI_API_KEY": "wrong-key",
                "GOOGLE_API_KEY": "",
                "CHATD_GEMINI_BASE_URL": fake.base_url,
                "CHATD_PROVIDER": "gemini",
            },
        ).start()
        try:
            async with server.channel() as channel:
                stub, _ = server.stubs(channel)
                await stub.CreateSession(pb.CreateSessionRequest(session_id="k"))
                for text in ("one", "two", "three"):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.SendMessage(pb.SendMessageRequest(session_id="k", text=text))
                    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        finally:
            server.send_signal(signal.SIGTERM)
            assert await server.wait() == 0
    warnings = [e for e in server.log if e.get("event") == "gemini credentials rejected"]
    assert len(warnings) == 1
    (warning,) = warnings
    assert warning["level"] == "warning"
    assert "GEMINI_API_KEY" in warning["fix"] and "valid key" in warning["fix"]
    assert "API_KEY_INVALID" in warning["error"]
    assert "wrong-key" not in json.dumps(server.log)


def test_stdlib_logging_and_thread_exceptions_are_records_in_the_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    logs.configure("json", "info")
    try:
        library = logging.getLogger("some.library")
        library.warning("disk %s", "slow")
        library.info("chatter")  # stdlib records below warning are not chatd's business

        def fail() -> None:
            raise OSError("the socket closed")

        thread = threading.Thread(target=fail, name="worker")
        thread.start()
        thread.join()
    finally:
        monkeypatch.undo()
        logs.configure("console", os.environ.get("CHATD_TEST_LOG_LEVEL", "warning"))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["disk slow", "uncaught exception in a thread"]
    assert records[0]["logger"] == "some.library" and records[0]["level"] == "warning"
    assert records[1]["level"] == "error" and records[1]["thread"] == "worker"
    assert records[1]["error"] == "OSError: the socket closed"
