"""Idempotency keys: the caller's request_id plus a fingerprint of the rest of the request."""

from __future__ import annotations

import hashlib
from typing import Any

from server.sessions.errors import InvalidArgument
from server.sessions.idempotency import RequestKey


def request_key(kind: str, request: Any, ignore: tuple[str, ...] = ()) -> RequestKey | None:
    """None without a request_id. The fingerprint covers every other field but those in
    `ignore` (how to run it, not what), so the same id with different content is told
    apart; `kind` lets SendMessage and StreamReply share ids."""
    if not request.request_id:
        return None
    if "\x00" in request.request_id:
        # Stored as text, which PostgreSQL cannot hold with NUL characters.
        raise InvalidArgument(
            "request_id", "must not contain NUL characters", reason="REQUEST_ID_INVALID"
        )
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField("request_id")
    for name in ignore:
        body.ClearField(name)
    digest = hashlib.sha256(kind.encode() + b"\0" + body.SerializeToString(deterministic=True))
    return RequestKey(request.request_id, digest.hexdigest())


class StreamFingerprint:
    """request_key for a client stream: the fingerprint covers every request of the stream
    (each without its request_id), in order, so a retried stream must send the same parts."""

    def __init__(self, kind: str) -> None:
        self._hash = hashlib.sha256(kind.encode() + b"\0")
        self._request_id = ""

    def add(self, request: Any) -> None:
        if not self._request_id:
            self._request_id = request.request_id
        body = type(request)()
        body.CopyFrom(request)
        body.ClearField("request_id")
        data = body.SerializeToString(deterministic=True)
        self._hash.update(len(data).to_bytes(8, "big") + data)

    def key(self) -> RequestKey | None:
        """None when the first request had no request_id."""
        if not self._request_id:
            return None
        return RequestKey(self._request_id, self._hash.hexdigest())
