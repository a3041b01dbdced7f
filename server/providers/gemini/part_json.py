"""The Gemini JSON form of a part, as google-genai reads it: the check callers' parts meet.

A part a caller gives as Gemini JSON (Part.gemini_part) is sent through google-genai on
every later turn; one the SDK will not read would fail each of them, so it is refused
when given. This module lets the rpc layer ask the SDK without importing it.
"""

from __future__ import annotations

from typing import Any

import pydantic
from google.genai import types


def part_json_problem(value: Any) -> str | None:
    """Why google-genai would not read `value` as a Part (its first complaint, with the
    field's path), or None when it would."""
    try:
        types.Part.model_validate(value)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return f"{where}: {first.get('msg')}"
    return None
