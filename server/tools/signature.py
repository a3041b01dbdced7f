"""JSON schemas for tool parameters derived from a function's signature and docstring."""

from __future__ import annotations

import collections.abc
import enum
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.tools.docstrings import parse_docstring

# Turns a validated JSON value into what the annotation asks for (an Enum member, a tuple).
Converter = Callable[[Any], Any]

_SCALARS: dict[object, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SEQUENCES = (list, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


class UnsupportedAnnotation(ValueError):
    """An annotation with no JSON-schema equivalent; the caller adds the parameter's name."""


@dataclass(frozen=True, slots=True)
class DerivedParameters:
    schema: dict[str, Any]
    converters: dict[str, Converter]
    # Parameters that are optional (X | None) without a default: called with None when absent.
    none_when_absent: frozenset[str]
    summary: str


def derive_parameters(function: Callable[..., Any], where: str) -> DerivedParameters:
    """The parameters schema of `function`; raises ValueError naming `where` and the parameter."""
    doc = parse_docstring(inspect.getdoc(function))
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as e:  # NameError for a forward reference that does not resolve, mostly
        raise ValueError(f"tool {where}: cannot resolve its annotations: {e}") from e
    properties: dict[str, Any] = {}
    required: list[str] = []
    converters: dict[str, Converter] = {}
    none_when_absent: set[str] = set()
    for param in inspect.signature(function).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            # Tools are called with keyword arguments named after the schema's properties.
            raise ValueError(
                f"tool {where}: parameter {param.name!r} is {param.kind.description}; "
                "tool parameters must be nameable (no *args, **kwargs or positional-only)"
            )
        if param.name not in hints:
            raise ValueError(f"tool {where}: parameter {param.name!r} has no type annotation")
        annotation, annotated_text = _strip_annotated(hints[param.name])
        optional, annotation = _strip_optional(annotation)
        try:
            schema, converter = annotation_schema(annotation)
        except UnsupportedAnnotation as e:
            raise ValueError(f"tool {where}: parameter {param.name!r}: {e}") from None
        text = doc.args.get(param.name) or annotated_text
        if text:
            schema = {**schema, "description": text}
        if param.default is not param.empty:
            default = _json_default(param.default)
            if default is not _NOT_JSON:
                schema["default"] = default
        elif optional:
            none_when_absent.add(param.name)
        else:
            required.append(param.name)
        properties[param.name] = schema
        if converter is not None:
            converters[param.name] = converter
    unknown = sorted(set(doc.args) - set(properties))
    if unknown:
        # A documented argument the function lacks is usually a rename the docstring missed.
        raise ValueError(f"tool {where}: docstring documents unknown parameters {unknown}")
    schema_out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema_out["required"] = required
    return DerivedParameters(schema_out, converters, frozenset(none_when_absent), doc.summary)


def annotation_schema(annotation: Any) -> tuple[dict[str, Any], Converter | None]:
    """The JSON schema of one (non-optional) annotation and its converter, if it needs one."""
    annotation, _ = _strip_annotated(annotation)
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}, None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum_schema(annotation), annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in _SEQUENCES or origin in _SEQUENCES:
        if not args:
            return {"type": "array"}, None
        items, item_converter = annotation_schema(args[0])
        return {"type": "array", "items": items}, _each(item_converter)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items, item_converter = annotation_schema(args[0])
        each = _each(item_converter)
        return {"type": "array", "items": items}, lambda v: tuple(each(v) if each else v)
    if annotation in _MAPPINGS or origin in _MAPPINGS:
        if args and args[0] is not str:
            raise UnsupportedAnnotation(f"{_show(annotation)}: JSON object keys are strings")
        return {"type": "object"}, None
    if origin is typing.Literal:
        return _literal_schema(annotation, args), None
    if origin in (typing.Union, types.UnionType):
        raise UnsupportedAnnotation(
            f"unsupported annotation {_show(annotation)} (only X | None unions are supported)"
        )
    raise UnsupportedAnnotation(
        f"unsupported annotation {_show(annotation)} (use str, int, float, bool, list[X], "
        "dict[str, X], Literal[...], an Enum, or X | None)"
    )


def _enum_schema(cls: type[enum.Enum]) -> dict[str, Any]:
    values = [member.value for member in cls]
    kind = _same_scalar_type(values)
    if kind is None:
        raise UnsupportedAnnotation(f"enum {cls.__name__}: values must all be str or all be int")
    return {"type": kind, "enum": values}


def _literal_schema(annotation: Any, values: tuple[Any, ...]) -> dict[str, Any]:
    kind = _same_scalar_type(list(values))
    if kind is None:
        raise UnsupportedAnnotation(
            f"{_show(annotation)}: literal values must all be str, all int or all bool"
        )
    return {"type": kind, "enum": list(values)}


def _same_scalar_type(values: list[Any]) -> str | None:
    # type() rather than isinstance: True is an int, and an IntEnum value must stay an int.
    kinds = {_SCALARS.get(type(v)) for v in values}
    if len(kinds) != 1 or None in kinds or "number" in kinds:
        return None
    return kinds.pop()


def _each(converter: Converter | None) -> Converter | None:
    if converter is None:
        return None
    return lambda values: [converter(v) for v in values]


def _strip_annotated(annotation: Any) -> tuple[Any, str]:
    """Annotated[X, "text"] → X and "text" (a fallback parameter description)."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, next((x for x in extras if isinstance(x, str)), "")
    return annotation, ""


def _strip_optional(annotation: Any) -> tuple[bool, Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return True, rest[0]
    return False, annotation


_NOT_JSON = object()


def _json_default(value: Any) -> Any:
    """The default as JSON, or _NOT_JSON when it has no JSON form (then it is just omitted)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or type(value) in (str, int, bool):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else _NOT_JSON
    if isinstance(value, list | tuple):
        items = [_json_default(v) for v in value]
        return _NOT_JSON if any(v is _NOT_JSON for v in items) else items
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        entries = {k: _json_default(v) for k, v in value.items()}
        return _NOT_JSON if any(v is _NOT_JSON for v in entries.values()) else entries
    return _NOT_JSON


def _show(annotation: Any) -> str:
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")
