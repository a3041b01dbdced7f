"""Opaque page tokens: a cursor bound to the query it came from."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from server.sessions.errors import InvalidArgument
from server.sessions.ports import SessionCursor

MAX_PAGE_SIZE = 1000


def page_size(value: int, default: int, field: str = "page_size") -> int:
    """AIP-158: 0 means the default, negative is an error, above the maximum is clamped."""
    if value < 0:
        raise InvalidArgument(field, f"must not be negative (got {value})")
    if value == 0:
        return default
    return min(value, MAX_PAGE_SIZE)


def _fingerprint(query_key: str) -> str:
    return hashlib.blake2s(query_key.encode(), digest_size=6).hexdigest()


def encode_token(query_key: str, position: list[object]) -> str:
    raw = json.dumps({"q": _fingerprint(query_key), "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, query_key: str, field: str = "page_token") -> list[object]:
    """The position stored in `token`; InvalidArgument if it is malformed or from another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        position = data["p"]
        fingerprint = data["q"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(field, "is not a page token returned by this server") from exc
    if fingerprint != _fingerprint(query_key) or not isinstance(position, list):
        raise InvalidArgument(
            field, "belongs to a different query: repeat the query's other fields unchanged"
        )
    return position


def session_cursor(position: list[object], field: str = "page_token") -> SessionCursor:
    match position:
        case [int() | float() as time, str() as session_id]:
            return SessionCursor(float(time), session_id)
    raise InvalidArgument(field, "is not a page token returned by this server")


def seq_cursor(position: list[object], field: str = "page_token") -> int:
    match position:
        case [int() as seq]:
            return seq
    raise InvalidArgument(field, "is not a page token returned by this server")
