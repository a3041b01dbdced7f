"""A small JSON Schema checker and validator for tool parameters: the subset tools use.

Why hand-written, rather than the `jsonschema` package (installed, for mcp) or pydantic's
validation: schemas come without a Python type (hand-written ones, an MCP server's), so
pydantic cannot check them, and jsonschema knows no "nullable" (OpenAPI's, which Gemini's
schemas use) and converts nothing, while arguments arrive through a protobuf Struct, whose
numbers are all doubles, so an integer comes as 3.0 and must reach the function as 3. The
validator converts as it checks, and names every problem by the argument's path in words
the model can act on ("args.count: 0 is less than the minimum 1"), all problems at once.
Keeping to a small subset is itself the point: check_schema refuses, when a tool is
defined, every keyword validate does not enforce, so no schema promises the model a check
that is skipped.

gemini_subset brings a generated schema (pydantic's, for a Python tool's parameters) into
that subset: it inlines $defs, drops titles and writes `X | None` as a type list.
"""

# Objects that declare `properties` are closed unless `additionalProperties` says otherwise:
# a model that invents an argument ("tz" for "timezone") is told so instead of having the
# argument silently dropped. Objects without `properties` (a `dict` parameter) stay open.
# An integer may arrive as 3.0 (protobuf Struct numbers are doubles), so integral floats
# pass as integers and are converted to int.

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.tools.jsonvalues import NotJSONError, json_equal, json_type_name, show, to_json_value

JSON_TYPES = frozenset({"string", "integer", "number", "boolean", "array", "object", "null"})
# Keywords the validator enforces; anything else a schema uses must be a pure annotation.
_ENFORCED = frozenset(
    {
        "type",
        "nullable",
        "enum",
        "const",
        "required",
        "properties",
        "additionalProperties",
        "items",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
    }
)
_ANNOTATIONS = frozenset(
    {"description", "title", "default", "examples", "format", "propertyOrdering", "$comment"}
)
_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")


# What gemini_subset keeps beside the enforced keywords: descriptions for the model. A
# generated "format" is not kept: it stands for a conversion (date, bytes) nothing checks.
_KEPT_ANNOTATIONS = frozenset({"description", "default", "examples"})
# Constraints pydantic's adapter enforces when a Python tool is called (signature.py converts
# every argument through it) but chatd's validator does not: gemini_subset leaves them out of
# the declared schema rather than refusing the tool, and a breaking argument is still refused.
_ADAPTER_ENFORCED = frozenset({"pattern", "multipleOf"})
_DEFS_PREFIX = "#/$defs/"
_NULL = {"type": "null"}


class UnsupportedSchema(ValueError):
    """A generated schema needs what chatd does not check; `keyword` names the keyword."""

    def __init__(self, message: str, keyword: str) -> None:
        super().__init__(message)
        self.keyword = keyword


class ArgumentError(ValueError):
    """Arguments that break the schema; `problems` each start with the argument's path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def check_schema(schema: object, path: str = "parameters") -> None:
    """Raises ValueError unless `schema` uses only keywords this module enforces, well-formed.

    Refusing keywords such as anyOf or pattern at definition time means a hand-written schema
    never promises the model a check that is silently skipped.
    """
    if not isinstance(schema, Mapping):
        raise ValueError(f"{path}: a schema must be an object, not {json_type_name(schema)}")
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key in _ANNOTATIONS:
            continue
        if key not in _ENFORCED:
            raise ValueError(f"{where}: unsupported schema keyword {key!r}")
        if key == "type":
            names = [value] if isinstance(value, str) else value
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) and n in JSON_TYPES for n in names)
            ):
                raise ValueError(f"{where}: must be one of {sorted(JSON_TYPES)} or a list of them")
        elif key == "enum" and (not isinstance(value, list) or not value):
            raise ValueError(f"{where}: must be a non-empty array")
        elif key == "nullable" and not isinstance(value, bool):
            raise ValueError(f"{where}: must be a boolean")
        elif key == "required":
            if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                raise ValueError(f"{where}: must be an array of strings")
            properties = schema.get("properties")
            missing = sorted(set(value) - set(properties or ()))
            if isinstance(properties, Mapping) and missing:
                raise ValueError(f"{where}: names {missing} are not in properties")
        elif key == "properties":
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}: must be an object")
            for name, sub in value.items():
                check_schema(sub, f"{where}.{name}")
        elif (key == "additionalProperties" and not isinstance(value, bool)) or key == "items":
            check_schema(value, where)
        elif key in _NUMBER_BOUNDS and not _is_number(value):
            raise ValueError(f"{where}: must be a number")
        elif key in _COUNTS and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise ValueError(f"{where}: must be a non-negative integer")


def gemini_subset(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A generated JSON schema (pydantic's TypeAdapter.json_schema(), for one) in the subset
    check_schema accepts and Gemini's parametersJsonSchema reads, "type" first.

    `$ref`s to "#/$defs/..." are replaced by the definitions they name; "title" is dropped;
    `anyOf: [S, {"type": "null"}]` becomes S with "null" added to its type; "const" becomes a
    one-value "enum"; what only says "anything" (`items: {}`, `additionalProperties: true`
    on an object without properties) is dropped; a "default" with no JSON form is dropped;
    "pattern" and "multipleOf" are dropped (the adapter that converts the arguments
    enforces them). Raises UnsupportedSchema for any other keyword outside the
    enforced subset (including "format"), any other anyOf, or a recursive reference.
    """
    return _subset(schema, schema.get("$defs", {}), ())


def _subset(schema: object, defs: Mapping[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(schema, Mapping):
        raise UnsupportedSchema(f"a schema must be an object, not {json_type_name(schema)}", "")
    rest = dict(schema)
    ref = rest.pop("$ref", None)
    if ref is not None:
        name = ref.removeprefix(_DEFS_PREFIX) if isinstance(ref, str) else ""
        if not isinstance(ref, str) or not ref.startswith(_DEFS_PREFIX) or name not in defs:
            raise UnsupportedSchema(f"$ref {ref!r} names no $defs entry", "$ref")
        if name in seen:
            raise UnsupportedSchema(f"{name} contains itself: recursive schemas", "$ref")
        # Keywords beside a $ref (a description) apply on top of the definition.
        return _subset({**defs[name], **rest}, defs, (*seen, name))
    any_of = rest.pop("anyOf", None)
    if any_of is not None:
        others = [s for s in any_of if s != _NULL] if isinstance(any_of, list) else []
        if len(others) != 1 or len(any_of) != 2:
            raise UnsupportedSchema("only X | None unions are supported", "anyOf")
        return _or_null({**_subset(others[0], defs, seen), **_subset(rest, defs, seen)})
    out: dict[str, Any] = {}
    for key, value in rest.items():
        if key in ("title", "$defs") or key in _ADAPTER_ENFORCED:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "items":
            if value != {}:
                out[key] = _subset(value, defs, seen)
        elif key == "properties" and isinstance(value, Mapping):
            out[key] = {name: _subset(sub, defs, seen) for name, sub in value.items()}
        elif key == "additionalProperties":
            if value in (True, {}) and "properties" not in rest:
                continue
            out[key] = value if isinstance(value, bool) else _subset(value, defs, seen)
        elif key == "default":
            try:
                out[key] = to_json_value(value, "default")
            except NotJSONError:
                continue
        elif key in _ENFORCED or key in _KEPT_ANNOTATIONS:
            out[key] = value
        else:
            raise UnsupportedSchema(
                f"its JSON schema uses {key!r}, which chatd does not check", key
            )
    if "type" in out:
        out = {"type": out.pop("type"), **out}
    return out


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` that also admits null, in JSON Schema's own terms (a "type" list, null in
    an "enum") rather than OpenAPI's "nullable"."""
    kind = schema.get("type")
    if kind is None:
        return schema  # no type: anything, null included
    kinds = [kind] if isinstance(kind, str) else list(kind)
    out = {**schema, "type": [*kinds, "null"] if "null" not in kinds else kinds}
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    return out


def validate(schema: Mapping[str, Any], value: object, path: str = "args") -> Any:
    """`value` checked against `schema` and converted (integral floats to int, tuples to
    lists); raises ArgumentError listing every problem, each naming its path."""
    problems: list[str] = []
    converted = _validate(schema, value, path, problems)
    if problems:
        raise ArgumentError(problems)
    return converted


def _validate(schema: Mapping[str, Any], value: Any, path: str, problems: list[str]) -> Any:
    if "type" in schema:
        allowed = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        if schema.get("nullable") is True:
            allowed.append("null")
        for name in allowed:
            matched, as_type = _as_type(name, value)
            if matched:
                value = as_type
                break
        else:
            problems.append(f"{path}: expected {' or '.join(allowed)}, got {json_type_name(value)}")
            return value
    if "enum" in schema and not any(json_equal(value, e) for e in schema["enum"]):
        choices = ", ".join(show(e) for e in schema["enum"])
        problems.append(f"{path}: {show(value)} is not one of {choices}")
    if "const" in schema and not json_equal(value, schema["const"]):
        problems.append(f"{path}: must be {show(schema['const'])}")
    if isinstance(value, str):
        _check_count(schema, len(value), "Length", "characters", path, problems)
    elif _is_number(value):
        _check_bounds(schema, value, path, problems)
    elif isinstance(value, list | tuple):
        _check_count(schema, len(value), "Items", "items", path, problems)
        items = schema.get("items")
        if isinstance(items, Mapping):
            value = [_validate(items, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        else:
            value = list(value)
    elif isinstance(value, Mapping):
        value = _validate_object(schema, value, path, problems)
    return value


def _validate_object(
    schema: Mapping[str, Any], value: Mapping[Any, Any], path: str, problems: list[str]
) -> dict[str, Any]:
    properties: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", "properties" not in schema)
    out: dict[str, Any] = {}
    for name in schema.get("required", ()):
        if name not in value:
            problems.append(f"{_child(path, name)}: missing (required)")
    for key, item in value.items():
        where = _child(path, str(key))
        if key in properties:
            out[key] = _validate(properties[key], item, where, problems)
        elif extra is False:
            known = ", ".join(sorted(properties)) or "none"
            noun = "argument" if path == "args" else "property"
            problems.append(f"{where}: unknown {noun} (known: {known})")
        elif isinstance(extra, Mapping):
            out[key] = _validate(extra, item, where, problems)
        else:
            out[key] = item
    return out


def _as_type(name: str, value: Any) -> tuple[bool, Any]:
    match name:
        case "string":
            return isinstance(value, str), value
        case "integer":
            if isinstance(value, float) and value.is_integer():
                return True, int(value)
            return isinstance(value, int) and not isinstance(value, bool), value
        case "number":
            return _is_number(value), value
        case "boolean":
            return isinstance(value, bool), value
        case "array":
            return isinstance(value, list | tuple), value
        case "object":
            return isinstance(value, Mapping), value
        case _:  # "null"
            return value is None, value


def _check_bounds(schema: Mapping[str, Any], value: float, path: str, problems: list[str]) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{path}: {show(value)} is less than the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{path}: {show(value)} is greater than the maximum {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        problems.append(f"{path}: {show(value)} must be greater than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        problems.append(f"{path}: {show(value)} must be less than {schema['exclusiveMaximum']}")


def _check_count(
    schema: Mapping[str, Any], count: int, suffix: str, unit: str, path: str, problems: list[str]
) -> None:
    low, high = schema.get(f"min{suffix}"), schema.get(f"max{suffix}")
    if low is not None and count < low:
        problems.append(f"{path}: has {count} {unit}, fewer than the minimum {low}")
    if high is not None and count > high:
        problems.append(f"{path}: has {count} {unit}, more than the maximum {high}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{show(key)}]"
