"""A safe arithmetic evaluator over Python's ast: numbers, operators, a few math functions."""

# Nothing else parses: no names but pi and e, no attributes, subscripts or calls to anything
# else. The work is bounded, because the model may send anything: the input length, the size
# of every integer produced (so 9**9**9**9 is refused instead of hanging a worker thread), and
# the digits round() may ask for.

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_EXPRESSION_CHARS = 500
# About 3,000 decimal digits: big enough for real arithmetic, small enough to stay instant.
MAX_INT_BITS = 10_000
MAX_ROUND_DIGITS = 100

Number = int | float


class ArithmeticRefused(ValueError):
    """The expression is not allowed or cannot be computed; the message says why."""


_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _round(x: Number, digits: Number | None = None) -> Number:
    if digits is None:
        return round(x)
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise ArithmeticRefused(f"round(): digits must be an integer within ±{MAX_ROUND_DIGITS}")
    return round(x, digits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


# name -> (function, fewest arguments, most arguments or None for any number)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, None),
    "max": (max, 1, None),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "log": (_log, 1, 2),
    "exp": (math.exp, 1, 1),
}


def evaluate(expression: str) -> Number:
    """The value of `expression`; raises ArithmeticRefused with a reason the model can act on."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ArithmeticRefused(
            f"expression is {len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS}"
        )
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ArithmeticRefused(f"not an arithmetic expression: {e}") from None
    try:
        return _checked(_eval(tree.body))
    except ZeroDivisionError:
        raise ArithmeticRefused("division by zero") from None
    except OverflowError:
        raise ArithmeticRefused("the result is too large") from None
    except RecursionError:
        raise ArithmeticRefused("the expression is nested too deeply") from None
    except TypeError as e:  # e.g. round(2.5, 1.5)
        raise ArithmeticRefused(str(e)) from None


def _eval(node: ast.expr) -> Number:
    match node:
        case ast.Constant(value=value):
            # bool is an int subclass, and complex numbers parse too: neither is arithmetic here.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ArithmeticRefused(f"{value!r} is not a number")
            return _checked(value)
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            a, b = _eval(left), _eval(right)
            if isinstance(op, ast.Pow):
                _check_power(a, b)
            return _checked(_BINARY[type(op)](a, b))
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            return _UNARY[type(op)](_eval(operand))
        case ast.Name(id=name) if name in _CONSTANTS:
            return _CONSTANTS[name]
        case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
            function, fewest, most = _FUNCTIONS[name]
            if len(args) < fewest or (most is not None and len(args) > most):
                expected = str(fewest) if fewest == most else f"{fewest} or more"
                if most is not None and most != fewest:
                    expected = f"{fewest} to {most}"
                raise ArithmeticRefused(f"{name}() takes {expected} arguments, not {len(args)}")
            values = [_eval(a) for a in args]
            try:
                return _checked(function(*values))
            except ValueError as e:
                if isinstance(e, ArithmeticRefused):
                    raise
                raise ArithmeticRefused(f"{name}(): {e}") from None  # sqrt(-1), log(0)
    raise ArithmeticRefused(f"{_describe(node)} is not allowed; {_ALLOWED}")


_ALLOWED = "use numbers, + - * / // % **, parentheses, pi, e and " + ", ".join(
    f"{name}()" for name in _FUNCTIONS
)


def _check_power(base: Number, exponent: Number) -> None:
    # Estimate before computing: the size of base**exponent is what could hang the thread.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and exponent * math.log2(abs(base)) > MAX_INT_BITS
    ):
        raise ArithmeticRefused(
            f"{_short(base)} ** {_short(exponent)} is too large "
            f"(results are limited to {MAX_INT_BITS} bits)"
        )


def _checked(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ArithmeticRefused(f"the result is too large (limit {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ArithmeticRefused("the result is not a finite number")
    if isinstance(value, complex):  # (-8) ** 0.5
        raise ArithmeticRefused("the result is a complex number")
    return value


def _short(n: int) -> str:
    digits = n.bit_length() * 0.30103
    return str(n) if digits < 20 else f"(a {int(digits) + 1}-digit number)"


def _describe(node: ast.expr) -> str:
    match node:
        case ast.Name(id=name):
            return f"the name {name!r}"
        case ast.Attribute(attr=attr):
            return f"attribute access (.{attr})"
        case ast.Call(func=ast.Name(id=name)) if name in _FUNCTIONS:
            return f"calling {name}() with keyword or starred arguments"
        case ast.Call():
            return "calling that"
    return f"{type(node).__name__} syntax"
