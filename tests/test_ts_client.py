"""The @chatd/client npm package (generated/ts) and the browser playground, from Node and
headless Chromium against a live chatd.

`npm pack` builds the package (tsc compiles the committed generated code to JavaScript and
.d.ts); the tarball is installed into a fresh npm project of its own, and its example and a
script calling every RPC kind run there against chatd's HTTP listener (Connect, gRPC-Web)
and its native gRPC port. The playground's committed bundle must match a fresh build, and
a Playwright script drives it in Debian's chromium (playwright-core, no browser download).
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from chatd.v1 import chat_service_pb2, session_pb2
from tests.conftest import Chatd, StartChatd

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "generated" / "ts"
SCRIPTS = Path(__file__).resolve().parent / "ts"
STATIC = ROOT / "server" / "http" / "static"
CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")
NPM = shutil.which("npm")
API_KEY = "k-ts"

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node and npm are not installed (make installs them from Debian: nodejs, npm)",
)


def npm(*args: str, cwd: Path) -> str:
    assert NPM is not None
    result = subprocess.run(
        [NPM, *args, "--no-audit", "--no-fund"], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """generated/ts/node_modules, installed from the lock file when missing (as `make` does)."""
    if not (PACKAGE / "node_modules" / ".bin" / "tsc").exists():
        npm("ci", cwd=PACKAGE)
    return PACKAGE / "node_modules"


@pytest.fixture(scope="module")
def tarball(node_modules: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack")
    npm("pack", "--pack-destination", str(out), cwd=PACKAGE)
    (built,) = out.glob("chatd-client-*.tgz")
    return built


@pytest.fixture(scope="module")
def project(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh npm project with the tarball and @connectrpc/connect-node installed (npm
    fetches their dependencies; the cache from `npm ci` usually has them)."""
    directory = tmp_path_factory.mktemp("project")
    (directory / "package.json").write_text(
        json.dumps({"name": "chatd-client-user", "private": True, "type": "module"})
    )
    connect_node = json.loads((PACKAGE / "package.json").read_text())["devDependencies"][
        "@connectrpc/connect-node"
    ]
    npm(
        "install",
        "--prefer-offline",
        str(tarball),
        f"@connectrpc/connect-node@{connect_node}",
        cwd=directory,
    )
    for script in ("rpc_kinds.mjs",):
        shutil.copy(SCRIPTS / script, directory / script)
    shutil.copy(PACKAGE / "example" / "example.mjs", directory / "example.mjs")
    return directory


async def node(*args: str, cwd: Path) -> tuple[int, str, str]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        *args,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "CHATD_API_KEY"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # A guard against a hung script, far above what a run takes.
        out, err = await asyncio.wait_for(proc.communicate(), 300)
    except TimeoutError:
        proc.kill()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start(start_chatd: StartChatd, **options: Any) -> Chatd:
    server: Chatd = await start_chatd(
        api_keys=f"ts:{API_KEY}", http_listen="127.0.0.1:0", **options
    )
    return server


def base_url(server: Chatd, protocol: str) -> str:
    """The URL a Connect transport of `protocol` calls: the HTTP listener, or for gRPC
    the native port."""
    if protocol == "grpc":
        return f"http://{server.address}"
    return f"http://127.0.0.1:{server.running.http_port}"


def test_the_tarball_holds_compiled_code_types_sources_and_the_example(tarball: Path) -> None:
    with tarfile.open(tarball) as archive:
        names = {name.removeprefix("package/") for name in archive.getnames()}
        manifest = json.loads(archive.extractfile("package/package.json").read())  # type: ignore[union-attr]
    for module in (
        "index",
        "gen/chatd/v1/chat_service_pb",
        "gen/chatd/v1/content_pb",
        "gen/chatd/v1/session_pb",
        "gen/google/rpc/status_pb",
        "gen/google/rpc/error_details_pb",
    ):
        assert {f"dist/{module}.js", f"dist/{module}.d.ts", f"src/{module}.ts"} <= names, module
    assert "example/example.mjs" in names
    assert not [n for n in names if n.startswith(("node_modules/", "playground/"))]
    assert manifest["name"] == "@chatd/client"
    assert set(manifest["dependencies"]) == {"@bufbuild/protobuf", "@connectrpc/connect"}
    assert manifest["exports"]["."] == {"types": "./dist/index.d.ts", "default": "./dist/index.js"}


def test_the_installed_package_type_checks_strictly(project: Path, node_modules: Path) -> None:
    """A TypeScript user's code compiles against the installed package's .d.ts files."""
    (project / "check.ts").write_text(
        """
import { createConnectTransport } from "@connectrpc/connect-node";
import { create } from "@bufbuild/protobuf";
import {
  type ChatClient, type ErrorInfo, createChatClient, errorDetails, functionArgs,
  FunctionCallSchema, Session_State,
} from "@chatd/client";

const client: ChatClient = createChatClient(
  createConnectTransport({ baseUrl: "http://127.0.0.1:8080", httpVersion: "1.1" }),
);
export async function demo(): Promise<ErrorInfo | undefined> {
  for await (const event of client.streamReply({ sessionId: "s", text: "hi" })) {
    if (event.event.case === "reply") return undefined;
  }
  const args: { [key: string]: unknown } = functionArgs(
    create(FunctionCallSchema, { argsJson: '{"n": 1}' }),
  );
  const state: Session_State = Session_State.ACTIVE;
  void args; void state;
  return errorDetails(new Error("x")).errorInfo;
}
"""
    )
    result = subprocess.run(
        [
            str(node_modules / ".bin" / "tsc"),
            "--noEmit",
            "--strict",
            "--module",
            "nodenext",
            "--target",
            "es2022",
            # The user's project has no @types/node: library .d.ts files are not checked.
            "--skipLibCheck",
            "--lib",
            "es2022,dom",
            "check.ts",
        ],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("protocol", ["connect", "grpc-web", "grpc"])
async def test_the_example_runs_against_a_live_chatd(
    project: Path, start_chatd: StartChatd, protocol: str
) -> None:
    server = await start(start_chatd)
    code, out, err = await node(
        "example.mjs",
        base_url(server, protocol),
        "--protocol",
        protocol,
        "--api-key",
        API_KEY,
        cwd=project,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("session: ")
    # The echo provider's reply, streamed in deltas, quotes the message.
    assert any(
        line.startswith("model: ") and '"Hello from @chatd/client"' in line for line in lines
    ), lines
    assert "finish_reason: STOP" in lines
    assert "reply state: COMPLETED" in lines
    assert "model called lookup_order (run by the caller)" in lines
    assert "paused: TOOL_CALLS_PENDING" in lines
    assert 'tool call: lookup_order({"order_id":42}) -> {"order_id":42,"status":"shipped"}' in (
        lines
    )
    assert "after tools: STOP" in lines
    # Two user messages, the model's answer, its function call, the tool's response and
    # the model's last answer.
    assert "messages: 6" in lines
    assert "error: InvalidArgument" in lines
    assert "reason: ID_MALFORMED" in lines
    assert any(line.startswith("field: session_id: ") for line in lines), lines


async def test_the_example_reports_a_wrong_key(project: Path, start_chatd: StartChatd) -> None:
    server = await start(start_chatd)
    code, _, err = await node(
        "example.mjs", base_url(server, "connect"), "--api-key", "wrong", cwd=project
    )
    assert code == 1
    assert "error: the call failed with Unauthenticated" in err


@pytest.mark.parametrize("protocol", ["connect", "grpc-web", "grpc"])
async def test_node_calls_every_rpc_kind(
    project: Path, start_chatd: StartChatd, protocol: str
) -> None:
    server = await start(start_chatd)
    code, out, err = await node(
        "rpc_kinds.mjs", base_url(server, protocol), API_KEY, protocol, cwd=project
    )
    assert code == 0, err
    seen = json.loads(out)
    # Unary RPCs.
    assert seen["created"] == "node-kinds"
    assert seen["got"] == {"lang": "ts"}
    assert seen["listed"] == ["node-kinds"]
    assert seen["updated"] == "renamed"
    assert seen["sendText"].startswith('Echo: "unary hello"')
    assert seen["appended"] == 1
    assert seen["messageCount"] == 3
    assert seen["counted"] is True
    assert seen["replyState"] == "COMPLETED"
    assert seen["replies"] == 1
    assert seen["cancelled"] is False
    assert seen["generated"].startswith('Echo: "stateless"')
    assert "get_current_time" in seen["tools"]
    assert seen["exported"] == 3
    assert seen["imported"] == "3"
    assert seen["forked"] == "node-kinds-fork"
    assert seen["cleared"] == "0"
    # Server-streaming RPCs: StreamReply with a server tool call and its result, numbered
    # events, ending with the reply.
    cases = seen["streamCases"]
    assert cases[-1] == "reply"
    assert cases.index("toolCall") < cases.index("toolResult") < cases.index("textDelta")
    assert seen["streamSequence"] == list(range(1, len(cases) + 1))
    assert "get_current_time returned" in seen["streamReplyText"]
    assert seen["exportParts"] >= 2
    assert seen["exportStreamMessages"] == 7
    assert seen["generateCases"] == ["textDelta", "generation"]
    # Rich errors, from a stream and from a unary call.
    assert seen["streamError"] == {
        "code": "InvalidArgument",
        "reason": "MESSAGE_EMPTY",
        "fields": ["text"],
    }
    assert seen["afterDelete"] == {"code": "NotFound", "reason": "SESSION_NOT_FOUND"}


def test_the_committed_playground_bundle_is_fresh(node_modules: Path, tmp_path: Path) -> None:
    """server/http/static is what `make playground` builds from generated/ts/playground."""
    assert NODE is not None
    typecheck = subprocess.run(
        [str(node_modules / ".bin" / "tsc"), "-p", "playground/tsconfig.json"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
    )
    assert typecheck.returncode == 0, typecheck.stdout + typecheck.stderr
    subprocess.run(
        [NODE, "playground/build.mjs", str(tmp_path)], cwd=PACKAGE, check=True, capture_output=True
    )
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == ["index.html", "playground.js"]
    stale = [name for name in built if not filecmp.cmp(tmp_path / name, STATIC / name, False)]
    assert not stale, f"server/http/static is stale ({stale}): run 'make playground' and commit"


@pytest.fixture
def driver(node_modules: Path, tmp_path: Path) -> Path:
    """A directory holding the Playwright script, resolving playwright-core from
    generated/ts/node_modules."""
    assert CHROMIUM.exists(), (
        "/usr/bin/chromium is missing: `make test` installs Debian's chromium package"
    )
    (tmp_path / "node_modules").symlink_to(node_modules)
    shutil.copy(SCRIPTS / "playground.mjs", tmp_path / "playground.mjs")
    return tmp_path


async def test_the_playground_in_headless_chromium(driver: Path, start_chatd: StartChatd) -> None:
    server = await start(start_chatd)
    declaration = session_pb2.FunctionDeclaration(name="lookup_order", parameters_json="{}")
    await server.stub.CreateSession(
        chat_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(
                display_name="Caller tools", function_declarations=[declaration]
            )
        ),
        metadata=(("authorization", f"Bearer {API_KEY}"),),
    )
    url = base_url(server, "connect") + "/"
    screenshot = driver / "playground.png"
    code, out, err = await node("playground.mjs", url, API_KEY, str(screenshot), cwd=driver)
    assert code == 0, err
    seen = json.loads(out)
    assert seen["keylessStatus"].startswith("Unauthenticated: "), seen["keylessStatus"]
    assert "(API_KEY_MISSING)" in seen["keylessStatus"]
    assert seen["keyedStatus"] == ""
    assert seen["consoleErrors"] == []
    # Nothing but chatd's own origin: no CDN, no third-party asset.
    assert seen["requests"], seen
    assert all(request.startswith(url) for request in seen["requests"]), seen["requests"]
    assert seen["sessionTitle"].startswith("Playground ")
    assert seen["replyText"].startswith('Echo: "Hello from the playground test"')
    # The reply grew delta by delta (the echo provider streams a few words at a time).
    assert seen["bubbleChanges"] > 1
    assert seen["toolCall"].startswith('tool call get_current_time({"timezone":"UTC"})')
    assert seen["toolResult"].startswith("tool result get_current_time: ")
    assert '"timezone":"UTC"' in seen["toolResult"].replace(" ", "")
    document = seen["exported"]
    assert seen["exportName"] == f"{document['session']['sessionId']}.json"
    assert document["session"]["displayName"].startswith("Playground ")
    # The two user messages, the model's answer, its function call, the tool's response
    # and the model's last answer.
    assert len(document["messages"]) == 6
    assert seen["sessions"] == 2
    # The caller tool: the turn paused, and the JSON typed in the composer answered it.
    assert seen["callerCall"] == 'tool call lookup_order({"order_id":7}) (caller executes)'
    assert seen["placeholder"] == "A JSON result answers lookup_order"
    assert seen["callerReply"].startswith(
        'Echo: lookup_order returned {"result": {"status": "shipped"}}'
    )
    assert screenshot.read_bytes().startswith(b"\x89PNG")
