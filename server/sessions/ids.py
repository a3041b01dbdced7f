"""Identifiers: validation of caller-chosen ids and generation of new ones."""

from __future__ import annotations

import re
import uuid

from server.sessions.errors import InvalidArgument

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ID_RULE = "1-128 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"


def check_id(field: str, value: str) -> str:
    """Returns `value` if it is a well-formed id, else raises InvalidArgument naming `field`."""
    if not value:
        raise InvalidArgument(field, "is required", reason="FIELD_REQUIRED")
    if ID_PATTERN.fullmatch(value) is None:
        raise InvalidArgument(
            field, f"{value[:64]!r} is not a valid id: use {ID_RULE}", reason="ID_MALFORMED"
        )
    return value


def new_session_id() -> str:
    return uuid.uuid4().hex


def new_session_uid() -> str:
    """A session life's uid: 32 hex digits, never reused."""
    return uuid.uuid4().hex


def new_turn_id() -> str:
    return "t" + uuid.uuid4().hex[:15]


def message_id(seq: int) -> str:
    return str(seq)


def parse_message_id(field: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise InvalidArgument(
            field, f"{value[:64]!r} is not a message id of this session", reason="ID_MALFORMED"
        )
    return int(value)
