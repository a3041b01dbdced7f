"""The ListSessions filter grammar: label equality terms joined by AND."""

from __future__ import annotations

import re

from server.sessions.errors import InvalidArgument
from server.sessions.validation import LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS

# A session holds at most MAX_LABELS labels, so a filter requiring more can match nothing;
# the cap also keeps every store's query (SQL variables, expression depth) small.
MAX_FILTER_TERMS = MAX_LABELS

GRAMMAR = 'labels.<key> = "<value>" [AND labels.<key> = "<value>" ...]'

_TERM = re.compile(r'\s*labels\.(?P<key>[A-Za-z0-9_.\-/]+)\s*=\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*')
_AND = re.compile(r"AND", re.IGNORECASE)


def parse_label_filter(text: str, field: str = "filter") -> dict[str, str]:
    """Parses `text` into required labels; empty text matches every session."""
    labels: dict[str, str] = {}
    if not text.strip():
        return labels
    pos = 0
    terms = 0
    while True:
        terms += 1
        if terms > MAX_FILTER_TERMS:
            raise InvalidArgument(
                field,
                f"more than {MAX_FILTER_TERMS} terms; at most {MAX_FILTER_TERMS} allowed",
                reason="FILTER_INVALID",
            )
        term = _TERM.match(text, pos)
        if term is None:
            raise InvalidArgument(
                field,
                f"cannot parse {text[pos : pos + 40]!r}: the accepted grammar is {GRAMMAR}",
                reason="FILTER_INVALID",
            )
        key, value = term["key"], re.sub(r"\\(.)", r"\1", term["value"])
        if LABEL_KEY.fullmatch(key) is None:
            raise InvalidArgument(
                field,
                f"{key[:64]!r} is not a label key (letters, digits, _ . - /, starting with a "
                "letter or digit, at most 63 characters)",
                reason="FILTER_INVALID",
            )
        if len(value) > MAX_LABEL_VALUE or "\x00" in value:
            raise InvalidArgument(
                field,
                f"the value of label {key!r} is longer than {MAX_LABEL_VALUE} "
                "or holds a NUL character: no label can equal it",
                reason="FILTER_INVALID",
            )
        if labels.get(key, value) != value:
            raise InvalidArgument(
                field, f"label {key!r} is required to equal two values", reason="FILTER_INVALID"
            )
        labels[key] = value
        pos = term.end()
        if pos == len(text):
            return labels
        conj = _AND.match(text, pos)
        if conj is None:
            raise InvalidArgument(
                field,
                f"expected AND at {text[pos : pos + 40]!r}: the grammar is {GRAMMAR}",
                reason="FILTER_INVALID",
            )
        pos = conj.end()
