"""A small MCP server for the tests, on the SDK's MCPServer, over stdio or streamable HTTP.

    python -m tests.mcp_server stdio [--legacy]
    python -m tests.mcp_server http PORT_FILE [PORT] [--legacy]
        # binds 127.0.0.1:PORT (0 picks one) and writes the port to PORT_FILE
    python -m tests.mcp_server http PORT_FILE --port-from FILE [--legacy]
        # the same, once FILE exists, on the port FILE holds: a server started ahead,
        # standing by to take over the port of one a test kills

It speaks the 2026-07-28 protocol and the earlier ones, as the SDK does; with --legacy
only the earlier ones (the initialize handshake), as servers written before 2026-07-28 do.

Its tools: `add`, `pid` (its process id), `fail` (an isError result), `picture` (text
and a PNG image), `note` (an embedded text resource), `optional` (an Optional argument),
`coded` (a schema chatd refuses: a "pattern"), `stall` (never returns: a call ends only
by the caller's timeout or cancellation, and the server stops at once, with no thread
stuck in it), `wait` (the same, writing "cancelled" to a file when cancelled), `big` (a
text of a given size), `grow` and `shrink` (add or remove a tool, and say the tool list
changed) and `hold`, which writes its process id to
the file `started` and returns only once the FIFO `release` is written: a latch the tests
use to kill the server in the middle of a call.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import mcp_types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from pydantic import Field

# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

server = MCPServer("test-tools")


@server.tool()
def add(a: int, b: int) -> str:
    """Adds two integers."""
    return str(a + b)


@server.tool()
def fail(reason: str) -> str:
    """Always fails with the reason."""
    raise ToolError(f"failed: {reason}")


@server.tool()
def picture() -> list[mcp_types.TextContent | mcp_types.ImageContent]:
    """A caption and an image."""
    return [
        mcp_types.TextContent(text="a pixel"),
        mcp_types.ImageContent(data=base64.b64encode(PNG).decode(), mime_type="image/png"),
    ]


@server.tool()
def note() -> list[mcp_types.EmbeddedResource]:
    """An embedded text resource."""
    return [
        mcp_types.EmbeddedResource(
            resource=mcp_types.TextResourceContents(
                uri="memo://note", mime_type="text/plain", text="remember the milk"
            )
        )
    ]


@server.tool()
def optional(word: str | None = None) -> str:
    """Echoes the word, or says there is none."""
    return word or "none"


@server.tool()
def pid() -> str:
    """This server's process id."""
    return str(os.getpid())


@server.tool()
def coded(code: Annotated[str, Field(pattern="^[A-Z]{3}$")]) -> str:
    """Takes a three-letter code: its schema has a "pattern", which chatd does not check."""
    return code


@server.tool()
async def stall() -> str:
    """Never returns: a call to it ends only by the caller giving up (its timeout)."""
    await anyio.sleep_forever()
    return "never"


@server.tool()
def hold(started: str, release: str) -> str:
    """Writes this process's id to `started`, then returns what is written to the FIFO
    `release` (opening it blocks until a writer opens it too). Runs in a worker thread."""
    Path(started).write_text(str(os.getpid()))
    with open(release) as fifo:
        return fifo.read()


@server.tool()
async def wait(cancelled: str) -> str:
    """Waits until the call is cancelled, then writes "cancelled" to the file `cancelled`."""
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await anyio.Path(cancelled).write_text("cancelled")
        raise
    return "never"


@server.tool()
def big(size: int) -> str:
    """A text of `size` bytes."""
    return "x" * size


async def _tools_changed(ctx: Context) -> None:
    # Both eras: a 2026-07-28 client hears it on its subscriptions/listen stream, an
    # earlier one as a notification (each delivery is a no-op on the other era).
    await ctx.notify_tools_changed()
    await ctx.session.send_tool_list_changed()


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Adds a tool called `name` (it returns its own name) and says the list changed."""

    def added() -> str:
        return f"I am {name}"

    server.add_tool(added, name=name, description=f"The tool {name}.")
    await _tools_changed(ctx)
    return "grown"


@server.tool()
async def shrink(name: str, ctx: Context) -> str:
    """Removes the tool called `name` and says the list changed."""
    server.remove_tool(name)
    await _tools_changed(ctx)
    return "shrunk"


async def _refuse_discover(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """Middleware of a server that predates the 2026-07-28 protocol: it does not know
    `server/discover`, so clients fall back to the initialize handshake."""
    if ctx.method == "server/discover":
        raise MCPError(mcp_types.METHOD_NOT_FOUND, "Method not found")
    return await call_next(ctx)


async def _serve_stdio_handshake_only() -> None:
    """stdio served the way `MCPServer.run` does, less its 2026-07-28 side: the SDK's
    handshake-only loop (the one its streamable-HTTP manager runs per session)."""
    lowlevel = server._lowlevel_server
    async with stdio_server() as (read, write), lowlevel.lifespan(lowlevel) as state:
        await serve_loop(
            lowlevel,
            read,
            write,
            lifespan_state=state,
            init_options=lowlevel.create_initialization_options(),
        )


def serve_http(port_file: str, port: Callable[[], int]) -> None:
    """Serves on 127.0.0.1 at `port()`, asked once all is loaded and ready to bind."""
    import uvicorn

    app = server.streamable_http_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port()))
    # Listening before the port is announced: a client connecting before uvicorn runs is
    # queued in the backlog, not refused.
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning")
    # Written once listening, renamed into place so a reader never sees half of it.
    Path(port_file + ".tmp").write_text(str(sock.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    uvicorn.Server(config).run(sockets=[sock])


def _port_from(path: Path) -> int:
    """The port written to `path`, once it is there (written whole, by a rename)."""
    while not path.exists():
        time.sleep(0.01)
    return int(path.read_text())


def main() -> None:
    legacy = "--legacy" in sys.argv
    transport, *args = [a for a in sys.argv[1:] if a != "--legacy"]
    if transport == "stdio":
        if legacy:
            anyio.run(_serve_stdio_handshake_only)
        else:
            server.run("stdio")
        return
    if legacy:
        server.middleware.append(_refuse_discover)
    if args[1:2] == ["--port-from"]:
        serve_http(args[0], lambda: _port_from(Path(args[2])))
    else:
        serve_http(args[0], lambda: int(args[1]) if len(args) > 1 else 0)


if __name__ == "__main__":
    main()
