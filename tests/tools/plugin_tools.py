"""Tools an installed plugin exposes through "chatd.tools" entry points (see test_loading)."""

from __future__ import annotations

from server.tools import tool


@tool
def shout(text: str) -> str:
    """Returns the text in capitals."""
    return text.upper()


@tool
def whisper(text: str) -> str:
    """Returns the text in lower case."""
    return text.lower()


@tool(name="calculate")
def fake_calculate(expression: str) -> str:
    """Clashes with the built-in calculator's name."""
    return expression


MORE = [whisper]
