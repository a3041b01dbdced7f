"""gemini_subset: a generated JSON schema (pydantic's) brought into the subset chatd checks."""

from __future__ import annotations

import enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from server.tools.schema import UnsupportedSchema, check_schema, gemini_subset


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


class Place(BaseModel):
    city: str = Field(description="The city.")
    unit: Unit | None = None


class Query(BaseModel):
    model_config = ConfigDict(extra="allow")

    places: list[Place]
    kind: Literal["now"] = "now"
    tags: dict[str, Any] = {}


def test_a_pydantic_model_schema_is_inlined_untitled_and_checkable() -> None:
    generated = Query.model_json_schema()
    assert "$defs" in generated and "title" in generated  # what is taken away below
    subset = gemini_subset(generated)
    assert subset == {
        "type": "object",
        "additionalProperties": True,  # extra="allow", beside properties: kept open
        "properties": {
            "places": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "The city."},
                        "unit": {
                            "type": ["string", "null"],
                            "enum": ["celsius", "fahrenheit", None],
                            "default": None,
                        },
                    },
                    "required": ["city"],
                },
            },
            "kind": {"type": "string", "enum": ["now"], "default": "now"},
            "tags": {"type": "object", "default": {}},
        },
        "required": ["places"],
    }
    assert list(subset) == ["type", "additionalProperties", "properties", "required"]
    check_schema(subset)


def test_keywords_beside_a_ref_apply_on_top_of_the_definition() -> None:
    schema = {
        "$defs": {"N": {"type": "integer", "title": "N", "minimum": 0}},
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/N", "description": "How many.", "default": 1}},
    }
    assert gemini_subset(schema)["properties"]["n"] == {
        "type": "integer",
        "minimum": 0,
        "description": "How many.",
        "default": 1,
    }


def test_what_only_says_anything_is_dropped() -> None:
    assert gemini_subset({"type": "array", "items": {}}) == {"type": "array"}
    assert gemini_subset({"type": "object", "additionalProperties": True}) == {"type": "object"}
    assert gemini_subset({"anyOf": [{}, {"type": "null"}]}) == {}
    assert gemini_subset({"type": "number", "default": float("nan")}) == {"type": "number"}
    # Enforced by the pydantic adapter that converts a Python tool's arguments.
    assert gemini_subset({"type": "string", "pattern": "a+"}) == {"type": "string"}
    assert gemini_subset({"type": "integer", "multipleOf": 2}) == {"type": "integer"}


@pytest.mark.parametrize(
    ("schema", "keyword", "message"),
    [
        ({"type": "string", "format": "date"}, "format", "uses 'format'"),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "anyOf", "only X | None"),
        ({"oneOf": [{"type": "string"}]}, "oneOf", "uses 'oneOf'"),
        ({"$ref": "#/$defs/Missing"}, "$ref", "names no \\$defs entry"),
        ({"$ref": "https://example.com/schema"}, "$ref", "names no \\$defs entry"),
        (
            {
                "$defs": {"T": {"type": "array", "items": {"$ref": "#/$defs/T"}}},
                "$ref": "#/$defs/T",
            },
            "$ref",
            "T contains itself",
        ),
    ],
)
def test_what_the_validator_does_not_check_is_refused_naming_the_keyword(
    schema: dict[str, Any], keyword: str, message: str
) -> None:
    with pytest.raises(UnsupportedSchema, match=message) as caught:
        gemini_subset(schema)
    assert caught.value.keyword == keyword
