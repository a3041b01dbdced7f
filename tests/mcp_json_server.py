"""The test MCP server (tests/mcp_server.py) over streamable HTTP answering in JSON
(json_response=True, as stateless servers do: response headers only once the tool returns;
--sse for event streams), plus three tools for the resend tests: `counted` appends a line to
`log` each time it runs and returns what is written to the FIFO `release`; `busy` fails with
the server's own JSON-RPC error -32000; `break_listing` makes the next tools/list fail once
and announces a tool list change.

    python -m tests.mcp_json_server PORT_FILE [--legacy] [--sse]
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import mcp_types
import uvicorn
from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPError

from tests import mcp_server as base

server = base.server


@server.tool()
def counted(log: str, release: str) -> str:
    """Appends a line to `log`, then returns what is written to the FIFO `release`."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(release) as fifo:
        return fifo.read()


@server.tool()
def busy() -> str:
    """Fails with JSON-RPC error -32000, the first implementation-defined server error
    code (JSON-RPC 2.0 reserves -32000..-32099 for servers; many use -32000 as "server
    error")."""
    raise MCPError(-32000, "server busy, try later")


_listing_broken = False


@server.tool()
async def break_listing(ctx: Context) -> str:
    """The next tools/list fails (a server mid-reload), and the tool list is said to change."""
    global _listing_broken
    _listing_broken = True
    await base._tools_changed(ctx)
    return "broken"


async def _refuse_listing(ctx: Any, call_next: Any) -> Any:
    global _listing_broken
    if _listing_broken and ctx.method == "tools/list":
        _listing_broken = False  # one failed listing only
        raise MCPError(mcp_types.INTERNAL_ERROR, "reloading")
    return await call_next(ctx)


server.middleware.append(_refuse_listing)


def main() -> None:
    port_file = sys.argv[1]
    if "--legacy" in sys.argv:
        server.middleware.append(base._refuse_discover)
    app = server.streamable_http_app(json_response="--sse" not in sys.argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    Path(port_file + ".tmp").write_text(str(sock.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
