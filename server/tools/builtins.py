"""The built-in tools: the current time in a time zone, a safe calculator, date differences."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from server.tools.arithmetic import ArithmeticRefused, evaluate
from server.tools.definition import Tool, ToolError, tool

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Integers beyond this lose digits as JSON doubles (protobuf Struct), so they go as strings.
_EXACT_INT_LIMIT = 2**53


@tool
def get_current_time(timezone: str = "UTC") -> dict[str, object]:
    """Returns the current date and time in a time zone, with its weekday and Unix time.

    Args:
        timezone: An IANA time zone name, such as "Europe/Paris", "America/New_York" or "UTC".
    """
    now = dt.datetime.now(_zone(timezone))
    return {
        "timezone": timezone,
        "iso8601": now.isoformat(timespec="seconds"),
        "unix": int(now.timestamp()),
        # A fixed table rather than strftime("%A"), which follows the process locale.
        "weekday": _WEEKDAYS[now.weekday()],
    }


@tool
def calculate(expression: str) -> int | float | str:
    """Evaluates an arithmetic expression and returns its value; use it for any arithmetic.

    Supports numbers, + - * / // % ** and parentheses, the constants pi and e, and the
    functions sqrt, abs, round, min, max, sin, cos, tan (radians), log (natural, or
    log(x, base)) and exp. Integers too large to be exact as a JSON number come back as a
    string of digits.

    Args:
        expression: The expression, for example "(17 * 3 + 4) / 2" or "sqrt(2) * pi".
    """
    try:
        value = evaluate(expression)
    except ArithmeticRefused as e:
        raise ToolError(f"cannot calculate {expression[:80]!r}: {e}") from None
    if isinstance(value, int) and abs(value) > _EXACT_INT_LIMIT:
        return str(value)
    return value


@tool
def date_diff(start: str, end: str) -> dict[str, object]:
    """Counts the days and the weekdays (Monday to Friday) from one date to another.

    Both counts include the start date and exclude the end date, like subtracting dates, and
    are negative when the end is before the start. Holidays are not known.

    Args:
        start: The first date, ISO 8601 (YYYY-MM-DD).
        end: The second date, ISO 8601 (YYYY-MM-DD).
    """
    first, second = _date("start", start), _date("end", end)
    sign = 1 if second >= first else -1
    low, high = min(first, second), max(first, second)
    days = (high - low).days
    full_weeks, rest = divmod(days, 7)
    weekdays = full_weeks * 5 + sum((low.weekday() + i) % 7 < 5 for i in range(rest))
    return {
        "start": first.isoformat(),
        "end": second.isoformat(),
        "days": sign * days,
        "weekdays": sign * weekdays,
        "start_weekday": _WEEKDAYS[first.weekday()],
        "end_weekday": _WEEKDAYS[second.weekday()],
    }


BUILTIN_TOOLS: tuple[Tool, ...] = (get_current_time, calculate, date_diff)


def _zone(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        # UTC needs no tz database, so it works on hosts without one.
        if name in ("UTC", "Etc/UTC"):
            return dt.UTC
        raise ToolError(
            f"unknown time zone {name[:80]!r}; use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from e


def _date(argument: str, text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        pass
    try:
        # A date-time ("2024-05-01T09:30:00") is read as its date.
        return dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise ToolError(f"{argument}: {text[:80]!r} is not an ISO 8601 date (YYYY-MM-DD)") from None
