"""The client examples in client_examples/, run as a user runs them, against a real chatd."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc
import grpc_testing
import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2
from tests.certs import make_pki
from tests.conftest import Chatd, StartChatd
from tests.fakes import GatedProvider

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "client_examples"
PYTHON_EXAMPLES = EXAMPLES / "python"
NODE_EXAMPLES = EXAMPLES / "node"
COOKBOOK = EXAMPLES / "grpcurl" / "cookbook.sh"
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
NODE = shutil.which("node")
SCRIPTS = ("sync_chat.py", "async_chat.py", "streaming.py", "caller_tools.py", "chat_cli.py")


@dataclass
class Finished:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without CHATD_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


async def run(
    *argv: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 30,
) -> Finished:
    """Runs a program without blocking the event loop the in-process server runs on."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env or clean_env(),
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Finished(proc.returncode, out.decode(), err.decode())


async def example(
    script: str,
    address: str,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> Finished:
    """Runs client_examples/python/SCRIPT against `address`."""
    argv = (sys.executable, str(PYTHON_EXAMPLES / script), "--address", address, *args)
    return await run(*argv, stdin=stdin, env=env)


def ok(finished: Finished) -> str:
    assert finished.code == 0, f"exit {finished.code}\n{finished.out}\n{finished.err}"
    return finished.out


def unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_sync_chat(chatd: Chatd) -> None:
    out = ok(await example("sync_chat.py", chatd.address))
    assert 'model: Echo: "Hello, chatd!" - turn 1 of this conversation' in out
    assert "turn 2 of this conversation" in out
    assert "FINISH_REASON_STOP" in out
    assert "#0 user: Hello, chatd!" in out
    assert '#3 model: Echo: "Do you remember what I said first?"' in out
    session_id = out.split("session: ", 1)[1].split()[0]
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id=session_id))
    assert got.session.message_count == 4
    assert got.session.labels["example"] == "sync_chat"


async def test_async_chat_retry_returns_the_same_reply(chatd: Chatd) -> None:
    out = ok(await example("async_chat.py", chatd.address))
    assert 'model: Echo: "And a second message." - turn 2' in out
    assert "retry returned the same reply: True" in out
    assert "history: 6 messages, 3 user messages" in out


async def test_streaming_prints_tool_events_and_the_summary(chatd: Chatd) -> None:
    out = ok(await example("streaming.py", chatd.address))
    assert 'model: Echo: "Hello! Please reply word by word."' in out
    assert (
        '[tool call call-3-0] get_current_time({"timezone": "Asia/Tokyo"}) - chatd runs it' in out
    )
    assert "[tool result call-3-0] ok: " in out
    assert "model: Echo: get_current_time returned" in out
    assert out.count("finish_reason: FINISH_REASON_STOP, usage: ") == 2


async def test_streaming_prints_deltas_as_they_arrive(start_chatd: StartChatd) -> None:
    """The model's first word is printed while the model holds back the rest, so before
    the reply could have ended; the rest follows once released."""
    provider = GatedProvider()
    slow = await start_chatd(provider=provider)
    provider.release()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PYTHON_EXAMPLES / "streaming.py"),
        "--address",
        slow.address,
        "Hello slowly",
        stdout=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    assert proc.stdout is not None
    seen = ""
    while "model: one" not in seen:
        seen += (await asyncio.wait_for(proc.stdout.read(64), 60)).decode()
    assert "finish_reason:" not in seen
    provider.release(len(provider.deltas))
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    seen += out.decode()
    assert proc.returncode == 0, seen
    assert "model: one two three four" in seen
    assert "finish_reason: FINISH_REASON_STOP" in seen


async def test_caller_tools_answers_pending_calls(chatd: Chatd) -> None:
    message = '/call lookup_order {"order_id": 42}\n/call lookup_order {"order_id": 0}'
    out = ok(await example("caller_tools.py", chatd.address, message))
    assert 'model called lookup_order({"order_id": 42.0}) as call-1-0' in out
    assert "answered with result: " in out
    assert "answered with error: there is no order 0" in out
    assert 'lookup_order returned {"result": {"carrier": "DHL"' in out
    assert 'lookup_order returned {"error": "there is no order 0"}' in out
    assert "finish_reason: FINISH_REASON_STOP" in out


async def test_chat_cli_through_a_pipe(chatd: Chatd, tmp_path: Path) -> None:
    export = tmp_path / "cli.json"
    script = "\n".join(
        [
            "/new cli-session",
            "hello from the pipe",
            '//call get_current_time {"timezone": "UTC"}',
            "/list",
            "/switch no-such-session",
            "/history",
            f"/export {export}",
            "/quit",
            "never sent",
        ]
    )
    finished = await example("chat_cli.py", chatd.address, stdin=script + "\n")
    out = ok(finished)
    assert "new session cli-session (tools: calculate, date_diff, get_current_time)" in out
    assert 'model: Echo: "hello from the pipe" - turn 1' in out
    assert "[calls get_current_time] Echo: get_current_time returned" in out
    assert "* cli-session  6 messages" in out
    assert "NOT_FOUND" in finished.err
    assert "user: hello from the pipe" in out
    assert f"exported 6 messages to {export}" in out
    assert "never sent" not in out.replace("> never sent", "")

    document = json.loads(export.read_text())
    assert document["session"]["session_id"] == "cli-session"
    texts = [p.get("text", "") for m in document["messages"] for p in m["parts"]]
    assert texts[0] == "hello from the pipe"
    assert texts[1].startswith('Echo: "hello from the pipe"')
    assert [m["role"] for m in document["messages"][:2]] == ["ROLE_USER", "ROLE_MODEL"]


@contextlib.contextmanager
def interruptible_children() -> Iterator[None]:
    """Processes started meanwhile begin with SIGINT at its default, as from a terminal,
    even when this one was started with SIGINT ignored (as a non-interactive shell starts
    its background jobs), which they would inherit and so never see Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def test_chat_cli_ctrl_c_cancels_the_streaming_reply(start_chatd: StartChatd) -> None:
    """The model gives one word and then nothing more until released, which it never is:
    only Ctrl-C ends the reply."""
    provider = GatedProvider()
    slow = await start_chatd(provider=provider)
    provider.release()
    with interruptible_children():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PYTHON_EXAMPLES / "chat_cli.py"),
            "--address",
            slow.address,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=clean_env(),
        )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"/new slow\na reply long enough to interrupt\n")
        await proc.stdin.drain()
        seen = ""
        while "model: one" not in seen:
            seen += (await asyncio.wait_for(proc.stdout.read(64), 60)).decode()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        proc.stdin.write(b"/history\n/quit\n")
        proc.stdin.close()
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    seen += out.decode()
    assert proc.returncode == 0, seen
    assert "(cancelled)" in seen
    assert "user:" not in seen.split("> /history", 1)[1], "the cancelled turn was stored"
    got = await slow.stub.GetSession(pb.GetSessionRequest(session_id="slow"))
    assert got.session.message_count == 0


@pytest.mark.parametrize("script", SCRIPTS)
async def test_python_examples_exit_non_zero_when_chatd_is_unreachable(script: str) -> None:
    finished = await example(script, unused_address(), stdin="")
    assert finished.code == 1
    assert "UNAVAILABLE" in finished.err


async def test_python_examples_send_the_api_key_over_tls(
    start_chatd: StartChatd, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    secure = await start_chatd(
        api_keys="examples:s3cret", tls_cert=str(pki.server.cert), tls_key=str(pki.server.key)
    )
    tls = ("--ca-cert", str(pki.ca.cert))
    ok(await example("sync_chat.py", secure.address, *tls, env=clean_env(CHATD_API_KEY="s3cret")))
    out = ok(await example("caller_tools.py", secure.address, *tls, "--api-key", "s3cret"))
    assert "lookup_order returned" in out

    refused = await example("async_chat.py", secure.address, "--tls", "--ca-cert", tls[1])
    assert refused.code == 1
    assert "UNAUTHENTICATED" in refused.err
    wrong = await example("chat_cli.py", secure.address, *tls, "--api-key", "nope", stdin="")
    assert wrong.code == 1
    assert "UNAUTHENTICATED: the API key is not valid" in wrong.err


def sync_chat_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(PYTHON_EXAMPLES))
    return importlib.import_module("sync_chat")


def test_sync_chat_request_shapes_without_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sync_chat = sync_chat_module(monkeypatch)
    service = pb.DESCRIPTOR.services_by_name["ChatService"]
    method = service.methods_by_name
    channel = grpc_testing.channel([service], grpc_testing.strict_real_time())
    stub = sync_chat.chat_service_pb2_grpc.ChatServiceStub(channel)
    auth = ("authorization", "Bearer k-123")
    ok_status = ((), grpc.StatusCode.OK, "")

    def message(
        message_id: str, role: content_pb2.Role.ValueType, text: str
    ) -> content_pb2.Message:
        return content_pb2.Message(
            message_id=message_id, role=role, parts=[content_pb2.Part(text=text)]
        )

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(sync_chat.chat, stub, (auth,), ["first", "second"])

        metadata, create, rpc = channel.take_unary_unary(method["CreateSession"])
        assert auth in metadata
        assert create.session_id == ""
        assert create.session.display_name == "sync example"
        assert dict(create.session.labels) == {"example": "sync_chat"}
        rpc.terminate(
            pb.CreateSessionResponse(session=session_pb2.Session(session_id="s-1")), *ok_status
        )

        for turn, text in enumerate(["first", "second"], start=1):
            metadata, send, rpc = channel.take_unary_unary(method["SendMessage"])
            assert auth in metadata
            assert send == pb.SendMessageRequest(session_id="s-1", text=text)
            reply = pb.Reply(text=f"reply {turn}", finish_reason=content_pb2.FINISH_REASON_STOP)
            rpc.terminate(pb.SendMessageResponse(reply=reply), *ok_status)

        # History arrives in two pages: the client follows next_page_token.
        _, listed, rpc = channel.take_unary_unary(method["ListMessages"])
        assert listed == pb.ListMessagesRequest(session_id="s-1")
        first_page = [message("0", content_pb2.ROLE_USER, "first")]
        rpc.terminate(
            pb.ListMessagesResponse(messages=first_page, next_page_token="page-2"), *ok_status
        )
        _, listed, rpc = channel.take_unary_unary(method["ListMessages"])
        assert listed == pb.ListMessagesRequest(session_id="s-1", page_token="page-2")
        rpc.terminate(
            pb.ListMessagesResponse(messages=[message("1", content_pb2.ROLE_MODEL, "reply 1")]),
            *ok_status,
        )
        running.result(timeout=5)

    out = capsys.readouterr().out
    assert "session: s-1" in out
    assert "model: reply 2" in out
    assert "#0 user: first\n  #1 model: reply 1" in out


def test_sync_chat_raises_the_status_of_a_failed_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sync_chat = sync_chat_module(monkeypatch)
    service = pb.DESCRIPTOR.services_by_name["ChatService"]
    channel = grpc_testing.channel([service], grpc_testing.strict_real_time())
    stub = sync_chat.chat_service_pb2_grpc.ChatServiceStub(channel)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(sync_chat.chat, stub, (), ["hi"])
        _, _, rpc = channel.take_unary_unary(service.methods_by_name["CreateSession"])
        rpc.terminate(None, (), grpc.StatusCode.RESOURCE_EXHAUSTED, "too many sessions")
        with pytest.raises(grpc.RpcError) as raised:
            running.result(timeout=5)
    assert sync_chat.report(raised.value) == 1
    err = capsys.readouterr().err
    assert "RESOURCE_EXHAUSTED: too many sessions" in err


@pytest.mark.skipif(NODE is None, reason="node is not installed")
async def test_node_stream_reply(chatd: Chatd, start_chatd: StartChatd, tmp_path: Path) -> None:
    assert NODE is not None
    if not (NODE_EXAMPLES / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        assert npm, "node is installed but npm is not"
        ok(await run(npm, "ci", "--no-audit", "--no-fund", cwd=NODE_EXAMPLES, timeout=300))

    out = ok(await run(NODE, "stream_reply.js", "--address", chatd.address, cwd=NODE_EXAMPLES))
    assert 'model: Echo: "Hello from Node.js!" - turn 1 of this conversation' in out
    assert "finish_reason: FINISH_REASON_STOP" in out

    pki = make_pki(tmp_path)
    keyed = await start_chatd(
        api_keys="node:k-node", tls_cert=str(pki.server.cert), tls_key=str(pki.server.key)
    )
    address = ("--address", keyed.address, "--ca-cert", str(pki.ca.cert))
    argv = (NODE, "stream_reply.js", *address, "Hi with a key")
    env = clean_env(CHATD_API_KEY="k-node")
    out = ok(await run(*argv, env=env, cwd=NODE_EXAMPLES))
    assert 'Echo: "Hi with a key"' in out
    refused = await run(*argv, cwd=NODE_EXAMPLES)
    assert refused.code == 1
    assert "UNAUTHENTICATED" in refused.err


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make test installs it)")
@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "tls-and-api-key"])
async def test_grpcurl_cookbook_runs_end_to_end(
    start_chatd: StartChatd, tmp_path: Path, secure: bool
) -> None:
    assert GRPCURL is not None
    env = clean_env(GRPCURL=GRPCURL, PYTHON=sys.executable)
    metadata: tuple[tuple[str, str], ...] = ()
    if secure:
        pki = make_pki(tmp_path)
        server = await start_chatd(
            api_keys="cookbook:k-cook", tls_cert=str(pki.server.cert), tls_key=str(pki.server.key)
        )
        env.update(CHATD_API_KEY="k-cook", CHATD_CA_CERT=str(pki.ca.cert))
        credentials = grpc.ssl_channel_credentials(pki.ca.cert.read_bytes())
        channel = grpc.aio.secure_channel(server.address, credentials)
        metadata = (("authorization", "Bearer k-cook"),)
    else:
        server = await start_chatd()
        channel = grpc.aio.insecure_channel(server.address)

    out = ok(await run("bash", str(COOKBOOK), server.address, env=env))
    for expected in (
        '"status": "SERVING"',
        '"name": "get_current_time"',
        '"display_name": "renamed"',
        '"step": "updated"',
        '"text_delta"',
        '"tool_result"',
        "FINISH_REASON_TOOL_CALLS_PENDING",
        'lookup_order returned {\\"result\\": {\\"status\\": \\"shipped\\"}}',
        '"total_tokens"',
        '"generation"',
        "-copy",
        "Do you remember me?",
        "### Done",
    ):
        assert expected in out, expected
    retried = re.search(r"first turn (\S+), retry turn (\S+)", out)
    assert retried and retried[1] == retried[2]

    # The cookbook deletes what it created.
    async with channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        listed = await stub.ListSessions(pb.ListSessionsRequest(), metadata=metadata)
    assert list(listed.sessions) == []
