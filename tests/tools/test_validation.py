"""Argument validation: every problem names the argument's path; integers may arrive as 3.0."""

from __future__ import annotations

from typing import Any

import pytest

from server.tools.schema import ArgumentError, validate

OBJECT = {
    "type": "object",
    "properties": {
        "timezone": {"type": "string", "minLength": 1, "maxLength": 5},
        "count": {"type": "integer", "minimum": 1, "maximum": 10},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "flag": {"type": "boolean"},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
        },
        "extra": {"type": "object"},
        "maybe": {"type": ["string", "null"]},
        "legacy": {"type": "string", "nullable": True},
    },
    "required": ["timezone"],
}


def problems(value: Any, schema: Any = OBJECT) -> list[str]:
    with pytest.raises(ArgumentError) as caught:
        validate(schema, value)
    return caught.value.problems


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"timezone": 3.0}, "args.timezone: expected string, got number"),
        ({"timezone": 3}, "args.timezone: expected string, got integer"),
        ({"timezone": None}, "args.timezone: expected string, got null"),
        ({"timezone": ""}, "args.timezone: has 0 characters, fewer than the minimum 1"),
        ({"timezone": "abcdef"}, "args.timezone: has 6 characters, more than the maximum 5"),
        ({"timezone": "U", "count": 2.5}, "args.count: expected integer, got number"),
        ({"timezone": "U", "count": True}, "args.count: expected integer, got boolean"),
        ({"timezone": "U", "count": 0}, "args.count: 0 is less than the minimum 1"),
        ({"timezone": "U", "count": 11}, "args.count: 11 is greater than the maximum 10"),
        ({"timezone": "U", "ratio": 1}, "args.ratio: 1 must be less than 1"),
        ({"timezone": "U", "ratio": 0}, "args.ratio: 0 must be greater than 0"),
        ({"timezone": "U", "flag": "yes"}, "args.flag: expected boolean, got string"),
        ({"timezone": "U", "mode": "warp"}, 'args.mode: "warp" is not one of "fast", "slow"'),
        ({"timezone": "U", "tags": "a"}, "args.tags: expected array, got string"),
        ({"timezone": "U", "tags": ["a", 1]}, "args.tags[1]: expected string, got integer"),
        (
            {"timezone": "U", "tags": ["a", "b", "c"]},
            "args.tags: has 3 items, more than the maximum 2",
        ),
        ({"timezone": "U", "point": {}}, "args.point.x: missing (required)"),
        ({"timezone": "U", "point": {"x": "1"}}, "args.point.x: expected integer, got string"),
        ({"timezone": "U", "point": {"x": 1, "y": 2}}, "args.point.y: unknown property (known: x)"),
        ({"timezone": "U", "maybe": 1}, "args.maybe: expected string or null, got integer"),
        ({"timezone": "U", "legacy": 1}, "args.legacy: expected string or null, got integer"),
        ({}, "args.timezone: missing (required)"),
        ({"timezone": "U", "tz": "UTC"}, "args.tz: unknown argument (known: count, extra, flag"),
        ({"timezone": "U", "odd key": 1}, 'args["odd key"]: unknown argument'),
    ],
)
def test_each_problem_names_the_argument_path(args: dict[str, Any], problem: str) -> None:
    assert any(p.startswith(problem) for p in problems(args)), problems(args)


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"count": "x", "flag": 1})
    assert found == [
        "args.timezone: missing (required)",
        "args.count: expected integer, got string",
        "args.flag: expected boolean, got integer",
    ]
    assert str(ArgumentError(found)) == "; ".join(found)


def test_integral_floats_are_accepted_for_integers_and_become_ints() -> None:
    out = validate(OBJECT, {"timezone": "UTC", "count": 3.0, "point": {"x": -7.0}})
    assert out == {"timezone": "UTC", "count": 3, "point": {"x": -7}}
    assert type(out["count"]) is int and type(out["point"]["x"]) is int


def test_integers_are_numbers_and_numbers_stay_as_given() -> None:
    out = validate(OBJECT, {"timezone": "UTC", "ratio": 0.5})
    assert out["ratio"] == 0.5
    assert validate({"type": "number"}, 2) == 2


def test_valid_arguments_pass_unchanged_and_nulls_are_allowed_where_declared() -> None:
    args = {
        "timezone": "UTC",
        "flag": False,
        "mode": "fast",
        "tags": ("a",),
        "extra": {"anything": [1, {"goes": None}]},
        "maybe": None,
        "legacy": None,
    }
    assert validate(OBJECT, args) == {**args, "tags": ["a"]}


def test_objects_without_properties_are_open_and_additional_properties_is_honoured() -> None:
    assert validate({"type": "object"}, {"a": 1}) == {"a": 1}
    open_ = {"type": "object", "properties": {}, "additionalProperties": True}
    assert validate(open_, {"a": 1}) == {"a": 1}
    typed = {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}}
    assert validate(typed, {"a": 2.0}) == {"a": 2}
    assert problems({"a": "x"}, typed) == ["args.a: expected integer, got string"]
    closed = {"type": "object", "additionalProperties": False}
    assert problems({"a": 1}, closed) == ["args.a: unknown argument (known: none)"]


def test_enum_and_const_compare_like_json_true_is_not_one() -> None:
    assert validate({"enum": [1, 2]}, 1.0) == 1.0
    assert problems(True, {"enum": [1, 2]}) == ["args: true is not one of 1, 2"]
    assert problems(1, {"const": True}) == ["args: must be true"]
    assert validate({"const": {"a": [1]}}, {"a": [1.0]}) == {"a": [1.0]}


def test_a_type_list_takes_the_first_type_that_fits() -> None:
    assert validate({"type": ["integer", "string"]}, 4.0) == 4
    assert validate({"type": ["integer", "string"]}, "4") == "4"
