"""ToolRegistry: the server's tools by name, run with validation, timeouts and no surprises."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import structlog

from server.sessions.model import Blob, FileData, FunctionDeclaration, FunctionResponsePart
from server.sessions.ports import ToolOutcome
from server.tools.definition import Tool, ToolError, ToolResult
from server.tools.jsonvalues import NotJSONError, to_json_value
from server.tools.schema import ArgumentError

# A tool's error message goes back into the model's context: keep it to a readable size.
_MAX_ERROR_CHARS = 1000
# What one call may return, its JSON and media together: as much as one request to chatd
# may carry (CHATD_MAX_MESSAGE_BYTES' default). The result is stored in the history and sent
# with every later turn, and a tool (an MCP server's above all) is not trusted to be small.
DEFAULT_MAX_RESULT_BYTES = 8 * 1024 * 1024


def unique_tools(tools: Iterable[tuple[Tool, str]]) -> list[Tool]:
    """The tools with repeats of the same object dropped; raises ValueError when two different
    tools share a name, naming where each came from."""
    seen: dict[str, tuple[Tool, str]] = {}
    for t, origin in tools:
        first = seen.setdefault(t.name, (t, origin))
        if first[0] is not t:
            raise ValueError(f"duplicate tool name {t.name!r}: defined by {first[1]} and {origin}")
    return [t for t, _ in seen.values()]


class ToolRegistry:
    """The server-registered tools; implements the domain's ToolRunner port. A call whose
    result (its JSON text plus its media's bytes) exceeds `max_result_bytes` is an error
    outcome the model sees, naming the size and the limit.

    Each tool is served for an origin (its `source`); `replace` swaps one origin's tools
    while chatd runs (an MCP server whose tool list changed). A call looks its tool up when
    it starts, so one in progress finishes on the tool it began with."""

    def __init__(
        self, tools: Iterable[Tool], *, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    ) -> None:
        self._max_result_bytes = max_result_bytes
        unique = unique_tools((t, t.source) for t in tools)
        self._commit({t.name: t for t in unique}, {t.name: t.source for t in unique})

    def _commit(self, tools: dict[str, Tool], origins: dict[str, str]) -> None:
        # New objects each time, never mutated: a reader mid-iteration keeps a whole set.
        self._tools: dict[str, Tool] = {n: tools[n] for n in sorted(tools)}
        self._origins: dict[str, str] = origins
        self._declarations = tuple(t.declaration for t in self._tools.values())

    def served_by(self, origin: str) -> frozenset[str]:
        """The names of the tools served for `origin` now."""
        return frozenset(n for n, o in self._origins.items() if o == origin)

    def replace(self, origin: str, tools: Iterable[Tool]) -> list[tuple[Tool, str]]:
        """Serves `tools` for `origin` in place of what it served so far (none, at first).

        A tool whose name another origin serves is not served: the name stays with that
        origin. Returns each such tool with the origin that keeps its name (empty when all
        are served). Never raises for a clash, unlike the constructor.
        """
        kept = {n: t for n, t in self._tools.items() if self._origins[n] != origin}
        origins = {n: o for n, o in self._origins.items() if o != origin}
        skipped: list[tuple[Tool, str]] = []
        for t in tools:
            holder = origins.get(t.name)
            if holder is not None:
                skipped.append((t, holder))
                continue
            kept[t.name] = t
            origins[t.name] = origin
        self._commit(kept, origins)
        return skipped

    def declarations(self) -> Sequence[FunctionDeclaration]:
        """Every registered tool, sorted by name."""
        return self._declarations

    def names(self) -> frozenset[str]:
        return frozenset(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    async def run(self, name: str, args: Mapping[str, object]) -> ToolOutcome:
        """Runs one call. A tool's own failure (unknown name, bad arguments, an exception, a
        timeout, a result that is not JSON) becomes an error outcome; cancellation propagates."""
        t = self._tools.get(name)
        if t is None:
            known = ", ".join(self._tools) or "none"
            return _error(f"unknown tool {name!r}; known tools: {known}")
        try:
            kwargs = t.arguments(args)
        except ArgumentError as e:
            return _error(f"invalid arguments for tool {name!r}: {e}")
        deadline = asyncio.timeout(t.timeout)
        try:
            async with deadline:
                value = await _call(t, kwargs)
        except ToolError as e:
            _log().info("tool_refused", tool=name, error=str(e))
            return _error(str(e) or type(e).__name__)
        except Exception as e:
            # A TimeoutError the tool raised itself is an ordinary failure, not our deadline.
            if isinstance(e, TimeoutError) and deadline.expired():
                # A sync tool's thread cannot be stopped; it finishes in the background.
                _log().warning("tool_timed_out", tool=name, timeout=t.timeout)
                return _error(f"tool {name!r} timed out after {t.timeout:g}s")
            _log().warning("tool_failed", tool=name, error=_describe(e), exc_info=True)
            return _error(_describe(e))
        parts: tuple[FunctionResponsePart, ...] = ()
        if isinstance(value, ToolResult):
            parts, problem = _media(value.parts)
            if problem:
                _log().warning("tool_result_bad_media", tool=name, error=problem)
                return _error(f"tool {name!r} returned media chatd cannot send: {problem}")
            value = value.value
        try:
            result = to_json_value(value)
        except NotJSONError as e:
            _log().warning("tool_result_not_json", tool=name, error=str(e))
            return _error(f"tool {name!r} returned a value that is not JSON: {e}")
        size = _json_size(result) + sum(len(p.inline_data.data) for p in parts if p.inline_data)
        if size > self._max_result_bytes:
            _log().warning(
                "tool_result_too_large", tool=name, bytes=size, limit=self._max_result_bytes
            )
            return _error(
                f"tool {name!r} returned {size} bytes, more than the {self._max_result_bytes}"
                " a result may hold"
            )
        return ToolOutcome({"result": result}, is_error=False, parts=parts)


async def _call(t: Tool, kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(t.function):
        return await t.function(**kwargs)
    # Plain functions may block (files, sockets, CPU): never on the event loop.
    value = await asyncio.to_thread(t.function, **kwargs)
    if inspect.isawaitable(value):  # a plain callable that returned a coroutine
        value = await value
    return value


def _media(given: Sequence[object]) -> tuple[tuple[FunctionResponsePart, ...], str]:
    """A tool's media as function response parts, or what is wrong with them."""
    parts = []
    for i, item in enumerate(given):
        if isinstance(item, Blob):
            if not item.mime_type or not item.data:
                return (), f"parts[{i}] needs a mime_type and data"
            parts.append(FunctionResponsePart(inline_data=item))
        elif isinstance(item, FileData):
            if not item.file_uri:
                return (), f"parts[{i}] needs a file_uri"
            parts.append(FunctionResponsePart(file_data=item))
        else:
            return (), f"parts[{i}] is a {type(item).__name__}, not a Blob or FileData"
    return tuple(parts), ""


def _json_size(value: object) -> int:
    """Bytes of `value` as compact JSON text (UTF-8)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _error(message: str) -> ToolOutcome:
    if len(message) > _MAX_ERROR_CHARS:
        message = message[: _MAX_ERROR_CHARS - 1] + "…"
    return ToolOutcome({"error": message}, is_error=True)


def _log() -> Any:
    # Looked up per use rather than cached at import, so logging configuration done later
    # (and structlog.testing.capture_logs) applies; it is only used off the hot path.
    return structlog.get_logger("chatd.tools")
