"""Opaque page tokens: a cursor bound to the query it came from."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from server.sessions.errors import InvalidArgument
from server.sessions.ids import ID_PATTERN
from server.sessions.ports import SessionCursor

MAX_PAGE_SIZE = 1000


def page_size(value: int, default: int, field: str = "page_size") -> int:
    """AIP-158: 0 means the default, negative is an error, above the maximum is clamped."""
    if value < 0:
        raise InvalidArgument(
            field, f"must not be negative (got {value})", reason="PAGE_SIZE_NEGATIVE"
        )
    if value == 0:
        return default
    return min(value, MAX_PAGE_SIZE)


def _fingerprint(query_key: str) -> str:
    return hashlib.blake2s(query_key.encode(), digest_size=6).hexdigest()


def encode_token(query_key: str, position: list[object]) -> str:
    raw = json.dumps({"q": _fingerprint(query_key), "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# Tokens this server writes are well under this; anything longer was not written by it.
MAX_TOKEN_CHARS = 1024
# Positions are Unix times (until the year 5000) and message or tool offsets.
_LATEST_TIME = 1e11
_LARGEST_OFFSET = 1 << 62
_NOT_OURS = "is not a page token returned by this server"


def _no_constants(text: str) -> object:
    raise ValueError(f"{text} is not JSON")


def decode_token(token: str, query_key: str, field: str = "page_token") -> list[object]:
    """The position stored in `token`; InvalidArgument if it is malformed or from another query.

    A token comes back from the caller, so it is parsed as hostile input: bounded length,
    no NaN or Infinity, no nesting deeper than JSON's own recursion can take."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidArgument(
            field,
            f"{_NOT_OURS} (longer than {MAX_TOKEN_CHARS} characters)",
            reason="PAGE_TOKEN_INVALID",
        )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw, parse_constant=_no_constants)
        position = data["p"]
        fingerprint = data["q"]
    except (binascii.Error, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise InvalidArgument(field, _NOT_OURS, reason="PAGE_TOKEN_INVALID") from exc
    if fingerprint != _fingerprint(query_key) or not isinstance(position, list):
        raise InvalidArgument(
            field,
            "belongs to a different query: repeat the query's other fields unchanged",
            reason="PAGE_TOKEN_MISMATCH",
        )
    return position


def session_cursor(position: list[object], field: str = "page_token") -> SessionCursor:
    match position:
        case [int() | float() as time, str() as session_id] if (
            not isinstance(time, bool)
            and 0 <= time <= _LATEST_TIME
            and ID_PATTERN.fullmatch(session_id) is not None
        ):
            return SessionCursor(float(time), session_id)
    raise InvalidArgument(field, _NOT_OURS, reason="PAGE_TOKEN_INVALID")


def seq_cursor(position: list[object], field: str = "page_token") -> int:
    """A non-negative offset or message sequence number."""
    match position:
        case [int() as seq] if not isinstance(seq, bool) and 0 <= seq <= _LARGEST_OFFSET:
            return seq
    raise InvalidArgument(field, _NOT_OURS, reason="PAGE_TOKEN_INVALID")
