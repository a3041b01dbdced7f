"""JSON read with orjson's speed and the standard library's exactness.

orjson reads an integer beyond 64 bits as a float (12345678901234567890123 becomes
1.2345678901234568e+22) where `json` keeps it exact; chatd promises exact numbers in
function call arguments and tool results, so text that may hold such an integer (a run of
19 digits) is read by `json`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile(rb"\d{19}")


def loads_exact(data: bytes) -> Any:
    """The JSON value of UTF-8 `data`, integers exact. Raises ValueError (orjson's or
    json's JSONDecodeError, or UnicodeDecodeError) for what is not valid JSON; orjson also
    refuses NaN and Infinity, and lone surrogates."""
    if _LONG_DIGITS.search(data):
        return json.loads(data)
    return orjson.loads(data)
