"""Proto <-> domain conversion for JSON values: Struct and Value fields and their exact
JSON-text twins."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from server.sessions.errors import InvalidArgument
from server.sessions.values import json_text, parse_json_text

# Integers a double holds exactly.
_EXACT_INTS = 2**53


def struct_to_dict(value: struct_pb2.Struct, field: str) -> dict[str, Any]:
    converted: dict[str, Any] = json_value(value, field)
    return converted


def object_input(
    message: Any, struct_name: str, json_name: str, field: str
) -> dict[str, Any] | None:
    """A JSON object given as a Struct field or as its JSON-text twin (None if neither is
    set). Both may be set only as chatd writes them (a message read back and sent again):
    the Struct then equals the JSON text's, which is read; otherwise setting both is an
    error naming the text field. `field` is the message's path."""
    text = getattr(message, json_name)
    has_struct = message.HasField(struct_name)
    if text:
        value: dict[str, Any] = parse_json_text(text, f"{field}.{json_name}")
        if has_struct and not _same_struct(value, getattr(message, struct_name)):
            raise InvalidArgument(
                f"{field}.{json_name}",
                f"set either {struct_name} or {json_name}, not both (both are accepted "
                "only when they hold the same value, as chatd writes them)",
                reason="FIELDS_CONFLICT",
            )
        return value
    if has_struct:
        return struct_to_dict(getattr(message, struct_name), f"{field}.{struct_name}")
    return None


def _same_struct(value: dict[str, Any], given: struct_pb2.Struct) -> bool:
    written = struct_pb2.Struct()
    dict_to_struct(value, written)
    return written == given


def object_output(value: Any, message: Any, struct_name: str, json_name: str) -> None:
    """Writes a JSON object into both forms: the Struct and the exact JSON text."""
    dict_to_struct(value, getattr(message, struct_name))
    setattr(message, json_name, json_text(value))


class _Unreadable(Exception):
    """A Value inside a caller's Struct or Value that is not JSON; `path` locates it."""

    def __init__(self, problem: str, path: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path


def json_value(value: struct_pb2.Struct | struct_pb2.Value, field: str) -> Any:
    """A Struct or Value as plain JSON, refusing what JSON (and so Gemini and chatd's
    storage) cannot hold, naming the field: NaN or Infinity, and a Value with no kind set
    (what a client sends for a value it never filled in; an explicit null_value is JSON's
    null)."""
    try:
        if isinstance(value, struct_pb2.Struct):
            return _struct(value)
        return _value(value)
    except _Unreadable as bad:
        where = f" at {field}{bad.path}" if bad.path else ""
        raise InvalidArgument(field, f"{bad.problem}{where}", reason="JSON_INVALID") from None


def _struct(value: struct_pb2.Struct) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.fields.items():
        try:
            out[key] = _value(item)
        except _Unreadable as bad:
            bad.path = f".{key}{bad.path}"
            raise
    return out


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise _Unreadable("numbers must be finite (no NaN or Infinity)")
        if number.is_integer() and abs(number) <= _EXACT_INTS:
            # Struct numbers are doubles: an integral one is the integer the caller meant.
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        items = []
        for i, item in enumerate(value.list_value.values):
            try:
                items.append(_value(item))
            except _Unreadable as bad:
                bad.path = f"[{i}]{bad.path}"
                raise
        return items
    if kind == "null_value":
        return None
    raise _Unreadable(
        "a google.protobuf.Value has no kind set: set one of null_value, number_value, "
        "string_value, bool_value, struct_value or list_value"
    )


def dict_to_struct(value: Any, out: struct_pb2.Struct) -> None:
    out.Clear()
    out.update(value)
