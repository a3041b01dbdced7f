"""The built-in tools: time zones, the calculator's answers and refusals, date differences."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest

from server.tools import BUILTIN_TOOLS, ToolRegistry
from server.tools.arithmetic import MAX_EXPRESSION_CHARS

BUILTINS = ToolRegistry(BUILTIN_TOOLS)


async def result(name: str, **args: Any) -> Any:
    outcome = await BUILTINS.run(name, args)
    assert not outcome.is_error, outcome.response
    return outcome.response["result"]


async def error(name: str, **args: Any) -> str:
    outcome = await BUILTINS.run(name, args)
    assert outcome.is_error, outcome.response
    message = outcome.response["error"]
    assert isinstance(message, str)
    return message


# ----------------------------------------------------------------------------- declarations

# The built-ins' parameters as the model is told them, recorded when chatd wrote schemas
# itself, before pydantic derived them: the JSON text (key order too) must not change.
DECLARED = {
    "get_current_time": '{"type": "object", "properties": {"timezone": {"type": "string", '
    '"description": "An IANA time zone name, such as \\"Europe/Paris\\", '
    '\\"America/New_York\\" or \\"UTC\\".", "default": "UTC"}}}',
    "calculate": '{"type": "object", "properties": {"expression": {"type": "string", '
    '"description": "The expression, for example \\"(17 * 3 + 4) / 2\\" or '
    '\\"sqrt(2) * pi\\"."}}, "required": ["expression"]}',
    "date_diff": '{"type": "object", "properties": {"start": {"type": "string", '
    '"description": "The first date, ISO 8601 (YYYY-MM-DD)."}, "end": {"type": "string", '
    '"description": "The second date, ISO 8601 (YYYY-MM-DD)."}}, "required": ["start", "end"]}',
}


def test_builtin_declarations_are_the_schemas_chatd_always_declared() -> None:
    assert {t.name: json.dumps(t.declaration.parameters) for t in BUILTIN_TOOLS} == DECLARED


# ----------------------------------------------------------------------------- get_current_time


async def test_current_time_defaults_to_utc_and_matches_the_clock() -> None:
    before = int(time.time())
    now = await result("get_current_time")
    after = time.time()
    assert now["timezone"] == "UTC"
    assert before <= now["unix"] <= after
    parsed = dt.datetime.fromisoformat(now["iso8601"])
    assert parsed.utcoffset() == dt.timedelta(0)
    assert int(parsed.timestamp()) == now["unix"]
    assert now["weekday"] == parsed.strftime("%A")


async def test_current_time_in_a_fixed_offset_zone_is_three_hours_ahead() -> None:
    # POSIX-style names invert the sign: Etc/GMT-3 is UTC+03:00 all year round.
    before = int(time.time())
    utc = await result("get_current_time", timezone="UTC")
    plus3 = await result("get_current_time", timezone="Etc/GMT-3")
    after = time.time()
    local = dt.datetime.fromisoformat(plus3["iso8601"])
    assert plus3["iso8601"].endswith("+03:00")
    assert before <= utc["unix"] <= plus3["unix"] <= after  # now, in both zones
    expected = dt.datetime.fromtimestamp(plus3["unix"], dt.UTC) + dt.timedelta(hours=3)
    assert local.replace(tzinfo=None) == expected.replace(tzinfo=None)
    assert plus3["weekday"] == local.strftime("%A")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", ""])
async def test_an_unknown_time_zone_is_an_error_naming_it(zone: str) -> None:
    assert f"unknown time zone {zone!r}" in await error("get_current_time", timezone=zone)


# ----------------------------------------------------------------------------- calculate


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("-2 ** 2", -4),
        ("+-3", -3),
        ("sqrt(16)", 4.0),
        ("abs(-2.5)", 2.5),
        ("round(2.675, 2)", 2.67),
        ("round(7.5)", 8),
        ("min(3, 1, 2) + max(4, 5)", 6),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("exp(0)", 1.0),
        ("cos(0) + sin(0) + tan(0)", 1.0),
        ("round(pi, 4)", 3.1416),
        ("1e3 + 0.5", 1000.5),
        ("2 ** 0.5 * 2 ** 0.5", pytest.approx(2.0)),
        ("2 ** 60", str(2**60)),  # beyond 2**53 a double would lose digits
        ("10 ** 3000 // 10 ** 2999", 10),
    ],
)
async def test_the_calculator_computes(expression: str, value: Any) -> None:
    assert await result("calculate", expression=expression) == value


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("x + 1", "the name 'x' is not allowed"),
        ("__import__('os').system('true')", "calling that is not allowed"),
        ("(1).real", "attribute access (.real) is not allowed"),
        ("pi.real", "attribute access (.real) is not allowed"),
        ("[1, 2]", "List syntax is not allowed"),
        ("'a' * 3", "'a' is not a number"),
        ("True + 1", "True is not a number"),
        ("1j", "1j is not a number"),
        ("lambda: 1", "Lambda syntax is not allowed"),
        ("sqrt(x=4)", "calling sqrt() with keyword or starred arguments is not allowed"),
        ("sqrt(1, 2)", "sqrt() takes 1 arguments, not 2"),
        ("9**9**9**9", "9 ** 387420489 is too large"),
        ("2 ** 100000", "2 ** 100000 is too large"),
        ("(10 ** 3000) * (10 ** 3000)", "the result is too large"),
        ("10 ** 400 * 1.5", "the result is too large"),
        ("exp(1000)", "the result is too large"),
        ("1e400", "the result is not a finite number"),
        ("round(5, -10 ** 9)", "round(): digits must be an integer within ±100"),
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0.0", "division by zero"),
        ("sqrt(-1)", "sqrt(): math domain error"),
        ("(-8) ** 0.5", "the result is a complex number"),
        ("1 +", "not an arithmetic expression"),
        ("(" * 150 + "1" + ")" * 150, ""),  # deep but legal: computes (checked below)
    ],
)
async def test_the_calculator_refuses_what_is_not_bounded_arithmetic(
    expression: str, why: str
) -> None:
    if not why:
        assert await result("calculate", expression=expression) == 1
        return
    message = await error("calculate", expression=expression)
    assert message.startswith(f"cannot calculate {expression[:80]!r}: ")
    assert why in message


async def test_the_calculator_refuses_long_input_without_parsing_it() -> None:
    # Nested deeper than Python's parser allows: parsed, it would be a syntax error.
    message = await error("calculate", expression="(" * 300 + "1" + ")" * 300 + "+1")
    assert f"603 characters; the limit is {MAX_EXPRESSION_CHARS}" in message


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        # The power's size is estimated before it is computed.
        ("9**9**9", "9 ** 387420489 is too large (results are limited to 10000 bits)"),
        ("(" * 199 + "1" + ")" * 199, 1),
        ("-" * 499 + "1", -1),
        ("2**9999*2", "the result is too large (limit 10000 bits)"),
    ],
)
async def test_the_worst_allowed_inputs_are_computed_or_refused_by_their_bounds(
    expression: str, answer: int | str
) -> None:
    """The inputs that cost the most within the length limit: each ends in a value or in
    the bound that refused it, never in a computation of an unbounded size."""
    if isinstance(answer, int):
        assert await result("calculate", expression=expression) == answer
    else:
        assert (await error("calculate", expression=expression)).endswith(answer)


# ----------------------------------------------------------------------------- date_diff


@pytest.mark.parametrize(
    ("start", "end", "days", "weekdays"),
    [
        ("2024-01-01", "2024-01-01", 0, 0),
        ("2024-01-01", "2024-01-08", 7, 5),  # Monday to Monday
        ("2024-01-05", "2024-01-08", 3, 1),  # Friday to Monday: only the Friday
        ("2024-01-06", "2024-01-08", 2, 0),  # a weekend
        ("2024-01-01", "2025-01-01", 366, 262),  # a leap year
        ("2024-01-08", "2024-01-01", -7, -5),
        ("2024-02-28T23:00:00", "2024-03-01", 2, 2),  # date-times count by their date
    ],
)
async def test_date_diff_counts_days_and_weekdays(
    start: str, end: str, days: int, weekdays: int
) -> None:
    diff = await result("date_diff", start=start, end=end)
    assert (diff["days"], diff["weekdays"]) == (days, weekdays)


async def test_date_diff_names_the_weekdays_and_normalises_dates() -> None:
    diff = await result("date_diff", start="2024-03-15", end="20240318")
    assert diff == {
        "start": "2024-03-15",
        "end": "2024-03-18",
        "days": 3,
        "weekdays": 1,
        "start_weekday": "Friday",
        "end_weekday": "Monday",
    }


async def test_date_diff_refuses_a_date_that_is_not_iso_naming_the_argument() -> None:
    message = await error("date_diff", start="2024-01-01", end="next Tuesday")
    assert message == "end: 'next Tuesday' is not an ISO 8601 date (YYYY-MM-DD)"
