"""What chatd's process prints: every line in the configured log format, grpc's C-core
lines and stray output included; error lines say what went wrong; a rejected Gemini key
is one warning naming the fix, not one per turn."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc
from server import logs, logs_relay
from tests.fake_gemini import FakeGemini
from tests.process import ROOT, ChatdProcess


class Served:
    """`chatd serve` with stdout and stderr piped, both read to their end as lines come.

    Their end is the end of the relay (server.logs_relay): it holds the real stdout and
    stderr until every writer of chatd's fds 1 and 2 is gone."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self.serving: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(proc.pid)
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self.out, stderr=False)),
            asyncio.create_task(self._read(proc.stderr, self.err, stderr=True)),
        ]

    @classmethod
    async def start(cls, tmp_path: Path, env: dict[str, str], cwd: Path = ROOT) -> Served:
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
            cwd=cwd,
            env={**os.environ, "CHATD_LOG_FORMAT": "json", **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader, into: list[str], stderr: bool) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            into.append(line)
            if stderr and '"serving"' in line and not self.serving.done():
                entry = json.loads(line)
                if entry.get("event") == "serving":
                    self.serving.set_result(int(entry["port"]))
        if stderr and not self.serving.done():
            self.serving.set_exception(RuntimeError(f"chatd stopped before serving: {self.err}"))

    async def port(self) -> int:
        return await asyncio.wait_for(asyncio.shield(self.serving), 60)

    async def exited(self) -> None:
        """Returns once chatd itself has exited. Its output may go on (the relay holds
        it): asyncio's Process.wait waits for that too, so this watches a pidfd."""
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        loop.add_reader(self._pidfd, gone.set)
        try:
            await asyncio.wait_for(gone.wait(), 60)
        finally:
            loop.remove_reader(self._pidfd)

    async def ended(self) -> int:
        """chatd's exit code, once it has exited and stdout and stderr are at their end."""
        await asyncio.wait_for(asyncio.gather(*self._readers), 60)
        return await asyncio.wait_for(self.proc.wait(), 60)

    def close(self) -> None:
        """Kills chatd if it still runs: a test that failed midway leaves none behind."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        for reader in self._readers:
            reader.cancel()
        with contextlib.suppress(OSError):
            os.close(self._pidfd)

    def records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for line in [*self.out, *self.err]:
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}")
        return records


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Starts `chatd serve` (Served.start with this test's tmp_path); kills what is left."""
    started: list[Served] = []

    async def start(env: dict[str, str], cwd: Path = ROOT) -> Served:
        started.append(await Served.start(tmp_path, env, cwd))
        return started[-1]

    yield start
    for served in started:
        served.close()


async def run_chatd(serve: Serve, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """Starts `chatd serve` with stdout and stderr piped, makes one RPC once it serves,
    stops it with SIGTERM; returns every stdout and stderr line."""
    served = await serve(env)
    port = await served.port()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        await stub.CreateSession(pb.CreateSessionRequest(session_id="log"))
    served.proc.send_signal(signal.SIGTERM)
    assert await served.ended() == 0
    return served.out, served.err


async def test_every_line_is_json_grpc_c_core_debug_lines_included(serve: Serve) -> None:
    out, err = await run_chatd(
        serve,
        # GRPC_TRACE=api makes the C-core print lines for every call, also at shutdown.
        {"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "api", "PYTHONWARNINGS": "always"},
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


async def test_many_concurrent_rpcs_with_grpc_tracing_on_complete_and_every_line_is_json(
    serve: Serve,
) -> None:
    """GRPC_TRACE=api prints C-core lines for every call, with the GIL held: far more than
    a pipe holds. The relay drains them however busy chatd is, so the calls complete (the
    timeouts are a safety net) and SIGTERM still stops chatd."""
    served = await serve(
        {"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "api", "CHATD_PROVIDER": "echo"},
    )
    port = await served.port()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)

        async def turn(n: int) -> int:
            await stub.CreateSession(pb.CreateSessionRequest(session_id=f"s{n}"), timeout=60)
            chunks = 0
            async for _ in stub.StreamReply(
                pb.StreamReplyRequest(session_id=f"s{n}", text="hi " * 50), timeout=60
            ):
                chunks += 1
            return chunks

        for batch in range(4):
            done = await asyncio.gather(*(turn(batch * 40 + i) for i in range(40)))
            assert all(done)
    served.proc.send_signal(signal.SIGTERM)
    assert await served.ended() == 0
    records = served.records()
    grpc_lines = [r for r in records if r.get("logger") == "grpc"]
    assert len(grpc_lines) > 160 * 4  # several C-core lines per call went through the relay
    assert "stopped" in {r["event"] for r in records}


def write_tool_module(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    """A CHATD_TOOLS module `name` in tmp_path; the environment that loads it."""
    (tmp_path / f"{name}.py").write_text(source)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return {"CHATD_TOOLS": name, "PYTHONPATH": path}


async def test_a_crash_s_last_line_and_fatal_error_dump_come_out_as_records(
    serve: Serve, tmp_path: Path
) -> None:
    """grpc writes an `F` line and aborts; faulthandler then dumps every thread's stack.
    The relay is another process: it writes both out after chatd is gone."""
    env = write_tool_module(
        tmp_path,
        "chatd_test_abort",
        "import os\n"
        "os.write(2, b'F1130 13:54:57.844285   19394 chttp2_transport.cc:91] "
        "assertion failed: the last words\\n')\n"
        "os.abort()\n",
    )
    # Run in tmp_path: a core file, where the system writes one, lands there.
    served = await serve(env, cwd=tmp_path)
    assert await served.ended() == -signal.SIGABRT
    records = served.records()
    (last,) = [r for r in records if r.get("event") == "assertion failed: the last words"]
    assert last["logger"] == "grpc" and last["level"] == "critical"
    assert last["source"] == "chttp2_transport.cc:91"
    (fatal,) = [r for r in records if r["event"].startswith("Fatal Python error")]
    assert fatal["level"] == "critical" and fatal["error"] == "Aborted"
    assert "chatd_test_abort.py" in fatal["stack"] and "most recent call first" in fatal["stack"]
    assert records.index(last) < records.index(fatal)


async def test_a_child_writing_after_chatd_exited_is_relayed_not_killed_by_sigpipe(
    serve: Serve, tmp_path: Path
) -> None:
    """A tool module's subprocess inherits fds 1 and 2. It writes once chatd has exited
    (it waits on a FIFO the test opens only then): the relay, still reading, writes its
    line out, and the child's write succeeds (exit status 0, not SIGPIPE)."""
    fifo, status = tmp_path / "go", tmp_path / "status"
    os.mkfifo(fifo)
    env = write_tool_module(
        tmp_path,
        "chatd_test_child",
        "import subprocess\n"
        "subprocess.Popen(['sh', '-c', "
        '\'cat "$1" >/dev/null; echo child after chatd >&2; echo $? >"$2"\', '
        f"'sh', {str(fifo)!r}, {str(status)!r}])\n",
    )
    served = await serve(env)
    await served.port()
    served.proc.send_signal(signal.SIGTERM)
    await served.exited()
    # chatd has exited, with the child still waiting: let it write.
    await asyncio.to_thread(fifo.write_text, "go\n")
    assert await served.ended() == 0
    assert status.read_text().strip() == "0"
    records = served.records()
    (child,) = [r for r in records if r["event"] == "child after chatd"]
    assert child["logger"] == "stderr" and child["level"] == "warning"
    assert records.index(child) > [r["event"] for r in records].index("stopped")


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


def test_c_core_lines_python_tracebacks_and_fatal_errors_become_one_record_each() -> None:
    out = io.StringIO()
    reemit = logs_relay.Reemit(logs._processors(as_json=True, colors=False), out)
    lines = [
        "E1130 13:54:57.844184   19394 chttp2_server.cc:1215] bind failed: Address in use",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "RuntimeError: gone",
        "plain words",
        # faulthandler's dump (Python 3.11's layout)
        "Fatal Python error: Segmentation fault",
        "",
        "Thread 0x00007fc6ecda46c0 (most recent call first):",
        '  File "threading.py", line 982 in run',
        "",
        "Current thread 0x00007fc6edbe9b80 (most recent call first):",
        '  File "x.py", line 5 in <module>',
        "",
        "Extension modules: grpc._cython.cygrpc (total: 1)",
        "after the dump",
    ]
    for group in logs_relay.grouped(iter(lines)):
        reemit.group(group, "stderr")
    core, trace, plain, fatal, after = (json.loads(line) for line in out.getvalue().splitlines())
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
    assert fatal["event"] == "Fatal Python error: Segmentation fault"
    assert fatal["level"] == "critical" and fatal["error"] == "Segmentation fault"
    assert fatal["stack"].startswith("Thread 0x00007fc6ecda46c0")
    assert fatal["stack"].endswith("Extension modules: grpc._cython.cygrpc (total: 1)")
    assert after["event"] == "after the dump"


async def test_a_rejected_gemini_key_is_one_warning_naming_the_fix(tmp_path: Path) -> None:
    """The Gemini API answers an unknown key with 400 INVALID_ARGUMENT, reason
    API_KEY_INVALID (tests/fake_gemini/, as https://ai.google.dev/gemini-api/docs/troubleshooting
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
