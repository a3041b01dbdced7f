"""Python tools whose names MCP servers' tools take too in tests/test_mcp_tools.py:
"local__add" is a tool of the "local" server at start-up, "web__late" one the "web" server
adds while chatd runs."""

from server.tools import tool


@tool(name="local__add")
def local_add(a: int, b: int) -> int:
    """Adds two integers, in Python."""
    return a + b


@tool(name="web__late")
def web_late() -> str:
    """Answers late, in Python."""
    return "late, in Python"
