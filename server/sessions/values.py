"""How deep a JSON value (function call arguments, tool results, schemas) may nest.

chatd returns every stored value inside protobuf messages, and a standard protobuf client
refuses to decode a message nested more than 100 levels deep (the pure-Python and upb
decoders both stop there). A JSON object costs three of those levels (Struct, its map
entry, Value), an array two (ListValue, Value), and the deepest response wraps a value in
five more (StreamReplyResponse > Reply > Message > Part > FunctionCall > Struct). Measured
with protobuf 7.36: objects nested 33 deep no longer decode in any response, 32 do, with
no room left. chatd allows 24 levels, leaving 24 decoder levels for wrappers future
responses may add, and refuses deeper values wherever they enter: from callers and from
the model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

from server.sessions.errors import InvalidArgument
from server.sessions.model import JSON

MAX_JSON_DEPTH = 24
DEPTH_RULE = (
    f"at most {MAX_JSON_DEPTH} levels of nested objects and arrays are allowed, "
    "so that every response stays decodable by standard protobuf clients"
)


def json_depth(value: object, stop: int = MAX_JSON_DEPTH + 1) -> int:
    """Levels of nested objects and arrays in `value` (a scalar is 0, `{}` and `[]` are 1),
    counted without recursion and no further than `stop`."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, level = pending.pop()
        children: Iterable[object]
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        level += 1
        if level > deepest:
            deepest = level
            if deepest >= stop:
                return deepest
        pending.extend((child, level) for child in children)
    return deepest


def too_deep(value: object, outer: int = 0) -> bool:
    """Whether `value`, stored `outer` levels inside another object, nests past the limit."""
    return json_depth(value, MAX_JSON_DEPTH + 1 - outer) + outer > MAX_JSON_DEPTH


def check_json_depth(value: object, field: str, outer: int = 0) -> None:
    """Refuses `value` (stored `outer` levels down) if it nests past MAX_JSON_DEPTH."""
    if too_deep(value, outer):
        inside = f" (counting the {outer} level(s) chatd stores it inside)" if outer else ""
        raise InvalidArgument(
            field, f"nests too deeply: {DEPTH_RULE}{inside}", reason="JSON_TOO_DEEP"
        )


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON: numbers must be finite")


# Larger integers cannot even be approximated by the double a protobuf Struct holds.
_MAX_INT_DIGITS = 308


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is out of any number's range")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of a double's range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_int=_int, parse_float=_float)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_json_text(text: str, field: str, *, want_object: bool = True) -> JSON:
    """A caller's JSON text as a JSON value, exactly (integers stay integers), refusing what
    is not JSON (NaN, Infinity, trailing text), a non-object where one is wanted and
    values nested past MAX_JSON_DEPTH, naming the field."""
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise InvalidArgument(
            field, f"nests too deeply: {DEPTH_RULE}", reason="JSON_TOO_DEEP"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(
            field, f"is not valid JSON text: {exc}", reason="JSON_INVALID"
        ) from None
    if want_object and not isinstance(value, dict):
        raise InvalidArgument(field, "must be a JSON object", reason="JSON_INVALID")
    check_json_depth(value, field)
    if "\\u" in text:
        try:
            json_text(value).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(
                field,
                "holds a lone UTF-16 surrogate escape, which is not a character",
                reason="JSON_INVALID",
            ) from None
    return value


def json_text(value: JSON) -> str:
    """A JSON value as compact JSON text, exactly (integers of any size stay integers)."""
    return _ENCODER.encode(_plain(value))


def _plain(value: JSON) -> JSON:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
