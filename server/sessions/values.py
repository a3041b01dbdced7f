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

from collections.abc import Iterable, Mapping

from server.sessions.errors import InvalidArgument

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
