"""The JSON nesting limit: how depth is counted, and that counting never recurses."""

from __future__ import annotations

from typing import Any

import pytest

from server.sessions.errors import InvalidArgument
from server.sessions.values import MAX_JSON_DEPTH, check_json_depth, json_depth, too_deep


def lists(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (1, 0),
        ("x", 0),
        (None, 0),
        ({}, 1),
        ([], 1),
        ({"a": 1, "b": [1, 2]}, 2),
        ({"a": {"b": {"c": []}}, "d": 1}, 4),
        ([1, [2, [3]], {"k": {}}], 3),
        (lists(24), 24),
    ],
)
def test_depth_counts_levels_of_objects_and_arrays(value: Any, depth: int) -> None:
    assert json_depth(value, stop=1000) == depth


def test_depth_of_a_value_past_pythons_recursion_limit_is_counted_without_recursing() -> None:
    assert json_depth(lists(100_000), stop=200_000) == 100_000
    assert too_deep(lists(100_000))


def test_the_limit_counts_the_levels_a_value_is_stored_inside() -> None:
    assert not too_deep(lists(MAX_JSON_DEPTH))
    assert too_deep(lists(MAX_JSON_DEPTH + 1))
    assert not too_deep(lists(MAX_JSON_DEPTH - 1), outer=1)
    assert too_deep(lists(MAX_JSON_DEPTH), outer=1)
    with pytest.raises(InvalidArgument) as err:
        check_json_depth({"a": lists(MAX_JSON_DEPTH)}, "messages[0].parts[0].function_call.args")
    assert err.value.violations[0].field == "messages[0].parts[0].function_call.args"
    assert str(MAX_JSON_DEPTH) in err.value.violations[0].description
