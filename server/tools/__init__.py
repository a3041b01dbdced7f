"""Server tools: the @tool decorator, the registry that runs them, and the built-ins."""

from server.tools.builtins import BUILTIN_TOOLS
from server.tools.definition import DEFAULT_TIMEOUT, Tool, ToolError, ToolResult, tool
from server.tools.loading import ENTRY_POINT_GROUP, ToolLoadError, load_tools
from server.tools.registry import ToolRegistry
from server.tools.schema import ArgumentError

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_TIMEOUT",
    "ENTRY_POINT_GROUP",
    "ArgumentError",
    "Tool",
    "ToolError",
    "ToolLoadError",
    "ToolRegistry",
    "ToolResult",
    "load_tools",
    "tool",
]
