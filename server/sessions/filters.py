"""The ListSessions filter grammar: label equality terms joined by AND."""

from __future__ import annotations

import re

from server.sessions.errors import InvalidArgument

GRAMMAR = 'labels.<key> = "<value>" [AND labels.<key> = "<value>" ...]'

_TERM = re.compile(r'\s*labels\.(?P<key>[A-Za-z0-9_.\-/]+)\s*=\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*')
_AND = re.compile(r"AND", re.IGNORECASE)


def parse_label_filter(text: str, field: str = "filter") -> dict[str, str]:
    """Parses `text` into required labels; empty text matches every session."""
    labels: dict[str, str] = {}
    if not text.strip():
        return labels
    pos = 0
    while True:
        term = _TERM.match(text, pos)
        if term is None:
            raise InvalidArgument(
                field, f"cannot parse {text[pos : pos + 40]!r}: the accepted grammar is {GRAMMAR}"
            )
        key, value = term["key"], re.sub(r"\\(.)", r"\1", term["value"])
        if labels.get(key, value) != value:
            raise InvalidArgument(field, f"label {key!r} is required to equal two values")
        labels[key] = value
        pos = term.end()
        if pos == len(text):
            return labels
        conj = _AND.match(text, pos)
        if conj is None:
            raise InvalidArgument(
                field, f"expected AND at {text[pos : pos + 40]!r}: the grammar is {GRAMMAR}"
            )
        pos = conj.end()
