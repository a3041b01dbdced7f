"""docs/errors.md stays true to the code: every reason the server can raise is listed,
every listed reason exists, no reason repeats a status code, every RPC has a section."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grpc

from chatd.v1 import chat_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = (ROOT / "docs" / "errors.md").read_text()
ERRORS_MODULE = ROOT / "server" / "sessions" / "errors.py"
CODE_NAMES = {code.name for code in grpc.StatusCode}
# Constructors whose positional arguments end with a reason: ReplyError(code, message, reason).
_POSITIONAL_REASON = {"ReplyError": 2}


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return call.func.id if isinstance(call.func, ast.Name) else None


def _error_classes() -> dict[str, str | None]:
    """ChatdError subclasses and their class default `reason` (None: the caller names it)."""
    classes: dict[str, str | None] = {}
    for node in ast.parse(ERRORS_MODULE.read_text()).body:
        bases = (
            {b.id for b in node.bases if isinstance(b, ast.Name)}
            if isinstance(node, ast.ClassDef)
            else set()
        )
        if isinstance(node, ast.ClassDef) and (node.name == "ChatdError" or bases & set(classes)):
            default = None
            for item in node.body:
                if (
                    isinstance(item, ast.Assign)
                    and [t.id for t in item.targets if isinstance(t, ast.Name)] == ["reason"]
                    and isinstance(item.value, ast.Constant)
                    and isinstance(item.value.value, str)
                ):
                    default = item.value.value
            classes[node.name] = default
    return classes


def _raised_reasons() -> dict[str, list[str]]:
    """Every reason literal in server/ (`reason="..."`, and ReplyError's third argument),
    plus each error class's default, with where it comes from."""
    found: dict[str, list[str]] = {}
    for name, default in _error_classes().items():
        if default is not None:
            found.setdefault(default, []).append(f"errors.py:{name}")
    for path in sorted((ROOT / "server").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            for keyword in node.keywords:
                value = keyword.value
                if keyword.arg == "reason" and isinstance(value, ast.Constant):
                    found.setdefault(str(value.value), []).append(where)
            index = _POSITIONAL_REASON.get(_called_name(node) or "")
            if index is not None and len(node.args) > index:
                argument = node.args[index]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    found.setdefault(argument.value, []).append(where)
    return found


def _catalogued_reasons() -> set[str]:
    """The reasons of the catalogue's tables: rows `| `CODE` | `REASON` | when |`."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([A-Z0-9_]+)` \|", CATALOGUE, re.MULTILINE)
    assert rows, "no table rows found in docs/errors.md"
    assert {code for code, _ in rows} <= CODE_NAMES
    return {reason for _, reason in rows}


def test_every_reason_the_server_raises_is_catalogued() -> None:
    missing = {r: where for r, where in _raised_reasons().items() if r not in _catalogued_reasons()}
    assert missing == {}


def test_every_catalogued_reason_exists_in_the_code() -> None:
    assert _catalogued_reasons() - set(_raised_reasons()) == set()


def test_no_reason_repeats_a_status_code() -> None:
    raised = {r: where for r, where in _raised_reasons().items() if r in CODE_NAMES}
    assert raised == {}
    assert _catalogued_reasons() & CODE_NAMES == set()


def test_errors_of_shared_codes_are_raised_with_a_reason() -> None:
    """A class without a default of its own (its code has many causes) is never raised
    without `reason`, so no error falls back to a generic reason."""
    classes = _error_classes()
    inherit = {name for name, default in classes.items() if default is None}
    bare = []
    for path in sorted((ROOT / "server").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and _called_name(node) in inherit - {"ChatdError", "ReplyFailed"}
                and not any(k.arg == "reason" for k in node.keywords)
            ):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bare == []


def test_every_rpc_of_the_service_has_a_section() -> None:
    sections = set(re.findall(r"^### `(\w+)`$", CATALOGUE, re.MULTILINE))
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["ChatService"].methods}
    assert methods - sections == set()
    assert sections - methods == set()


def test_the_readme_links_the_catalogue() -> None:
    assert "(docs/errors.md)" in (ROOT / "README.md").read_text()
