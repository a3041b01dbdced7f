"""JSON schemas for tool parameters derived from a function's signature and docstring.

Each parameter's schema is pydantic's (`TypeAdapter(annotation).json_schema()`, so what
pydantic reads from an annotation comes along: `Annotated[int, Field(ge=1)]` is a minimum,
a dataclass or pydantic model is an object with its properties), put through
schema.gemini_subset, which inlines $defs, drops titles and refuses what chatd's validator
does not check (https://docs.pydantic.dev/latest/concepts/json_schema/). The same adapter
turns a checked argument into the annotated type when the tool is called: an Enum member,
a tuple, a dataclass, a float for a float parameter the model sent 2.

Written here rather than left to pydantic (`create_model(...).model_json_schema()` for the
whole signature):
- the object around the parameters: pydantic would make an optional parameter without a
  default (`x: int | None`) required and nullable, where chatd leaves it out of "required"
  and passes None when the model does; and it reads no Google-style docstrings, which
  describe the tool and its parameters here (docstrings.py);
- refusals that pydantic's schema cannot show, made in its schema generator
  (_ToolJsonSchema): dict keys other than str (`dict[int, X]` has the schema of
  `dict[str, X]`, and pydantic would convert "1" to 1 behind the schema's back), and Enum
  or Literal values that are not all str, all int or all bool (pydantic writes no "type"
  for a mix, and floats compare inexactly); and a parameter whose schema admits anything
  (Any, object), which tells the model nothing.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticSerializationError, core_schema

from server.tools.docstrings import parse_docstring
from server.tools.jsonvalues import NotJSONError, to_json_value
from server.tools.schema import ArgumentError, UnsupportedSchema, gemini_subset

# Turns a validated JSON value into what the annotation asks for (an Enum member, a tuple).
Converter = Callable[[Any], Any]

_SCALARS: dict[object, str] = {str: "string", int: "integer", bool: "boolean"}
_SUPPORTED = (
    "use str, int, float, bool, list[X], dict[str, X], Literal[...], an Enum, a dataclass "
    "or pydantic model, or X | None"
)


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
        optional, annotation, annotated_text = _strip_optional(hints[param.name])
        try:
            adapter, schema = annotation_schema(annotation)
        except UnsupportedAnnotation as e:
            raise ValueError(f"tool {where}: parameter {param.name!r}: {e}") from None
        text = doc.args.get(param.name) or annotated_text
        if text:
            schema["description"] = text
        if param.default is not param.empty:
            default = _json_default(adapter, param.default)
            if default is not _NOT_JSON:
                schema["default"] = default
        elif optional:
            none_when_absent.add(param.name)
        else:
            required.append(param.name)
        properties[param.name] = schema
        converters[param.name] = _converter(param.name, adapter)
    unknown = sorted(set(doc.args) - set(properties))
    if unknown:
        # A documented argument the function lacks is usually a rename the docstring missed.
        raise ValueError(f"tool {where}: docstring documents unknown parameters {unknown}")
    schema_out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema_out["required"] = required
    return DerivedParameters(schema_out, converters, frozenset(none_when_absent), doc.summary)


def annotation_schema(annotation: Any) -> tuple[pydantic.TypeAdapter[Any], dict[str, Any]]:
    """pydantic's adapter for one (non-optional) annotation, and its JSON schema in the
    subset chatd checks. Raises UnsupportedAnnotation."""
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)
        generated = adapter.json_schema(schema_generator=_ToolJsonSchema)
    except pydantic.PydanticUserError:
        # No pydantic schema (a plain class) or no JSON schema (a Callable) for it.
        raise UnsupportedAnnotation(
            f"unsupported annotation {_show(annotation)} ({_SUPPORTED})"
        ) from None
    except UnsupportedAnnotation as e:
        raise UnsupportedAnnotation(f"unsupported annotation {_show(annotation)}: {e}") from None
    try:
        schema = gemini_subset(generated)
    except UnsupportedSchema as e:
        # A union or a recursive type has no better spelling to suggest.
        reason = f"({e})" if e.keyword in ("anyOf", "$ref") else f"({e}; {_SUPPORTED})"
        raise UnsupportedAnnotation(
            f"unsupported annotation {_show(annotation)} {reason}"
        ) from None
    if schema.get("type") in (None, "null"):
        # Any or object (a schema that admits everything), or None: nothing to tell the model.
        raise UnsupportedAnnotation(f"unsupported annotation {_show(annotation)} ({_SUPPORTED})")
    return adapter, schema


class _ToolJsonSchema(GenerateJsonSchema):
    """pydantic's JSON schema generator, refusing what the schema it writes cannot show."""

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        keys = schema.get("keys_schema", {"type": "any"})
        if keys["type"] not in ("str", "any"):
            raise UnsupportedAnnotation("JSON object keys are strings")
        return super().dict_schema(schema)

    def enum_schema(self, schema: core_schema.EnumSchema) -> JsonSchemaValue:
        if _same_scalar_type(member.value for member in schema["members"]) is None:
            name = schema["cls"].__name__
            raise UnsupportedAnnotation(f"enum {name}: values must all be str or all be int")
        return super().enum_schema(schema)

    def literal_schema(self, schema: core_schema.LiteralSchema) -> JsonSchemaValue:
        if _same_scalar_type(schema["expected"]) is None:
            raise UnsupportedAnnotation("literal values must all be str, all int or all bool")
        return super().literal_schema(schema)


def _same_scalar_type(values: Iterable[Any]) -> str | None:
    # type() rather than isinstance: True is an int, and an IntEnum value must stay an int.
    kinds = {_SCALARS.get(type(v)) for v in values}
    if len(kinds) != 1 or None in kinds:
        return None
    return kinds.pop()


def _converter(name: str, adapter: pydantic.TypeAdapter[Any]) -> Converter:
    def convert(value: Any) -> Any:
        try:
            return adapter.validate_python(value)
        except pydantic.ValidationError as e:
            # The schema was checked already: this is a validator of the annotation's own
            # (an AfterValidator in Annotated[...], say).
            raise ArgumentError(
                [f"args.{name}{_location(error['loc'])}: {error['msg']}" for error in e.errors()]
            ) from None

    return convert


def _location(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _strip_optional(annotation: Any) -> tuple[bool, Any, str]:
    """Whether `annotation` is X | None, X (its Annotated[...] metadata kept), and the first
    string in that metadata (a fallback parameter description)."""
    metadata: tuple[Any, ...] = ()
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        metadata = tuple(extras)
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            optional, annotation = True, rest[0]
    if metadata:
        annotation = typing.Annotated[(annotation, *metadata)]
    text = next((x for x in metadata if isinstance(x, str)), "")
    return optional, annotation, text


_NOT_JSON = object()


def _json_default(adapter: pydantic.TypeAdapter[Any], value: Any) -> Any:
    """The default as JSON, or _NOT_JSON when it has none (NaN): then it is just omitted."""
    try:
        return to_json_value(adapter.dump_python(value, warnings=False), "default")
    except (NotJSONError, PydanticSerializationError):
        return _NOT_JSON


def _show(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Annotated:
        return f"Annotated[{_show(typing.get_args(annotation)[0])}, ...]"
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")
