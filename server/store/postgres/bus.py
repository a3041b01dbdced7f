"""PostgresBus: the ReplyBus of replicas sharing a PostgreSQL database, over LISTEN/NOTIFY.

Each bus holds one connection of its own, outside the store's pool (whose connections
are reset for reuse and must not keep a LISTEN). It both listens and publishes on it:
a publish is one `SELECT pg_notify($1, $2)` round trip in its own implicit transaction,
so a replica needs one extra connection rather than two, and a publish neither waits
for the pool nor opens a connection. Publishes take turns on the connection (one query
at a time), which keeps the publish order of one replica; notifications arrive on it
between and during queries alike.

The channel is derived from the schema, so deployments in different schemas of one
database never hear each other. When the connection is lost the bus reconnects with
capped, jittered exponential backoff and listens again; messages sent in the gap are
lost to this replica (delivery is at most once, and receivers also poll the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Callable

import structlog

from server.sessions.errors import Unavailable
from server.sessions.model import JSONObject
from server.store.bus import Listener, decode, deliver, encode
from server.store.postgres.driver import ListeningConnection, connect, translated
from server.store.postgres.pool import check_schema

log = structlog.get_logger("chatd.bus")

_PUBLISH = "SELECT pg_notify($1, $2)"
# Seconds close() waits for the server to end the session before dropping the socket.
_CLOSE_TIMEOUT = 1.0
# How the bus's connection shows in pg_stat_activity.
APPLICATION_NAME = "chatd-bus"


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the chatd tables in `schema`: 'chatd_bus_' and 32 hex
    digits of the name's SHA-256, a lowercase identifier well within 63 bytes."""
    return "chatd_bus_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


class PostgresBus:
    """ReplyBus on PostgreSQL LISTEN/NOTIFY; every replica on the same schema hears every
    message, its own included.

    `schema` is the one the store's tables live in (None: the connection's
    current_schema(), as the store resolves it). The constructor only checks arguments
    (ValueError for a malformed schema name); start() connects. Times are seconds:
    `connect_timeout` per connection attempt, `operation_timeout` per publish, LISTEN
    or probe, `probe_interval` between the probes (SELECT 1) that find a connection
    lost silently, and reconnect delays that double from `reconnect_delay` up to
    `reconnect_delay_max` (each jittered down by up to half). `on_reconnect` runs on
    the event loop each time the bus listens again after a loss: messages of the gap
    were lost to this replica, so it is the moment to poll.
    """

    def __init__(
        self,
        dsn: str,
        schema: str | None,
        *,
        connect_timeout: float = 10.0,
        operation_timeout: float = 5.0,
        probe_interval: float = 30.0,
        reconnect_delay: float = 0.1,
        reconnect_delay_max: float = 5.0,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        if not 0 < reconnect_delay <= reconnect_delay_max:
            raise ValueError(
                "need 0 < reconnect_delay <= reconnect_delay_max"
                f" ({reconnect_delay}, {reconnect_delay_max})"
            )
        if min(connect_timeout, operation_timeout, probe_interval) <= 0:
            raise ValueError("timeouts and the probe interval must be positive")
        self._dsn = dsn
        self._channel = None if schema is None else channel_for(check_schema(schema))
        self._connect_timeout = connect_timeout
        self._operation_timeout = operation_timeout
        self._probe_interval = probe_interval
        self._reconnect_delay = reconnect_delay
        self._reconnect_delay_max = reconnect_delay_max
        self._on_reconnect = on_reconnect
        self._listeners: tuple[Listener, ...] = ()
        self._conn: ListeningConnection | None = None
        # One query at a time on the connection: publishes and probes.
        self._turn = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def channel(self) -> str | None:
        """The NOTIFY channel; None until start() when the schema is the default one."""
        return self._channel

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the listening connection; None while disconnected."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    async def start(self) -> None:
        """Connects and listens; delivery runs until close(). Once started, it does nothing.

        Raises Unavailable if PostgreSQL cannot be reached (the bus does not retry a
        first connection), ValueError if the URL is malformed, RuntimeError after close().
        """
        if self._closed:
            raise RuntimeError("the bus is closed")
        if self._task is not None:
            return
        conn, lost = await self._connect()
        if self._closed:  # closed while connecting
            conn.terminate()
            self._conn = None
            raise RuntimeError("the bus is closed")
        self._task = asyncio.create_task(self._supervise(conn, lost), name="chatd-bus")
        log.info("bus listening", channel=self._channel)

    async def publish(self, message: JSONObject) -> None:
        """Sends `message` to every replica listening on the channel, this one included.

        Raises TypeError if it is not a JSON object, ValueError if it encodes to more
        than 4000 bytes, Unavailable while the bus is disconnected or if the connection
        fails during the publish (the message may or may not have gone out; the bus then
        reconnects), RuntimeError before start() or after close().
        """
        payload = encode(message)
        if self._closed:
            raise RuntimeError("the bus is closed")
        if self._task is None:
            raise RuntimeError("the bus is not started")
        async with self._turn:
            conn = self._conn
            if conn is None or conn.is_closed():
                raise Unavailable(
                    "PostgreSQL is unavailable: the bus is reconnecting", reason="BUS_RECONNECTING"
                )
            try:
                with translated():
                    async with asyncio.timeout(self._operation_timeout):
                        await conn.execute(_PUBLISH, self._channel, payload)
            except Unavailable:
                conn.terminate()  # the supervisor sees it and reconnects
                raise

    def subscribe(self, listener: Listener) -> None:
        """Adds `listener`; it hears messages that arrive from now on, on the event loop."""
        self._listeners = (*self._listeners, listener)

    async def close(self) -> None:
        """Stops delivery and closes the connection; prompt and idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await conn.close()
            except Exception:  # already gone, or the server is slow to answer
                conn.terminate()

    # ------------------------------------------------------------------ connection

    async def _connect(self) -> tuple[ListeningConnection, asyncio.Event]:
        """A new connection listening on the channel, and the event its loss sets."""
        conn = await connect(
            self._dsn,
            connect_timeout=self._connect_timeout,
            server_settings={"application_name": APPLICATION_NAME},
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            with translated():
                async with asyncio.timeout(self._operation_timeout):
                    if self._channel is None:
                        schema = await conn.fetchval("SELECT current_schema()")
                        if schema is None:
                            raise RuntimeError("PostgreSQL: no schema on the search_path")
                        self._channel = channel_for(schema)
                    await conn.add_listener(self._channel, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn, lost

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        # asyncpg calls this through loop.call_soon, one call per notification, in order.
        if self._closed:
            return
        message = decode(payload)
        if message is not None:
            deliver(self._listeners, message)

    async def _supervise(self, conn: ListeningConnection, lost: asyncio.Event) -> None:
        """Watches the connection and replaces it whenever it is lost, until cancelled.

        Also ends on its own once the bus is closed, should a cancellation be swallowed
        on the way (some library code does, if it lands as an awaited result is ready).
        """
        while True:
            await self._watch(conn, lost)
            self._conn = None
            conn.terminate()
            if self._closed:
                return
            log.warning("bus connection lost; reconnecting", channel=self._channel)
            replaced = await self._reconnect()
            if replaced is None:
                return
            conn, lost = replaced
            if self._on_reconnect is not None:
                try:
                    self._on_reconnect()
                except Exception:
                    log.exception("bus on_reconnect failed")

    async def _watch(self, conn: ListeningConnection, lost: asyncio.Event) -> None:
        """Returns once the connection is closed, or a probe finds it unresponsive."""
        while True:
            # Not asyncio.wait_for: before Python 3.12 it swallows a cancellation that
            # arrives once the event is set, and close() would then wait for a reconnect.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._probe_interval):
                    await lost.wait()
            if self._closed or lost.is_set() or not await self._probe(conn):
                return

    async def _probe(self, conn: ListeningConnection) -> bool:
        async with self._turn:
            try:
                async with asyncio.timeout(self._operation_timeout):
                    await conn.fetchval("SELECT 1")
            except Exception as exc:  # any failure: replace the connection
                log.warning("bus probe failed", error=type(exc).__name__)
                return False
        return True

    async def _reconnect(self) -> tuple[ListeningConnection, asyncio.Event] | None:
        """A new listening connection, after as many attempts as it takes; None if the
        bus closes first."""
        delay = self._reconnect_delay
        attempt = 0
        while not self._closed:
            attempt += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                conn, lost = await self._connect()
            except Exception as exc:
                reason = str(exc) if isinstance(exc, Unavailable) else type(exc).__name__
                log.warning("bus reconnect failed", attempt=attempt, error=reason)
                delay = min(delay * 2, self._reconnect_delay_max)
                continue
            if self._closed:
                conn.terminate()
                self._conn = None
                return None
            log.info("bus reconnected", channel=self._channel, attempts=attempt)
            return conn, lost
        return None
