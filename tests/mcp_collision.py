"""A Python tool whose name is also a tool of the "local" MCP server in tests/test_mcp_tools.py."""

from server.tools import tool


@tool(name="local__add")
def local_add(a: int, b: int) -> int:
    """Adds two integers, in Python."""
    return a + b
