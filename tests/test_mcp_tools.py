"""MCP servers as a tool source, through a real chatd: a stdio server and a streamable-HTTP
server (tests/mcp_server.py, on the mcp SDK) whose tools sessions enable by name."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import session_pb2
from server import app
from server.config import Settings
from server.startup import StartupError
from server.tools.mcp_servers import (
    McpServer,
    McpServerError,
    McpServers,
    ServerConfig,
    gemini_schema,
)
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import FakeGemini, Reply, call_part, get_field
from tests.test_metrics_rpc import scrape, value

ROOT = Path(__file__).resolve().parent.parent
# Readiness only (a subprocess binding its port); never an upper bound on behaviour.
READY_DEADLINE = 60.0
# The kinds of server the tests run against: a transport, and "-legacy" for a server of the
# protocol before 2026-07-28 (the initialize handshake; tool list changes as notifications).
KINDS = ["stdio", "stdio-legacy", "http", "http-legacy"]


@dataclass
class HttpServer:
    """The test MCP server over streamable HTTP, in a subprocess."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


def spawn_http_server(port_file: Path, *args: str, legacy: bool = False) -> subprocess.Popen[bytes]:
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "tests.mcp_server", "http", str(port_file), *args]
    return subprocess.Popen([*command, *(["--legacy"] if legacy else [])], cwd=ROOT)


def bound(process: subprocess.Popen[bytes], port_file: Path) -> HttpServer:
    """The server once it listens (its port file written)."""
    deadline = time.monotonic() + READY_DEADLINE
    while not port_file.exists():
        assert process.poll() is None, "the MCP test server exited"
        assert time.monotonic() < deadline, "the MCP test server did not bind"
        time.sleep(0.02)
    return HttpServer(process, int(port_file.read_text()))


def start_http_server(port_file: Path, *, legacy: bool = False) -> HttpServer:
    return bound(spawn_http_server(port_file, legacy=legacy), port_file)


@dataclass
class Standby:
    """A second server, loaded ahead and waiting to bind the port of one a test kills."""

    process: subprocess.Popen[bytes]
    port_file: Path
    go: Path

    @classmethod
    def spawn(cls, directory: Path, *, legacy: bool = False) -> Standby:
        port_file, go = directory / "standby-port", directory / "standby-go"
        process = spawn_http_server(port_file, "--port-from", str(go), legacy=legacy)
        return cls(process, port_file, go)

    async def take_over(self, port: int) -> HttpServer:
        """The server bound to `port`, waited for off the event loop: chatd goes on."""
        self.go.with_suffix(".tmp").write_text(str(port))
        os.replace(self.go.with_suffix(".tmp"), self.go)
        return await asyncio.to_thread(bound, self.process, self.port_file)


def stop(server: HttpServer) -> None:
    server.process.kill()
    server.process.wait()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable the servers file's "headers" name as ${MCP_TEST_TOKEN}."""
    monkeypatch.setenv("MCP_TEST_TOKEN", "secret")


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """One HTTP server for the module's tests that leave it running."""
    server = start_http_server(tmp_path_factory.mktemp("http") / "port")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def legacy_http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """The same, speaking only the protocol before 2026-07-28."""
    server = start_http_server(tmp_path_factory.mktemp("legacy") / "port", legacy=True)
    yield server
    stop(server)


@pytest.fixture
def own_http_server(tmp_path: Path) -> Iterator[HttpServer]:
    """An HTTP server of the test's own, for a test that changes its tools for good."""
    server = start_http_server(tmp_path / "own-port")
    yield server
    if server.process.poll() is None:
        stop(server)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The servers a test starts itself; those still running at its end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def stdio_entry(*flags: str, **extra: Any) -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": ["-m", "tests.mcp_server", "stdio", *flags],
        "cwd": str(ROOT),
        "timeout": 60,
        **extra,
    }


def http_entry(server: HttpServer, **extra: Any) -> dict[str, Any]:
    return {
        "url": server.url,
        "headers": {"Authorization": "Bearer ${MCP_TEST_TOKEN}"},
        "timeout": 60,
        **extra,
    }


def entry(request: pytest.FixtureRequest, kind: str, **extra: Any) -> dict[str, Any]:
    """A servers-file entry for a server of `kind` (one of KINDS)."""
    if kind.startswith("stdio"):
        return stdio_entry(*(["--legacy"] if kind.endswith("-legacy") else []), **extra)
    fixture = "legacy_http_server" if kind.endswith("-legacy") else "http_server"
    return http_entry(request.getfixturevalue(fixture), **extra)


def servers_file(tmp_path: Path, **servers: dict[str, Any]) -> str:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return str(path)


def write_config(tmp_path: Path, http: HttpServer, **extra: dict[str, Any]) -> str:
    servers: dict[str, Any] = {
        "local": stdio_entry(excludeTools=["coded"]),
        "web": http_entry(http, includeTools=["add", "fail", "picture", "note", "hold"]),
    }
    servers.update(extra)
    return servers_file(tmp_path, **servers)


@pytest.fixture
async def mcp_chatd(
    start_chatd: StartChatd,
    fake_gemini: FakeGemini,
    tmp_path: Path,
    http_server: HttpServer,
) -> Chatd:
    server: Chatd = await start_chatd(
        provider=fast_gemini(fake_gemini), mcp_servers=write_config(tmp_path, http_server)
    )
    return server


def mcp_server(chatd: Chatd, name: str) -> McpServer:
    assert chatd.running.mcp is not None
    [server] = [s for s in chatd.running.mcp.servers if s.config.name == name]
    return server


async def session(chatd: Chatd, tools: list[str], sid: str = "t") -> None:
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id=sid, session=session_pb2.Session(tools=tools))
    )


async def turn(chatd: Chatd, text: str, sid: str = "t") -> list[pb.StreamReplyResponse]:
    request = pb.StreamReplyRequest(session_id=sid, text=text)
    return [e async for e in chatd.stub.StreamReply(request)]


async def call(
    chatd: Chatd, fake: FakeGemini, name: str, args: dict[str, Any] | None = None, sid: str = "t"
) -> Any:
    """The tool result of a turn whose model calls `name` once, then says "done"."""
    fake.push(Reply(parts=[call_part(name, args or {})]))
    fake.push(Reply(text="done"))
    events = await turn(chatd, f"call {name}", sid)
    assert events[-1].reply.text == "done", "the turn went on after the call"
    [result] = results(events)
    return result


def results(events: list[pb.StreamReplyResponse]) -> list[Any]:
    return [e.tool_result for e in events if e.HasField("tool_result")]


async def listed_tools(chatd: Chatd) -> dict[str, Any]:
    listed = await chatd.stub.ListTools(pb.ListToolsRequest())
    return {t.name: t for t in listed.tools}


def offered(fake: FakeGemini) -> set[str]:
    """The function names the last model request declared."""
    body = fake.requests[-1].body
    return {
        get_field(d, "name")
        for t in get_field(body, "tools", default=[])
        for d in get_field(t, "function_declarations", default=[])
    }


async def test_list_tools_shows_the_tools_of_both_servers(mcp_chatd: Chatd) -> None:
    listed = await mcp_chatd.stub.ListTools(pb.ListToolsRequest())
    tools = {t.name: t for t in listed.tools}
    for name in ("local__add", "web__add"):
        assert tools[name].description == "Adds two integers."
        schema = json.loads(tools[name].parameters_json)
        assert schema["type"] == "object"
        assert schema["required"] == ["a", "b"]
        assert schema["properties"]["a"]["type"] == "integer"
    # pydantic's Optional (anyOf with null) reaches the model as a nullable string.
    word = json.loads(tools["local__optional"].parameters_json)["properties"]["word"]
    assert word["type"] == "string" and word["nullable"] is True
    assert "calculate" in tools, "Python tools are still served beside them"


async def test_a_two_round_turn_calls_a_stdio_tool_then_an_http_tool(
    mcp_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await session(mcp_chatd, ["local__add", "web__add"])
    fake_gemini.push(Reply(parts=[call_part("local__add", {"a": 2, "b": 3}, id="c-1")]))
    fake_gemini.push(Reply(parts=[call_part("web__add", {"a": 5, "b": 7}, id="c-2")]))
    fake_gemini.push(Reply(text="12 it is."))
    events = await turn(mcp_chatd, "add things")
    first, second = results(events)
    assert not first.is_error and first.function_response.response["result"] == "5"
    assert not second.is_error and second.function_response.response["result"] == "12"
    assert events[-1].reply.text == "12 it is."
    third = fake_gemini.requests[2]
    sent = [get_field(p, "function_response") for c in third.contents for p in c["parts"]]
    sent = [r for r in sent if r is not None]
    assert [get_field(r, "name") for r in sent] == ["local__add", "web__add"]
    assert get_field(sent[1], "response", "result") == "12"
    # Counted like any server tool.
    assert mcp_chatd.running.metrics_server is not None
    samples = await scrape(mcp_chatd.running.metrics_server.port)
    for name in ("local__add", "web__add"):
        assert value(samples, "chatd_tool_calls_total", tool=name, outcome="ok") == 1


@pytest.mark.parametrize("kind", ["stdio", "http", "http-legacy"])
async def test_a_call_longer_than_the_servers_timeout_is_a_tool_error_and_is_cancelled(
    start_chatd: StartChatd,
    fake_gemini: FakeGemini,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    slow = entry(request, kind, timeout=0.5, includeTools=["wait", "add"])
    chatd = await start_chatd(
        provider=fast_gemini(fake_gemini), mcp_servers=servers_file(tmp_path, slow=slow)
    )
    await session(chatd, ["slow__wait", "slow__add"])
    cancelled = tmp_path / "cancelled"
    late = await call(chatd, fake_gemini, "slow__wait", {"cancelled": str(cancelled)})
    assert late.is_error
    assert "'slow__wait' timed out after 0.5s" in late.function_response.response["error"]
    # The server was told: its handler was cancelled (notifications/cancelled, or on
    # 2026-07-28 streamable HTTP the request's stream closed).
    assert await wait_for_file(cancelled) == "cancelled"
    # The connection is still good for the next call.
    added = await call(chatd, fake_gemini, "slow__add", {"a": 2, "b": 2})
    assert not added.is_error and added.function_response.response["result"] == "4"


@pytest.mark.parametrize("kind", ["stdio", "http", "http-legacy"])
async def test_a_result_above_the_message_size_limit_is_a_tool_error(
    start_chatd: StartChatd,
    fake_gemini: FakeGemini,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    limit = 2_000_000
    chatd = await start_chatd(
        provider=fast_gemini(fake_gemini),
        max_message_bytes=limit,  # CHATD_MAX_MESSAGE_BYTES
        mcp_servers=servers_file(tmp_path, srv=entry(request, kind, includeTools=["big"])),
    )
    await session(chatd, ["srv__big"])
    # Well above the SDK's 1 MiB default for one streamed (SSE) event once JSON-encoded
    # twice (content and structuredContent), yet within the limit: served.
    fits = await call(chatd, fake_gemini, "srv__big", {"size": 1_200_000})
    assert not fits.is_error and len(fits.function_response.response["result"]) == 1_200_000
    over = await call(chatd, fake_gemini, "srv__big", {"size": 2_100_000})
    assert over.is_error
    assert over.function_response.response["error"] == (
        f"tool 'srv__big' returned 2100002 bytes, more than the {limit} a result may hold"
    )
    assert mcp_server(chatd, "srv").connected


async def test_tool_errors_and_bad_arguments_are_tool_errors_the_model_sees(
    mcp_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await session(mcp_chatd, ["web__fail", "local__add"])
    fake_gemini.push(
        Reply(
            parts=[
                call_part("web__fail", {"reason": "no disk"}),
                call_part("local__add", {"a": "two", "b": 1}),
            ]
        )
    )
    fake_gemini.push(Reply(text="Both failed."))
    events = await turn(mcp_chatd, "try")
    failed, invalid = results(events)
    assert failed.is_error and "failed: no disk" in failed.function_response.response["error"]
    assert invalid.is_error and "args.a" in invalid.function_response.response["error"]
    assert events[-1].reply.text == "Both failed."


async def test_images_and_resources_become_function_response_parts(
    mcp_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await session(mcp_chatd, ["local__picture", "web__note"])
    fake_gemini.push(Reply(parts=[call_part("local__picture"), call_part("web__note")]))
    fake_gemini.push(Reply(text="Seen."))
    events = await turn(mcp_chatd, "show me")
    picture, note = results(events)
    assert picture.function_response.response["result"] == "a pixel"
    [image] = picture.function_response.parts
    assert image.inline_data.mime_type == "image/png"
    assert image.inline_data.data.startswith(b"\x89PNG")
    [memo] = note.function_response.parts
    assert memo.inline_data.mime_type == "text/plain"
    assert memo.inline_data.data == b"remember the milk"
    second = fake_gemini.requests[1]
    sent = [get_field(p, "function_response") for c in second.contents for p in c["parts"]]
    media = [get_field(r, "parts", 0, "inline_data", "mime_type") for r in sent if r is not None]
    assert media == ["image/png", "text/plain"]


def read_if_there(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def wait_for_file(path: Path) -> str:
    """The file's text once a tool has written it (a latch; the deadline is for readiness)."""
    deadline = time.monotonic() + READY_DEADLINE
    while not (text := await asyncio.to_thread(read_if_there, path)):
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.01)
    return text


async def test_a_stdio_server_killed_mid_call_is_a_tool_error_and_is_restarted(
    mcp_chatd: Chatd, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(release)
    await session(mcp_chatd, ["local__hold", "local__add"])
    args = {"started": str(started), "release": str(release)}
    fake_gemini.push(Reply(parts=[call_part("local__hold", args)]))
    fake_gemini.push(Reply(text="The tool broke."))
    running = asyncio.create_task(turn(mcp_chatd, "hold on"))
    pid = int(await wait_for_file(started))
    os.kill(pid, signal.SIGKILL)
    events = await running
    [lost] = results(events)
    assert lost.is_error
    assert "'local' was lost during the call" in lost.function_response.response["error"]
    assert events[-1].reply.text == "The tool broke."

    # The next turn waits for the restarted server and gets its answer.
    fake_gemini.push(Reply(parts=[call_part("local__add", {"a": 1, "b": 2})]))
    fake_gemini.push(Reply(text="3."))
    events = await turn(mcp_chatd, "again")
    [added] = results(events)
    assert not added.is_error and added.function_response.response["result"] == "3"
    assert events[-1].reply.text == "3."


async def test_a_stdio_server_that_exits_between_calls_is_started_and_its_tools_listed_again(
    start_chatd: StartChatd, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    chatd = await start_chatd(
        provider=fast_gemini(fake_gemini),
        mcp_servers=servers_file(tmp_path, local=stdio_entry(excludeTools=["coded"])),
    )
    local = mcp_server(chatd, "local")
    await session(chatd, ["local__pid", "local__grow"])
    seen = local.listings
    assert not (await call(chatd, fake_gemini, "local__grow", {"name": "extra"})).is_error
    await local.wait_listed(seen)
    assert "local__extra" in await listed_tools(chatd)
    pid = int((await call(chatd, fake_gemini, "local__pid")).function_response.response["result"])

    seen = local.listings
    os.kill(pid, signal.SIGKILL)
    await local.wait_listed(seen)  # noticed without any call: restarted and listed again
    assert local.restarts == 1 and local.connected
    # The new process never added "extra": the list read after the restart is served.
    tools = await listed_tools(chatd)
    assert "local__extra" not in tools and "local__pid" in tools
    again = await call(chatd, fake_gemini, "local__pid")
    assert not again.is_error
    assert int(again.function_response.response["result"]) != pid


async def test_an_http_server_killed_mid_call_is_a_tool_error_and_serves_again_once_back(
    start_chatd: StartChatd,
    fake_gemini: FakeGemini,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    processes.append(first := spawn_http_server(tmp_path / "port"))
    processes.append((successor := Standby.spawn(tmp_path)).process)
    server = bound(first, tmp_path / "port")
    chatd = await start_chatd(
        provider=fast_gemini(fake_gemini),
        mcp_servers=servers_file(tmp_path, web=http_entry(server, includeTools=["hold", "pid"])),
    )
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(release)
    await session(chatd, ["web__hold", "web__pid"])
    args = {"started": str(started), "release": str(release)}
    fake_gemini.push(Reply(parts=[call_part("web__hold", args)]))
    fake_gemini.push(Reply(text="The tool broke."))
    running = asyncio.create_task(turn(chatd, "hold on"))
    await wait_for_file(started)
    stop(server)
    events = await running
    [lost] = results(events)
    assert lost.is_error
    assert "'web' was lost during the call" in lost.function_response.response["error"]
    assert events[-1].reply.text == "The tool broke."

    # While it is away a call cannot reach it: an error the model sees, not a failed turn.
    down = await call(chatd, fake_gemini, "web__pid")
    assert down.is_error
    assert "MCP server 'web' cannot be reached" in down.function_response.response["error"]

    # Back on the same port: the next call reconnects at once, whatever the restart delay.
    revived = await successor.take_over(server.port)
    answered = await call(chatd, fake_gemini, "web__pid")
    assert not answered.is_error
    assert int(answered.function_response.response["result"]) == revived.process.pid


@pytest.mark.parametrize("legacy", [False, True], ids=["2026-07-28", "2025-11-25"])
async def test_an_http_server_that_died_and_came_back_answers_the_first_call_after(
    start_chatd: StartChatd,
    fake_gemini: FakeGemini,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
    legacy: bool,
) -> None:
    processes.append(first := spawn_http_server(tmp_path / "port", legacy=legacy))
    processes.append((successor := Standby.spawn(tmp_path, legacy=legacy)).process)
    server = bound(first, tmp_path / "port")
    chatd = await start_chatd(
        provider=fast_gemini(fake_gemini),
        mcp_servers=servers_file(tmp_path, web=http_entry(server, includeTools=["pid"])),
    )
    await session(chatd, ["web__pid"])
    answered = await call(chatd, fake_gemini, "web__pid")
    assert int(answered.function_response.response["result"]) == server.process.pid
    stop(server)
    revived = await successor.take_over(server.port)
    with structlog.testing.capture_logs() as logged:
        answered = await call(chatd, fake_gemini, "web__pid")
    assert not answered.is_error, answered.function_response.response
    assert int(answered.function_response.response["result"]) == revived.process.pid
    if legacy:
        # Its session died with it: the new server answers 404 without running the call,
        # so chatd opens a new session and sends the call again.
        [resent] = [e for e in logged if e["event"] == "mcp_call_resent"]
        assert resent["mcp_server"] == "web" and resent["tool"] == "pid"


@pytest.mark.parametrize("kind", KINDS)
async def test_tools_a_server_adds_or_removes_are_served_without_a_restart(
    start_chatd: StartChatd,
    fake_gemini: FakeGemini,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    # A name of this test's own: the HTTP servers are shared by the module's tests.
    grown = f"extra_{kind.replace('-', '_')}"
    config = servers_file(tmp_path, srv=entry(request, kind, excludeTools=["coded"]))
    chatd = await start_chatd(provider=fast_gemini(fake_gemini), mcp_servers=config)
    srv = mcp_server(chatd, "srv")
    await session(chatd, ["srv__grow", "srv__shrink"])
    seen = srv.listings
    grow = await call(chatd, fake_gemini, "srv__grow", {"name": grown})
    assert grow.function_response.response["result"] == "grown"
    await srv.wait_listed(seen)  # the server said its tools changed: chatd listed them
    tools = await listed_tools(chatd)
    assert tools[f"srv__{grown}"].description == f"The tool {grown}."

    # A session enables the new tool like any other, and the model may call it.
    await session(chatd, [f"srv__{grown}", "srv__shrink"], sid="u")
    answer = await call(chatd, fake_gemini, f"srv__{grown}", sid="u")
    assert answer.function_response.response["result"] == f"I am {grown}"
    assert f"srv__{grown}" in offered(fake_gemini)

    seen = srv.listings
    await call(chatd, fake_gemini, "srv__shrink", {"name": grown}, sid="u")
    await srv.wait_listed(seen)
    assert f"srv__{grown}" not in await listed_tools(chatd)
    # The session still names it; the model is no longer offered it, and a call to it
    # gets the usual error for an unknown tool.
    gone = await call(chatd, fake_gemini, f"srv__{grown}", sid="u")
    assert gone.is_error
    assert f"unknown tool 'srv__{grown}'" in gone.function_response.response["error"]
    assert f"srv__{grown}" not in offered(fake_gemini)


async def test_a_new_tool_whose_name_is_taken_is_skipped_logged_and_counted(
    start_chatd: StartChatd, fake_gemini: FakeGemini, tmp_path: Path, own_http_server: HttpServer
) -> None:
    config = servers_file(
        tmp_path,
        web=http_entry(own_http_server, excludeTools=["coded"]),
        # The same server under a second name: its "add" is served as "web__x__add".
        web__x=http_entry(own_http_server, includeTools=["add"]),
    )
    chatd = await start_chatd(
        provider=fast_gemini(fake_gemini),
        mcp_servers=config,
        tool_modules="tests.mcp_collision",  # a Python tool named "web__late"
    )
    web = mcp_server(chatd, "web")
    await session(chatd, ["web__grow", "web__x__add", "web__late"])
    too_long = "z" * 60  # "web__zzz..." is longer than a Gemini function name may be
    wanted = {"late", "x__add", too_long}
    with structlog.testing.capture_logs() as logged:
        fake_gemini.push(Reply(parts=[call_part("web__grow", {"name": n}) for n in wanted]))
        fake_gemini.push(Reply(text="Grown."))
        assert not any(r.is_error for r in results(await turn(chatd, "grow three")))
        while not wanted <= {t.name for t in web.listed}:
            await web.wait_listed(web.listings)

    # What held the names keeps them: the Python tool, and the other server's tool.
    tools = await listed_tools(chatd)
    assert tools["web__late"].description == "Answers late, in Python."
    assert tools["web__x__add"].description == "Adds two integers."
    assert not any(name.startswith("web__zzz") for name in tools)
    python = await call(chatd, fake_gemini, "web__late")
    assert python.function_response.response["result"] == "late, in Python"
    added = await call(chatd, fake_gemini, "web__x__add", {"a": 2, "b": 3})
    assert added.function_response.response["result"] == "5"

    skipped = {(e["tool"], e["why"]) for e in logged if e["event"] == "mcp_tool_skipped"}
    assert skipped == {
        ("web__late", "conflict"),
        ("web__x__add", "conflict"),
        (f"web__{too_long}", "invalid"),
    }
    assert all(e["log_level"] == "error" for e in logged if e["event"] == "mcp_tool_skipped")
    assert chatd.running.metrics_server is not None
    samples = await scrape(chatd.running.metrics_server.port)
    total = "chatd_mcp_tools_skipped_total"
    assert value(samples, total, server="web", reason="conflict") == 2
    assert value(samples, total, server="web", reason="invalid") == 1

    # Counted once: listed again with the same tools, nothing new is counted.
    seen = web.listings
    assert not (await call(chatd, fake_gemini, "web__grow", {"name": "other"})).is_error
    await web.wait_listed(seen)
    samples = await scrape(chatd.running.metrics_server.port)
    assert value(samples, total, server="web", reason="conflict") == 2
    assert value(samples, total, server="web", reason="invalid") == 1


@pytest.mark.parametrize("kind", ["stdio", "http"])
async def test_a_server_that_never_answers_at_start_up_is_refused_at_the_timeout(
    kind: str,
) -> None:
    with socket.socket() as quiet:
        if kind == "stdio":
            # Reads its input and never writes a word.
            code = "import sys; sys.stdin.read()"
            config = ServerConfig(name="mute", command=sys.executable, args=("-c", code))
            what = f"command {sys.executable!r}"
        else:
            # Listening, so connections queue, but never accepting: no HTTP answer.
            quiet.bind(("127.0.0.1", 0))
            quiet.listen()
            url = f"http://127.0.0.1:{quiet.getsockname()[1]}/mcp"
            config = ServerConfig(name="mute", url=url)
            what = f"URL {url}"
        servers = McpServers([config])
        with pytest.raises(McpServerError) as refused:
            await servers.start(connect_timeout=0.5)
    assert str(refused.value) == f"MCP server 'mute' ({what}) cannot start: no answer within 0.5s"
    assert not servers.servers[0].connected


async def test_shutdown_stops_the_stdio_server(
    mcp_chatd: Chatd, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(release)
    await session(mcp_chatd, ["local__hold"])
    fake_gemini.push(
        Reply(parts=[call_part("local__hold", {"started": str(started), "release": str(release)})])
    )
    fake_gemini.push(Reply(text="ok"))
    running = asyncio.create_task(turn(mcp_chatd, "hold"))
    pid = int(await wait_for_file(started))
    fd = os.open(release, os.O_WRONLY)
    os.write(fd, b"done")
    os.close(fd)
    [held] = results(await running)
    assert held.function_response.response["result"] == "done"
    await mcp_chatd.running.stop(grace=0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_start_up_is_refused_when_a_server_cannot_start(
    start_chatd: StartChatd, tmp_path: Path, http_server: HttpServer
) -> None:
    missing = {"command": str(tmp_path / "no-such-server")}
    config = write_config(tmp_path, http_server, broken=missing)
    with pytest.raises(StartupError) as refused:
        await start_chatd(mcp_servers=config)
    assert refused.value.path == config
    assert f"MCP server 'broken' (command {missing['command']!r}) cannot start" in (
        refused.value.cause
    )
    assert "FileNotFoundError" in refused.value.cause


async def test_start_up_is_refused_when_tool_names_collide(
    tmp_path: Path, http_server: HttpServer
) -> None:
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path}/chatd.db",
        metrics_listen="",
        tools="tests.mcp_collision",  # CHATD_TOOLS
        mcp_servers=write_config(tmp_path, http_server),
    )
    with pytest.raises(StartupError) as refused:
        await app.start(settings)
    assert "duplicate tool name 'local__add'" in refused.value.cause
    assert "MCP server 'local'" in refused.value.cause


async def test_start_up_is_refused_for_a_schema_chatd_cannot_check(
    start_chatd: StartChatd, tmp_path: Path, http_server: HttpServer
) -> None:
    local = {
        "command": sys.executable,
        "args": ["-m", "tests.mcp_server", "stdio"],
        "cwd": str(ROOT),
    }
    config = write_config(tmp_path, http_server, local=local)
    with pytest.raises(StartupError) as refused:
        await start_chatd(mcp_servers=config)
    assert "MCP server 'local'" in refused.value.cause
    assert "'local__coded'" in refused.value.cause
    assert "unsupported schema keyword 'pattern'" in refused.value.cause
    assert "excludeTools" in refused.value.cause


async def test_start_up_is_refused_when_a_tool_name_is_not_a_gemini_name(
    start_chatd: StartChatd, tmp_path: Path, http_server: HttpServer
) -> None:
    long = "s" * 60  # "<server>__add" is then longer than Gemini's 64 characters
    local = {
        "command": sys.executable,
        "args": ["-m", "tests.mcp_server", "stdio"],
        "cwd": str(ROOT),
    }
    config = write_config(tmp_path, http_server, **{long: {**local, "includeTools": ["add"]}})
    with pytest.raises(StartupError) as refused:
        await start_chatd(mcp_servers=config)
    assert f"'{long}__add', which is not a valid Gemini function name" in refused.value.cause


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"command": "x", "url": "http://h/mcp"}, "either"),
        ({"command": "x", "colour": "red"}, "unknown keys ['colour']"),
        ({"url": "ftp://h/mcp"}, "http:// or https://"),
        ({"url": "http://h/mcp", "headers": {"A": "${MCP_UNSET_VARIABLE}"}}, "MCP_UNSET"),
        ({"type": "sse", "url": "http://h/sse"}, "'sse' is not supported"),
    ],
)
async def test_start_up_is_refused_for_a_bad_servers_file(
    start_chatd: StartChatd, tmp_path: Path, entry: dict[str, Any], said: str
) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"bad": entry}}))
    with pytest.raises(StartupError) as refused:
        await start_chatd(mcp_servers=str(path))
    assert "mcpServers.bad" in refused.value.cause and said in refused.value.cause


def test_schemas_are_brought_to_the_subset_chatd_checks() -> None:
    given = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "tags": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        },
    }
    assert gemini_schema(given) == {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "nullable": True, "default": None},
            "tags": {"type": "array", "items": {"type": "string", "nullable": True}},
        },
    }
