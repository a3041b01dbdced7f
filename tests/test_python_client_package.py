"""The chatd-client wheel (clients/python): built from the committed generated/ stubs,
installed into a fresh virtual environment of its own, and its example run against a real
chatd with that environment's python."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import StartChatd

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "python"
QUIET_PIP = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def requirements(pyproject: Path) -> dict[str, Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return {(r := Requirement(line)).name: r for line in project["dependencies"]}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(PACKAGE)],
        check=True,
        env=QUIET_PIP,
    )
    (built,) = out.glob("chatd_client-*.whl")
    return built


@pytest.fixture(scope="module")
def client_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv (no system site-packages) with only the wheel installed;
    pip fetches its dependencies."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, env=QUIET_PIP
    )
    return python


def test_wheel_holds_the_generated_stubs_the_client_and_the_minimums(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    generated = ROOT / "generated"
    stubs = {
        p.relative_to(generated).as_posix()
        for p in (generated / "chatd").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert stubs <= names, stubs - names
    assert "chatd/py.typed" in names
    assert {"chatd/client/__init__.py", "chatd/client/_sync.py", "chatd/client/_aio.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # The stubs exist once in the repository: the client tree holds no copy of them.
    assert not (PACKAGE / "chatd" / "v1").exists()

    server = requirements(ROOT / "pyproject.toml")
    client = requirements(PACKAGE / "pyproject.toml")
    for name in ("grpcio", "protobuf"):
        assert client[name].specifier == server[name].specifier, name
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))
    )
    declared = {
        Requirement(line.split(":", 1)[1].strip()).name
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist:")
    }
    assert declared == {"grpcio", "protobuf", "googleapis-common-protos"}


def test_the_installed_client_and_example_type_check_strictly(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    config = tmp_path / "mypy.ini"
    # googleapis-common-protos ships no type information.
    config.write_text("[mypy]\nstrict = True\n[mypy-google.rpc.*]\nignore_missing_imports = True\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(tmp_path / "site" / "chatd" / "client"),
            str(PACKAGE / "example.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path / "site",
        env={**os.environ, "MYPYPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_example_runs_against_a_live_chatd_from_a_fresh_venv(
    client_python: Path, start_chatd: StartChatd
) -> None:
    server = await start_chatd(api_keys="example:k-example")
    proc = await asyncio.create_subprocess_exec(
        str(client_python),
        str(PACKAGE / "example.py"),
        f"127.0.0.1:{server.running.port}",
        "--api-key",
        "k-example",
        # Run from outside the repository so that only the installed wheel can be imported.
        cwd=client_python.parent,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHATD_API_KEY")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("session: ")
    # The echo provider's reply, streamed in deltas, quotes the message.
    assert any(
        line.startswith("model: ") and '"Hello from chatd-client"' in line for line in lines
    ), lines
    assert "finish_reason: FINISH_REASON_STOP" in lines
    assert "reply state: REPLY_STATE_COMPLETED" in lines, lines
    # Resuming after the second-to-last event replays the last one, the `reply`.
    (resumed,) = [line for line in lines if line.startswith("resumed after ")]
    after, numbers = resumed.removeprefix("resumed after ").split(": ")
    assert numbers == f"[{int(after) + 1}]"
    assert 'tool call: lookup_order({"order_id":42}) -> {"order_id": 42, "status": "shipped"}' in (
        lines
    )
    assert "after tools: FINISH_REASON_STOP" in lines
    # Read with the asyncio client: two user messages, the model's answer, its function
    # call, the tool's response and the model's last answer.
    assert "messages: 6" in lines
    assert "error: INVALID_ARGUMENT" in lines, lines
    assert "reason: ID_MALFORMED" in lines
    assert any(line.startswith("field: session_id: ") for line in lines), lines


async def test_the_client_sends_the_api_key(client_python: Path, start_chatd: StartChatd) -> None:
    server = await start_chatd(api_keys="example:k-example")
    proc = await asyncio.create_subprocess_exec(
        str(client_python),
        str(PACKAGE / "example.py"),
        f"127.0.0.1:{server.running.port}",
        "--api-key",
        "wrong",
        cwd=client_python.parent,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode != 0
    assert b"UNAUTHENTICATED" in err
