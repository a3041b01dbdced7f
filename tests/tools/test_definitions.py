"""Tool definitions chatd cannot describe to the model are refused when they are made."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any, Literal

import pytest

from server.tools import Tool, ToolRegistry, tool


class Point:
    x: int


@dataclasses.dataclass
class Tree:
    value: int
    children: list[Tree]


class Mixed(enum.Enum):
    A = "a"
    B = 2


def noop() -> None:
    """Does nothing."""


def noop_any(**kwargs: Any) -> None:
    """Accepts any arguments."""


@pytest.mark.parametrize(
    "name", ["", "1abc", "has space", "a" * 65, "ünïcode", "semi;colon", "slash/name"]
)
def test_names_breaking_geminis_rule_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        tool(name=name)(noop)


@pytest.mark.parametrize("name", ["a", "_x", "get.time", "a-b_c.d", "A" * 64])
def test_names_within_geminis_rule_are_accepted(name: str) -> None:
    assert tool(name=name)(noop).name == name


def test_an_unsupported_annotation_is_refused_naming_function_and_parameter() -> None:
    def locate(where: Point) -> None:
        """Locates."""

    with pytest.raises(
        ValueError, match=r"locate.*parameter 'where'.*unsupported annotation Point"
    ):
        tool(locate)


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (int | str, "only X | None unions"),
        (dict[int, str], "JSON object keys are strings"),
        (Literal["a", 1], "literal values must all be"),
        (Any, "unsupported annotation"),
        (list[Point], "unsupported annotation"),
        (set[int], "unsupported annotation"),
        (bytes, "unsupported annotation"),
        # pydantic writes a schema for these, with keywords chatd's validator does not check.
        (bytes, "uses 'format'"),
        (dt.date, "unsupported annotation date .*uses 'format'"),
        (set[int], "uses 'uniqueItems'"),
        (tuple[int, str], "uses 'prefixItems'"),
        (list[int | str], "only X | None unions"),
        (Literal[1.5, 2.5], "literal values must all be"),
        (list[Mixed], "values must all be str or all be int"),
        (dict[str, dict[int, str]], "JSON object keys are strings"),
        (Tree, "Tree contains itself: recursive schemas"),
        (object, "unsupported annotation object"),
        (None, "unsupported annotation NoneType"),
    ],
)
def test_annotations_without_a_json_schema_form_are_refused(annotation: Any, message: str) -> None:
    def f(x: Any) -> None:
        """F."""

    f.__annotations__["x"] = annotation
    with pytest.raises(ValueError, match=rf"parameter 'x'.*{message}"):
        tool(f)


def test_a_missing_annotation_is_refused() -> None:
    def f(x, y: int) -> None:  # type: ignore[no-untyped-def]
        """F."""

    with pytest.raises(ValueError, match=r"\.f: parameter 'x' has no type annotation"):
        tool(f)


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("def f(*args: int) -> None: ...", "variadic positional"),
        ("def f(**kwargs: int) -> None: ...", "variadic keyword"),
        ("def f(x: int, /) -> None: ...", "positional-only"),
    ],
)
def test_parameters_that_cannot_be_passed_by_name_are_refused(source: str, kind: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(ValueError, match=rf"parameter '\w+' is {kind}"):
        tool(namespace["f"])


def test_a_docstring_documenting_a_parameter_the_function_lacks_is_refused() -> None:
    def f(query: str) -> None:
        """Searches.

        Args:
            q: The query (renamed since).
        """

    with pytest.raises(ValueError, match=r"documents unknown parameters \['q'\]"):
        tool(f)


def test_an_enum_mixing_value_types_is_refused() -> None:
    def f(m: Mixed) -> None:
        """F."""

    with pytest.raises(ValueError, match="values must all be str or all be int"):
        tool(f)


def test_an_annotation_that_does_not_resolve_is_refused_clearly() -> None:
    class Local(enum.Enum):  # string annotations cannot see a function's locals
        A = "a"

    def f(m: Local) -> None:
        """F."""

    with pytest.raises(ValueError, match=r"\.f: cannot resolve its annotations: name 'Local'"):
        tool(f)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string"}, "parameters must be of type object"),
        ({"properties": {}}, "parameters must be of type object"),
        ({"type": "object", "anyOf": []}, "unsupported schema keyword 'anyOf'"),
        (
            {"type": "object", "properties": {"x": {"type": "text"}}},
            r"parameters\.properties\.x\.type",
        ),
        ({"type": "object", "properties": {"x": {"pattern": "a+"}}}, "keyword 'pattern'"),
        ({"type": "object", "required": ["y"], "properties": {"x": {}}}, r"names \['y'\]"),
        ({"type": "object", "properties": {"x": {"maxLength": -1}}}, "non-negative integer"),
        ({"type": "object", "properties": {"x": {"minimum": "0"}}}, "must be a number"),
    ],
)
def test_hand_written_schemas_are_checked(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tool(parameters=schema)(noop_any)


def test_a_hand_written_schema_must_fit_the_functions_signature() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}

    def unknown_property(b: int = 0) -> None: ...

    def unrequired_parameter(a: int) -> None: ...

    with pytest.raises(ValueError, match=r"properties \['a'\] are not keyword parameters"):
        tool(parameters=schema)(unknown_property)
    with pytest.raises(
        ValueError, match=r"parameters \['a'\] have no default but are not required"
    ):
        tool(parameters=schema)(unrequired_parameter)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_a_timeout_must_be_a_positive_finite_number(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive"):
        tool(timeout=timeout)(noop)


def test_the_registry_refuses_two_tools_with_one_name_naming_both_sources() -> None:
    @tool(name="same")
    def first() -> None:
        """One."""

    @tool(name="same")
    def second() -> None:
        """Two."""

    with pytest.raises(ValueError, match=r"duplicate tool name 'same'.*first.*second"):
        ToolRegistry([first, second])


def test_the_same_tool_object_twice_is_one_tool() -> None:
    t = tool(noop)
    assert len(ToolRegistry([t, t])) == 1


def test_a_tool_can_be_built_directly_and_is_checked_the_same_way() -> None:
    ok = Tool("direct", "Direct.", {"type": "object", "properties": {}}, lambda: None)
    assert ok.source.endswith("<lambda>")
    with pytest.raises(ValueError, match="must match"):
        Tool("bad name", "", {"type": "object"}, lambda: None)
