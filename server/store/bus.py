"""LocalBus: the ReplyBus of a store that lives in one process (memory, SQLite).

Every bus encodes a message as the PostgreSQL bus sends it, so a message too large or
not JSON fails the same way with every store, and listeners receive a decoded copy
rather than the publisher's object (lists where it had tuples, say).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog

from server.sessions.model import JSONObject

log = structlog.get_logger("chatd.bus")

# Bytes of a message encoded as JSON. PostgreSQL's NOTIFY refuses payloads of 8000 bytes
# or more; the margin leaves room for a future envelope.
MAX_MESSAGE_BYTES = 4000

Listener = Callable[[JSONObject], None]


def encode(message: JSONObject) -> str:
    """`message` as compact JSON text.

    Raises TypeError if it is not a mapping or holds something JSON cannot (orjson's
    JSONEncodeError is a TypeError), ValueError if it exceeds MAX_MESSAGE_BYTES.
    """
    if not isinstance(message, Mapping):
        raise TypeError(f"a bus message is a JSON object, not {type(message).__name__}")
    data = orjson.dumps(message if isinstance(message, dict) else dict(message))
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(
            f"a bus message is at most {MAX_MESSAGE_BYTES} bytes of JSON, not {len(data)}"
        )
    return data.decode()


def decode(payload: str) -> dict[str, Any] | None:
    """The message in `payload`, or None (logged) if it is not a JSON object."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict):
        log.warning("bus message ignored: not a JSON object", payload=payload[:200])
        return None
    return message


def deliver(listeners: tuple[Listener, ...], message: JSONObject) -> None:
    """Calls each listener in turn; one that raises is logged and the rest still run."""
    for listener in listeners:
        try:
            listener(message)
        except Exception:
            log.exception("bus listener failed", listener=getattr(listener, "__qualname__", "?"))


class LocalBus:
    """ReplyBus within one process: the only replica is this one.

    `publish` queues the message on the event loop (loop.call_soon) and returns; the
    listeners run later, in publish order and in the order they subscribed, with a
    decoded copy of the message. Messages still queued when the bus closes are dropped.
    publish raises RuntimeError before start() or after close().
    """

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()
        self._started = False
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("the bus is closed")
        self._started = True

    async def publish(self, message: JSONObject) -> None:
        """Queues `message` for every listener; TypeError or ValueError as encode()."""
        if not self._started or self._closed:
            raise RuntimeError("the bus is closed" if self._closed else "the bus is not started")
        payload = encode(message)
        asyncio.get_running_loop().call_soon(self._deliver, payload)

    def subscribe(self, listener: Listener) -> None:
        """Adds `listener`; it hears messages published from now on."""
        self._listeners = (*self._listeners, listener)

    def _deliver(self, payload: str) -> None:
        if self._closed:
            return
        message = decode(payload)
        if message is not None:
            deliver(self._listeners, message)

    async def close(self) -> None:
        """Stops delivery; idempotent."""
        self._closed = True
