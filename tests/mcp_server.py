"""A small MCP server for the tests, on the SDK's MCPServer, over stdio or streamable HTTP.

    python -m tests.mcp_server stdio
    python -m tests.mcp_server http PORT_FILE [PORT]   # binds 127.0.0.1:PORT (0 picks one)
                                                       # and writes the port to PORT_FILE

Its tools: `add`, `pid` (its process id), `fail` (an isError result), `picture` (text
and a PNG image), `note` (an embedded text resource), `optional` (an Optional argument),
`coded` (a schema chatd refuses: a "pattern"), `stall` (never returns: a call ends only
by the caller's timeout or cancellation, and the server stops at once, with no thread
stuck in it) and `hold`, which writes its process id to
the file `started` and returns only once the FIFO `release` is written: a latch the tests
use to kill the server in the middle of a call.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import anyio
import mcp_types
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
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


def main() -> None:
    transport = sys.argv[1]
    if transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    port_file = sys.argv[2]
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    # Listening before the port is announced: a client connecting before uvicorn runs is
    # queued in the backlog, not refused.
    sock.listen(128)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    # Written once listening, renamed into place so a reader never sees half of it.
    Path(port_file + ".tmp").write_text(str(sock.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
