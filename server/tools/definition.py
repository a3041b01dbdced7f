"""The Tool value and the @tool decorator that makes one from a typed function."""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

from server.sessions.model import Blob, FileData, FunctionDeclaration
from server.tools.docstrings import parse_docstring
from server.tools.schema import check_schema, validate
from server.tools.signature import Converter, derive_parameters

# Gemini's rule for function names.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
# Long enough for a slow HTTP call, short enough that a stuck tool cannot hold a turn for long.
DEFAULT_TIMEOUT = 30.0


class ToolError(Exception):
    """Raised by a tool for an expected failure (bad input, a missing record): the model gets
    just the message, and no traceback is logged."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returns when it has media for the model beside its JSON value: the
    value goes in the function response as {"result": value}, each of `parts` (an image's
    bytes as a Blob, a file as FileData) in the function response's parts."""

    value: Any = None
    parts: tuple[Blob | FileData, ...] = ()


# eq=False: tools compare by identity, which is also how loading tells a tool re-exported by
# a second module (the same object, fine) from a second tool with the same name (refused).
@dataclass(frozen=True, slots=True, eq=False)
class Tool:
    """A server tool: what the model is told (name, description, parameters) and what runs."""

    name: str
    description: str
    # A JSON schema of type object; each property is a keyword argument of `function`.
    parameters: Mapping[str, Any]
    function: Callable[..., Any]
    timeout: float = DEFAULT_TIMEOUT
    # Per-argument conversions from checked JSON to the annotated Python type (Enum members,
    # tuples, dataclasses); derived tools use pydantic's adapter for the annotation. A
    # conversion may raise ArgumentError.
    converters: Mapping[str, Converter] = field(default_factory=dict)
    # Optional parameters without a default, passed None when the model leaves them out.
    none_when_absent: frozenset[str] = frozenset()
    # Where the tool was defined ("package.module.function"), for error messages.
    source: str = ""

    def __post_init__(self) -> None:
        source = self.source or _where(self.function)
        object.__setattr__(self, "source", source)
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(
                f"tool {source}: name {self.name!r} must match {NAME_PATTERN.pattern} "
                "(a letter or underscore, then up to 63 letters, digits, '_', '.' or '-')"
            )
        if not callable(self.function):
            raise TypeError(f"tool {self.name!r}: function {self.function!r} is not callable")
        if isinstance(self.timeout, bool) or not (
            isinstance(self.timeout, int | float)
            and math.isfinite(self.timeout)
            and self.timeout > 0
        ):
            raise ValueError(f"tool {self.name!r}: timeout must be a positive number of seconds")
        try:
            check_schema(self.parameters)
        except ValueError as e:
            raise ValueError(f"tool {self.name!r} ({source}): {e}") from None
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r} ({source}): parameters must be of type object")
        # A private copy: a caller mutating its dict later cannot change what the model sees.
        object.__setattr__(self, "parameters", copy.deepcopy(dict(self.parameters)))
        _check_callable_with(self)

    @property
    def declaration(self) -> FunctionDeclaration:
        return FunctionDeclaration(self.name, self.description, copy.deepcopy(self.parameters))

    def arguments(self, args: Mapping[str, object]) -> dict[str, Any]:
        """The keyword arguments for `function`: validated, converted, absent optionals None.

        Raises ArgumentError naming each offending argument.
        """
        required = set(self.parameters.get("required", ()))
        properties: Mapping[str, Any] = self.parameters.get("properties", {})
        # Models often send null for an optional argument they mean to leave out.
        given = {
            k: v
            for k, v in args.items()
            if not (v is None and k not in required and not _accepts_null(properties.get(k)))
        }
        kwargs: dict[str, Any] = validate(self.parameters, given)
        for name, convert in self.converters.items():
            if name in kwargs:
                kwargs[name] = convert(kwargs[name])
        for name in self.none_when_absent:
            kwargs.setdefault(name, None)
        return kwargs


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Makes a Tool of a function (async def or plain def; plain ones run in a thread).

    Without `parameters` the schema comes from the annotations, and the descriptions from the
    docstring (its first paragraph, and a Google-style "Args:" section). Definitions chatd
    cannot describe to the model are refused here with ValueError, at import time.
    """

    def make(function: Callable[..., Any]) -> Tool:
        where = _where(function)
        if parameters is None:
            derived = derive_parameters(function, where)
            schema, summary = derived.schema, derived.summary
            converters, none_when_absent = derived.converters, derived.none_when_absent
        else:
            schema, converters, none_when_absent = dict(parameters), {}, frozenset[str]()
            summary = parse_docstring(inspect.getdoc(function)).summary
        return Tool(
            name=getattr(function, "__name__", "") if name is None else name,
            description=summary if description is None else description,
            parameters=schema,
            function=function,
            timeout=timeout,
            converters=converters,
            none_when_absent=none_when_absent,
            source=where,
        )

    return make if function is None else make(function)


def _where(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def _accepts_null(schema: object) -> bool:
    if not isinstance(schema, Mapping) or "type" not in schema:
        return True
    kind = schema["type"]
    return (
        kind == "null"
        or (isinstance(kind, list) and "null" in kind)
        or bool(schema.get("nullable"))
    )


def _check_callable_with(t: Tool) -> None:
    """Refuses a schema the function cannot be called with (a hand-written one, mostly)."""
    try:
        signature = inspect.signature(t.function)
    except (TypeError, ValueError):  # some builtins have no signature: trust the schema
        return
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    keyword = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(t.parameters.get("properties", {})) - keyword)
    if unknown and not takes_any:
        raise ValueError(
            f"tool {t.name!r} ({t.source}): schema properties {unknown} are not "
            "keyword parameters of the function"
        )
    given = set(t.parameters.get("required", ())) | t.none_when_absent
    needed = sorted(
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and n not in given
    )
    if needed:
        raise ValueError(
            f"tool {t.name!r} ({t.source}): function parameters {needed} have no "
            "default but are not required by the schema"
        )
