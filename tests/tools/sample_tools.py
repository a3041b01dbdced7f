"""Tools load_tools finds by being attributes of this module (see test_loading)."""

from __future__ import annotations

from server.tools import tool

# Re-exported built-in: the same object as in BUILTIN_TOOLS, so loading both is no clash.
from server.tools.builtins import calculate as calculate

NOT_A_TOOL = "load_tools ignores attributes that are not Tools"


@tool
async def echo(text: str) -> str:
    """Returns the text unchanged."""
    return text


@tool(name="sample.add")
def add(a: int, b: int = 0) -> int:
    """Adds two integers."""
    return a + b
