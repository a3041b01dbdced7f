"""Server reflection under grpc.reflection.v1 and v1alpha, as buf curl uses each."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import Chatd

BUF = Path(sys.executable).parent / "buf"  # a dev dependency (buf-bin)
PROTOCOLS = ("grpc-v1", "grpc-v1alpha")


async def buf_curl(chatd: Chatd, protocol: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect-protocol",
        protocol,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_buf_curl_lists_the_services(chatd: Chatd, protocol: str) -> None:
    listed = await buf_curl(chatd, protocol, "--list-services", f"http://{chatd.address}")
    assert set(listed.split()) == {
        "chatd.v1.ChatService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_buf_curl_calls_chatd_with_only_reflection_to_go_by(
    chatd: Chatd, protocol: str
) -> None:
    base = f"http://{chatd.address}/chatd.v1.ChatService"
    created = json.loads(
        await buf_curl(chatd, protocol, "-d", '{"session_id": "r1"}', f"{base}/CreateSession")
    )
    assert created["session"]["sessionId"] == "r1"
    methods = await buf_curl(chatd, protocol, "--list-methods", f"http://{chatd.address}")
    assert "chatd.v1.ChatService/StreamReply" in methods.split()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_reflection_describes_both_reflection_services(chatd: Chatd, protocol: str) -> None:
    """A client reflecting on v1 itself gets v1's descriptor, not v1alpha's."""
    methods = await buf_curl(chatd, protocol, "--list-methods", f"http://{chatd.address}")
    assert {
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    } <= set(methods.split())
