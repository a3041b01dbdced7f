"""Schema derivation: each supported annotation, defaults, docstrings, and argument conversion."""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Optional

import pytest
from pydantic import AfterValidator, Field

from server.tools import ArgumentError, Tool, tool


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


def prop(t: Tool, name: str) -> Any:
    return t.parameters["properties"][name]


@pytest.mark.parametrize(
    ("annotation", "schema"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (typing.List[str], {"type": "array", "items": {"type": "string"}}),  # noqa: UP006
        (Sequence[float], {"type": "array", "items": {"type": "number"}}),
        (list, {"type": "array"}),
        (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
        (
            list[list[bool]],
            {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}}},
        ),
        (dict, {"type": "object"}),
        # pydantic's schema says what the values are, and the validator checks them.
        (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
        (Mapping[str, Any], {"type": "object"}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (Literal[1, 2, 3], {"type": "integer", "enum": [1, 2, 3]}),
        (Literal[True], {"type": "boolean", "enum": [True]}),
        (Color, {"type": "string", "enum": ["red", "green"]}),
        (Level, {"type": "integer", "enum": [1, 2]}),
        (list[Color], {"type": "array", "items": {"type": "string", "enum": ["red", "green"]}}),
        (list[Any], {"type": "array"}),
        # An optional inside a container admits null, in JSON Schema's own terms.
        (list[int | None], {"type": "array", "items": {"type": ["integer", "null"]}}),
        (
            list[Color | None],
            {
                "type": "array",
                "items": {"type": ["string", "null"], "enum": ["red", "green", None]},
            },
        ),
        # pydantic's constraints in Annotated become the keywords chatd enforces.
        (
            Annotated[int, Field(ge=1, lt=10)],
            {"type": "integer", "minimum": 1, "exclusiveMaximum": 10},
        ),
        (
            Annotated[list[str], Field(min_length=1, max_length=3)],
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        ),
        (Annotated[str, Field(max_length=8)], {"type": "string", "maxLength": 8}),
    ],
)
def test_each_supported_annotation_maps_to_its_json_schema(annotation: Any, schema: Any) -> None:
    def f(x: Any) -> None:
        """F."""

    f.__annotations__["x"] = annotation
    t = tool(f)
    assert t.parameters == {"type": "object", "properties": {"x": schema}, "required": ["x"]}


def test_optional_and_union_none_are_the_inner_type_and_not_required() -> None:
    @tool
    def f(a: int | None, b: Optional[str] = None, c: str = "x") -> None:  # noqa: UP045
        """F."""

    assert prop(f, "a") == {"type": "integer"}
    assert prop(f, "b") == {"type": "string", "default": None}
    assert "required" not in f.parameters


def test_defaults_are_not_required_and_included_when_json_able() -> None:
    @tool
    def f(
        n: int,
        k: int = 3,
        tags: Sequence[str] = ("a",),
        color: Color = Color.RED,
        weird: float = float("nan"),
    ) -> None:
        """F."""

    assert f.parameters["required"] == ["n"]
    assert prop(f, "k")["default"] == 3
    assert prop(f, "tags")["default"] == ["a"]
    assert prop(f, "color")["default"] == "red"
    assert "default" not in prop(f, "weird")  # NaN has no JSON form: omitted, not refused


def test_description_is_the_docstring_first_paragraph_and_args_describe_parameters() -> None:
    @tool
    def lookup(city: str, units: Literal["metric", "imperial"] = "metric") -> None:
        """Looks up a city
        by its name.

        More detail the model does not need.

        Args:
            city: The city's name,
                in English.
            units (str, optional): Which units to use.

        Returns:
            Nothing.
        """

    assert lookup.description == "Looks up a city by its name."
    assert prop(lookup, "city")["description"] == "The city's name, in English."
    assert prop(lookup, "units")["description"] == "Which units to use."


def test_annotated_text_describes_a_parameter_the_docstring_does_not() -> None:
    @tool
    def f(q: Annotated[str, "The search query."]) -> None:
        """Searches."""

    assert prop(f, "q") == {"type": "string", "description": "The search query."}


def test_string_annotations_from_future_import_resolve() -> None:
    # This module uses `from __future__ import annotations`, so every hint here is a string.
    @tool
    def f(x: list[int]) -> None:
        """F."""

    assert prop(f, "x") == {"type": "array", "items": {"type": "integer"}}


def test_explicit_name_description_parameters_and_timeout_override_derivation() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}

    @tool(name="my.tool-1", description="Custom.", parameters=schema, timeout=2.5)
    def f(n=1):  # type: ignore[no-untyped-def]  # hand-written schemas need no annotations
        """Docstring."""

    assert (f.name, f.description, f.parameters, f.timeout) == ("my.tool-1", "Custom.", schema, 2.5)
    assert f.parameters is not schema  # a private copy


def test_the_declaration_carries_name_description_and_schema() -> None:
    @tool
    async def ping(host: str) -> str:
        """Pings a host."""
        return host

    d = ping.declaration
    assert (d.name, d.description, d.parameters) == ("ping", "Pings a host.", ping.parameters)


def test_no_parameters_gives_an_empty_object_schema_and_no_docstring_an_empty_description() -> None:
    def now() -> int:
        return 0

    t = tool(now)
    assert t.parameters == {"type": "object", "properties": {}}
    assert t.description == ""


def test_arguments_convert_enums_tuples_integral_floats_and_fill_absent_optionals() -> None:
    @tool
    def f(
        color: Color, levels: list[Level], pair: tuple[int, ...], n: int, maybe: str | None
    ) -> None:
        """F."""

    kwargs = f.arguments({"color": "green", "levels": [2.0, 1], "pair": [1, 2], "n": 3.0})
    assert kwargs == {
        "color": Color.GREEN,
        "levels": [Level.HIGH, Level.LOW],
        "pair": (1, 2),
        "n": 3,
        "maybe": None,
    }
    assert type(kwargs["n"]) is int


@dataclasses.dataclass
class Window:
    """A time window."""

    start: int
    color: Color = Color.RED
    label: str | None = None


def test_a_dataclass_parameter_is_an_object_and_arrives_as_the_dataclass() -> None:
    @tool
    def book(window: Window, more: list[Window] = []) -> None:  # noqa: B006
        """Books."""

    window = {
        "type": "object",
        "description": "A time window.",
        "properties": {
            "start": {"type": "integer"},
            "color": {"type": "string", "enum": ["red", "green"], "default": "red"},
            "label": {"type": ["string", "null"], "default": None},
        },
        "required": ["start"],
    }
    assert book.parameters == {
        "type": "object",
        "properties": {
            "window": window,
            "more": {"type": "array", "items": window, "default": []},
        },
        "required": ["window"],
    }
    kwargs = book.arguments({"window": {"start": 9.0, "color": "green"}, "more": [{"start": 1}]})
    assert kwargs == {"window": Window(9, Color.GREEN), "more": [Window(1)]}
    with pytest.raises(ArgumentError, match=r"args\.window\.stop: unknown property"):
        book.arguments({"window": {"start": 1, "stop": 2}})


def test_dict_values_are_checked_against_their_annotation() -> None:
    @tool
    def f(counts: dict[str, int]) -> None:
        """F."""

    assert f.arguments({"counts": {"a": 1.0}}) == {"counts": {"a": 1}}
    with pytest.raises(ArgumentError, match=r"args\.counts\.b: expected integer, got string"):
        f.arguments({"counts": {"b": "x"}})


def even(n: int) -> int:
    if n % 2:
        raise ValueError("must be even")
    return n


def test_a_validator_in_the_annotation_refuses_an_argument_naming_it() -> None:
    @tool
    def f(
        n: Annotated[int, AfterValidator(even)],
        points: tuple[Annotated[int, AfterValidator(even)], ...] = (),
    ) -> None:
        """F."""

    assert f.arguments({"n": 4.0}) == {"n": 4}
    with pytest.raises(ArgumentError, match=r"args\.n: Value error, must be even"):
        f.arguments({"n": 3})
    with pytest.raises(ArgumentError, match=r"args\.points\[1\]: Value error, must be even"):
        f.arguments({"n": 2, "points": [2, 5]})


def test_null_for_an_optional_argument_means_not_given() -> None:
    @tool
    def f(a: int, b: int = 5) -> None:
        """F."""

    assert f.arguments({"a": 1, "b": None}) == {"a": 1}


def test_constraints_only_pydantic_checks_are_left_out_of_the_schema_and_still_enforced() -> None:
    @tool
    def lookup(
        code: Annotated[str, Field(pattern=r"^[A-Z]{3}$")],
        step: Annotated[int, Field(multiple_of=5)] = 5,
    ) -> str:
        """Looks a code up."""
        return code

    properties = lookup.parameters["properties"]
    assert properties["code"] == {"type": "string"}
    assert "multipleOf" not in properties["step"]
    assert lookup.arguments({"code": "ABC"}) == {"code": "ABC"}
    with pytest.raises(ArgumentError, match=r"args\.code: String should match pattern"):
        lookup.arguments({"code": "abc"})
    with pytest.raises(ArgumentError, match=r"args\.step: Input should be a multiple of 5"):
        lookup.arguments({"code": "ABC", "step": 7})
