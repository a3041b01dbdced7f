"""load_tools: the built-ins, the tools of named modules, and those of installed plugins."""

from __future__ import annotations

import importlib
import importlib.metadata
import types
from collections.abc import Iterable, Mapping, Sequence

from server.tools.builtins import BUILTIN_TOOLS
from server.tools.definition import Tool
from server.tools.registry import DEFAULT_MAX_RESULT_BYTES, ToolRegistry, unique_tools

ENTRY_POINT_GROUP = "chatd.tools"


class ToolLoadError(ValueError):
    """A tool module or entry point could not be loaded; the server must not start.

    A ValueError like every other tool definition problem, so one except clause covers all.
    """


def load_tools(
    modules: Sequence[str],
    *,
    entry_points: bool = True,
    builtins: bool = True,
    extra: Iterable[tuple[Tool, str]] = (),
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> ToolRegistry:
    """A registry of the built-ins, every Tool attribute of each module in `modules`, and what
    each "chatd.tools" entry point names (a module, a Tool, or an iterable of Tools), and the
    `extra` tools, each given with where it came from (an MCP server's, for instance).
    `max_result_bytes` caps what one call may return (see ToolRegistry).

    Decorating a function is all it takes for a module's tool to be found: there is no global
    registry to mutate. Raises ToolLoadError naming the module or entry point that failed, and
    ValueError when two different tools share a name.
    """
    if isinstance(modules, str):  # "a.b" would otherwise be loaded as modules "a", ".", "b"
        raise TypeError("modules must be a sequence of module names, not one string")
    found: list[tuple[Tool, str]] = []
    if builtins:
        found += [(t, "the built-in tools") for t in BUILTIN_TOOLS]
    for name in modules:
        found += [(t, f"module {name!r}") for t in module_tools(_import(name))]
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            origin = f"entry point {ep.name!r} ({ep.value})"
            found += [(t, origin) for t in _entry_point_tools(ep, origin)]
    found += list(extra)
    # unique_tools names both origins of a clash; the same object found twice counts once.
    return ToolRegistry(unique_tools(found), max_result_bytes=max_result_bytes)


def module_tools(module: types.ModuleType) -> list[Tool]:
    """The Tool objects among a module's attributes, in definition order."""
    return [value for value in vars(module).values() if isinstance(value, Tool)]


def _import(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as e:  # an error in a tool definition surfaces here too (ValueError)
        raise ToolLoadError(f"cannot load tool module {name!r}: {type(e).__name__}: {e}") from e


def _entry_point_tools(ep: importlib.metadata.EntryPoint, origin: str) -> list[Tool]:
    try:
        loaded = ep.load()
    except Exception as e:
        raise ToolLoadError(f"cannot load {origin}: {type(e).__name__}: {e}") from e
    if isinstance(loaded, types.ModuleType):
        return module_tools(loaded)
    if isinstance(loaded, Tool):
        return [loaded]
    if isinstance(loaded, Iterable) and not isinstance(loaded, str | bytes | Mapping):
        items = list(loaded)
        if all(isinstance(t, Tool) for t in items):
            return items
    raise ToolLoadError(
        f"{origin} names {type(loaded).__name__} {loaded!r:.80}; "
        "expected a module, a Tool or an iterable of Tools"
    )
