"""JSON value helpers: type names as JSON Schema spells them, equality, and result checking."""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

from server.sessions.values import DEPTH_RULE, MAX_JSON_DEPTH


def json_type_name(value: object) -> str:
    """The JSON Schema type of `value` ("number" for a float), or its Python type's name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def json_equal(a: object, b: object) -> bool:
    """Equality as JSON Schema's enum/const mean it: 1 == 1.0, but True != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def show(value: object, limit: int = 60) -> str:
    """A short JSON rendering of `value` for error messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_LARGEST_DOUBLE = sys.float_info.max


class NotJSONError(TypeError):
    pass


def to_json_value(value: object, path: str = "result", enclosing: int = 1) -> Any:
    """`value` as plain JSON data (tuples become lists); raises NotJSONError naming the path.

    The result goes into a protobuf Struct and the model's JSON request, so it must be exactly
    JSON: str keys, finite numbers, no sets, bytes or objects, and nested no deeper than
    chatd's limit, counting the `enclosing` objects it is stored in ({"result": value}).
    """
    if isinstance(value, enum.Enum):
        # A tool returning an Enum member means its value (as its parameters do).
        return to_json_value(value.value, path, enclosing)
    if isinstance(value, list | tuple | Mapping) and enclosing >= MAX_JSON_DEPTH:
        raise NotJSONError(f"{path}: nests too deeply: {DEPTH_RULE}")
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        # Struct numbers are doubles: converting a larger int would crash the rpc layer.
        if abs(value) > _LARGEST_DOUBLE:
            raise NotJSONError(f"{path}: integer with {len(str(value))} digits is too large")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSONError(f"{path}: {value} is not a JSON number")
        return value
    if isinstance(value, list | tuple):
        return [to_json_value(v, f"{path}[{i}]", enclosing + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSONError(f"{path}: key {key!r} is not a string")
            out[key] = to_json_value(item, f"{path}.{key}", enclosing + 1)
        return out
    raise NotJSONError(f"{path}: {type(value).__name__} is not JSON-able")
