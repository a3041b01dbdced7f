"""Google-style docstring reading: the summary paragraph and the "Args:" descriptions."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

# "name: text", "name (int): text" or "name (int, optional): text".
_ENTRY = re.compile(
    r"^(?P<name>\*{0,2}[A-Za-z_][A-Za-z0-9_]*)\s*(?:\([^)]*\))?\s*:\s*(?P<text>.*)$"
)
_ARGS_HEADERS = frozenset({"args:", "arguments:"})


@dataclass(frozen=True, slots=True)
class Docstring:
    summary: str = ""
    args: dict[str, str] = field(default_factory=dict)


def parse_docstring(doc: str | None) -> Docstring:
    """The first paragraph (lines joined by spaces) and the per-argument descriptions."""
    if not doc:
        return Docstring()
    lines = inspect.cleandoc(doc).splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or line.strip().lower() in _ARGS_HEADERS:
            break
        summary_lines.append(line.strip())
    return Docstring(" ".join(summary_lines), _parse_args(lines))


def _parse_args(lines: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    start = next((i for i, line in enumerate(lines) if line.strip().lower() in _ARGS_HEADERS), None)
    if start is None:
        return args
    header_indent = _indent(lines[start])
    entry_indent: int | None = None
    current: str | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = _indent(line)
        # A line back at the header's indentation starts the next section ("Returns:").
        if indent <= header_indent:
            break
        if entry_indent is None:
            entry_indent = indent
        match = _ENTRY.match(line.strip())
        if indent == entry_indent and match:
            current = match["name"].lstrip("*")
            args[current] = match["text"].strip()
        elif current is not None:
            # Deeper indentation continues the previous argument's description.
            args[current] = f"{args[current]} {line.strip()}".strip()
    return args


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())
