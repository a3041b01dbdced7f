"""Hypothesis strategies for single field values: strings biased by field name towards what
the server knows (session ids, page tokens, field-mask paths, filters), extreme integers,
unknown enum numbers, non-finite floats, JSON values and huge or NUL-laden text."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import descriptor as d
from hypothesis import strategies as st

Strategy = st.SearchStrategy
FD = d.FieldDescriptor


@dataclass(frozen=True)
class Pools:
    """Values that exist on the server, so fuzzed requests reach past lookups."""

    session_ids: Sequence[str]
    message_ids: Sequence[str]
    page_tokens: Sequence[str]
    documents: Sequence[bytes] = ()  # serialized ExportSession documents
    pending_call_ids: Sequence[str] = ()  # calls a paused session waits for


def weighted(*choices: tuple[int, Strategy[Any]]) -> Strategy[Any]:
    """One of `choices`, picked with the given weights."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def huge_text() -> Strategy[str]:
    return st.builds(
        lambda piece, n: piece * n,
        st.sampled_from(["x", "\x00", "é", "😀", "ab "]),
        st.integers(10_000, 120_000),
    )


def any_text() -> Strategy[str]:
    """Short, unicode, NUL-laden, whitespace or huge strings."""
    return weighted(
        (6, st.text(max_size=24)),
        (3, st.text(st.characters(codec="utf-8"), max_size=200)),
        (2, st.sampled_from(["", " ", "\x00", "a\x00b", "\u202e", "\ufeff", "🧨" * 3, "\n" * 5])),
        (1, huge_text()),
    )


TOOL_NAMES = ("get_current_time", "calculate", "date_diff", "lookup_order", "no_such_tool")
CALL_LINES = (
    '/call get_current_time {"timezone": "Asia/Tokyo"}',
    '/call get_current_time {"timezone": "Not/AZone"}',
    '/call calculate {"expression": "1/0"}',
    '/call calculate {"expression": "9**9**9**9"}',
    '/call date_diff {"start": "2020-01-01", "end": "x"}',
    '/call lookup_order {"order": 7}',
    "/call no_such_tool {}",
    "/call calculate [1, 2]",
    "/call calculate {not json",
    # Past chatd's JSON nesting limit (the call is dropped, MALFORMED_FUNCTION_CALL), at
    # the limit, and far past what Python's JSON parser can take.
    "/call lookup_order " + '{"a":' * 30 + "1" + "}" * 30,
    "/call lookup_order " + '{"a":' * 23 + "[]" + "}" * 23,
    "/call lookup_order " + "[" * 5000 + "]" * 5000,
    '/call lookup_order {"a": NaN, "b": 1e400}',
)


def message_text() -> Strategy[str]:
    """What a user types: text, echo `/call` lines (tool loops) or junk."""
    return weighted(
        (4, any_text()),
        (2, st.lists(st.sampled_from(CALL_LINES), min_size=1, max_size=3).map("\n".join)),
        (1, st.just("hello")),
    )


def crafted_tokens(real: Sequence[str]) -> Strategy[str]:
    """Page tokens: real ones, real ones with their position replaced by junk, tampered and
    random base64 JSON."""
    position = st.lists(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=8),
            st.booleans(),
            st.none(),
        ),
        max_size=3,
    )

    def encode(payload: Any) -> str:
        raw = json.dumps(payload, allow_nan=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def repositioned(token: str, where: Any) -> str:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except ValueError:
            return token
        return encode({**data, "p": where}) if isinstance(data, dict) else token

    def raw(payload: str) -> str:
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    hostile = st.sampled_from(
        ["1e300", "NaN", "-Infinity", str(10**30), "-1", "true", '"' + "x" * 300 + '"']
    )
    deep = st.integers(50, 5000).map(lambda n: "[" * n + "]" * n)
    choices: list[tuple[int, Strategy[Any]]] = [
        (2, st.builds(encode, st.fixed_dictionaries({"q": st.text(max_size=12), "p": position}))),
        (1, st.builds(lambda n: raw('{"q":"x","p":' + n + "}"), deep)),
        (1, deep.map(raw)),
        (1, st.builds(encode, st.one_of(st.integers(), st.text(), st.lists(st.integers())))),
        (1, any_text()),
    ]
    if real:
        tokens = st.sampled_from(list(real))
        choices += [
            (2, tokens),
            (3, st.builds(repositioned, tokens, position)),
            (2, st.builds(repositioned, tokens, st.lists(hostile, min_size=1, max_size=2))),
            (1, st.builds(lambda t, d: with_raw_position(t, d), tokens, deep)),
            (1, st.builds(lambda t, n: t[:n], tokens, st.integers(0, 40))),
        ]
    return weighted(*choices)


def with_raw_position(token: str, position: str) -> str:
    """`token` with its position replaced by raw JSON text (which json.dumps cannot make:
    NaN literals, nesting too deep to build as Python lists)."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        return token
    if not isinstance(data, dict):
        return token
    payload = '{"q":' + json.dumps(data.get("q")) + ',"p":' + position + "}"
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _terms(n: int) -> str:
    return " AND ".join(f'labels.k{i} = "v{i}"' for i in range(n))


FILTERS = (
    _terms(64),  # the most terms allowed
    _terms(65),
    _terms(1001),  # past SQLite's variable and expression-depth limits if not capped
    "labels." + "k" * 64 + ' = "x"',
    'labels.k = "' + "v" * 300 + '"',
    'labels.k = "a\x00b"',
    'labels.env = "prod"',
    'labels.env = "prod" AND labels.team = "search"',
    "labels.env = prod",
    'labels.env != "x"',
    'labels. = "x"',
    'labels.env = "unterminated',
    "AND AND",
    'labels.env = "a" OR labels.env = "b"',
    "NOT labels.env",
    "(",
    '"',
)


def field_text(field: d.FieldDescriptor, pools: Pools) -> Strategy[str]:
    """String values for `field`, biased by its name towards values the server knows."""
    name = field.name
    ids = st.sampled_from(list(pools.session_ids)) if pools.session_ids else any_text()
    match name:
        case "session_id" | "new_session_id":
            return weighted(
                (6, ids), (1, st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True)), (2, any_text())
            )
        case "message_id" | "first_message_id":
            known = list(pools.message_ids) or ["m-1"]
            return weighted((3, st.sampled_from(known)), (1, any_text()))
        case "page_token":
            return crafted_tokens(pools.page_tokens)
        case "request_id":
            return weighted((2, st.sampled_from(["", "r1", "r2", "same"])), (1, any_text()))
        case "text":
            return message_text()
        case "model":
            return weighted(
                (3, st.sampled_from(["", "echo", "gemini-2.5-flash", "models/x"])), (1, any_text())
            )
        case "filter":
            return weighted((3, st.sampled_from(FILTERS)), (1, any_text()))
        case "order_by":
            orders = ["create_time", "update_time desc", "update_time DESC", "create_time asc", "x"]
            return weighted((3, st.sampled_from(orders)), (1, any_text()))
        case "name":
            return weighted((3, st.sampled_from(TOOL_NAMES)), (1, any_text()))
        case "tools" | "call_id" | "id":
            known = [*TOOL_NAMES, "call-1-0", "call-2-0", "call-3-1"]
            return weighted((3, st.sampled_from(known)), (1, any_text()))
        case "etag":
            return weighted(
                (2, st.from_regex(r'W/"-?[0-9]{1,25}"', fullmatch=True)), (1, any_text())
            )
        case "mime_type" | "response_mime_type":
            mimes = ["text/plain", "application/json", "image/png", "text/x.enum", ""]
            return weighted((3, st.sampled_from(mimes)), (1, any_text()))
        case "service":
            return weighted(
                (3, st.sampled_from(["", "chatd.v1.ChatService", "nope"])), (1, any_text())
            )
        case "paths":
            paths = [
                "*",
                "model",
                "labels",
                "generation_config.temperature",
                "generation_config.thinking.thinking_budget",
                "ttl",
                "expire_time",
                "session_id",
                "message_count",
                "labels.env",
                "generation_config.nope",
                "",
                ".",
            ]
            return weighted((4, st.sampled_from(paths)), (1, any_text()))
    return any_text()


INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def integers(low: int, high: int) -> Strategy[int]:
    edges = sorted(
        {v for v in (low, high, 0, 1, -1, 2, 63, 64, 65, 999, 1000, 1001) if low <= v <= high}
    )
    return weighted(
        (3, st.integers(low, high)),
        (2, st.sampled_from(edges)),
        (2, st.integers(max(low, -3), min(high, 100))),
    )


def scalar(field: d.FieldDescriptor, pools: Pools) -> Strategy[Any]:
    kind = field.type
    if kind == FD.TYPE_STRING:
        return field_text(field, pools)
    if kind == FD.TYPE_BYTES:
        return weighted(
            (4, st.binary(max_size=64)), (1, st.builds(bytes, st.integers(10_000, 200_000)))
        )
    if kind == FD.TYPE_BOOL:
        return st.booleans()
    if kind in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        width: Literal[32, 64] = 32 if kind == FD.TYPE_FLOAT else 64
        return st.floats(width=width, allow_nan=True, allow_infinity=True)
    if kind == FD.TYPE_ENUM:
        assert field.enum_type is not None, field.full_name
        numbers = [v.number for v in field.enum_type.values]
        return weighted((3, st.sampled_from(numbers)), (1, integers(-(2**31), 2**31 - 1)))
    return integers(*INT_RANGES[kind])


def deep_json(max_depth: int = 32) -> Strategy[Any]:
    """JSON values nested close to, at and past chatd's limit of 24 levels (objects cost
    protobuf three decoder levels each, arrays two)."""

    def build(depth: int, kinds: list[bool], leaf: Any) -> Any:
        value = leaf
        for i in range(depth):
            value = {"k": value} if kinds[i % len(kinds)] else [value]
        return value

    return st.builds(
        build,
        st.integers(20, max_depth),
        st.lists(st.booleans(), min_size=1, max_size=4),
        st.sampled_from([None, 1.0, "x", True]),
    )


def json_values() -> Strategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**53), 2**53).map(float),
        st.text(max_size=12),
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
