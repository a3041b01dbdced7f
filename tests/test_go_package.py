"""The Go package (generated/go): compiled offline with Debian's Go toolchain against Debian's
grpc-go, protobuf and genproto packages (`make go-debs`), and its example run against a live
chatd over native gRPC."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import StartChatd

ROOT = Path(__file__).resolve().parent.parent
GO_MODULE = ROOT / "generated" / "go"


@pytest.fixture(scope="module")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("go") / "example"
    built = subprocess.run(
        [str(ROOT / "scripts" / "go-build.sh"), str(binary)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return binary


def test_every_proto_file_is_generated_into_the_go_package() -> None:
    protos = sorted(p.stem for p in (ROOT / "protos" / "chatd" / "v1").glob("*.proto"))
    generated = sorted(
        p.name.removesuffix(".pb.go") for p in (GO_MODULE / "chatd" / "v1").glob("*.pb.go")
    )
    assert [g for g in generated if not g.endswith("_grpc")] == protos
    assert "chat_service_grpc" in generated
    module = (GO_MODULE / "go.mod").read_text().splitlines()[0]
    assert module == "module github.com/chatd/chatd/generated/go"


async def run_example(binary: Path, *args: str) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        env={k: v for k, v in os.environ.items() if k != "CHATD_API_KEY"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


async def test_go_example_runs_against_a_live_chatd(
    go_example: Path, start_chatd: StartChatd
) -> None:
    server = await start_chatd(api_keys="example:k-example")
    code, lines, err = await run_example(
        go_example, "-api-key", "k-example", f"127.0.0.1:{server.running.port}"
    )
    assert code == 0, err
    assert lines[0].startswith("session: ")
    # The echo provider's reply, streamed in deltas, quotes the message.
    assert any(line.startswith("model: ") and '"Hello from Go"' in line for line in lines), lines
    assert "finish_reason: FINISH_REASON_STOP" in lines
    # The turn paused for the caller's tool, which the example ran and answered.
    assert "paused: FINISH_REASON_TOOL_CALLS_PENDING" in lines, lines
    assert 'tool call: lookup_order({"order_id":42}) -> {"order_id":42,"status":"shipped"}' in (
        lines
    )
    assert "after tools: FINISH_REASON_STOP" in lines
    # The rich error's details, read from the grpc-status-details-bin trailer.
    assert "error: InvalidArgument" in lines, lines
    assert "reason: ID_MALFORMED" in lines
    assert any(line.startswith("field: session_id: ") for line in lines), lines


async def test_go_example_sends_the_api_key(go_example: Path, start_chatd: StartChatd) -> None:
    server = await start_chatd(api_keys="example:k-example")
    code, _, err = await run_example(
        go_example, "-api-key", "wrong", f"127.0.0.1:{server.running.port}"
    )
    assert code != 0
    assert "Unauthenticated" in err
