"""ReplyBus: LocalBus in one process, PostgresBus between replicas over LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from server.sessions.errors import Unavailable
from server.sessions.model import JSONObject
from server.store import LocalBus, open_bus
from server.store.bus import MAX_MESSAGE_BYTES

from .conftest import fresh_schema, postgres_dsn

# Generous: a bound on a wait that should end at once, never a performance assertion.
WAIT = 60.0


class Inbox:
    """A listener that keeps what it hears (what matches) and lets a test wait for a count."""

    def __init__(self, match: dict[str, Any] | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._match = match or {}

    def __call__(self, message: JSONObject) -> None:
        """Keeps `message` if it holds every item of `match`."""
        if all(message.get(key) == value for key, value in self._match.items()):
            self.messages.append(dict(message))
            self._changed.set()

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


def failing(message: JSONObject) -> None:
    raise RuntimeError(f"listener broke on {message}")


def exactly(size: int) -> dict[str, str]:
    """A message that encodes to `size` bytes: {"x":"aaa…"}."""
    return {"x": "a" * (size - len('{"x":""}'))}


# ----------------------------------------------------------------------------- LocalBus


async def test_local_bus_delivers_after_publish_returns_in_publish_order() -> None:
    bus = LocalBus()
    inbox = Inbox()
    bus.subscribe(inbox)
    await bus.start()
    await bus.publish({"n": 1})
    await bus.publish({"n": 2})
    assert inbox.messages == []  # publish only queued them
    assert await inbox.wait_for(2) == [{"n": 1}, {"n": 2}]
    await bus.close()


async def test_local_bus_calls_listeners_in_subscription_order_past_a_failing_one() -> None:
    bus = LocalBus()
    heard: list[tuple[str, object]] = []
    inbox = Inbox()
    bus.subscribe(lambda m: heard.append(("first", m["n"])))
    bus.subscribe(failing)
    bus.subscribe(lambda m: heard.append(("third", m["n"])))
    bus.subscribe(inbox)
    await bus.start()
    await bus.publish({"n": 1})
    await bus.publish({"n": 2})
    await inbox.wait_for(2)
    assert heard == [("first", 1), ("third", 1), ("first", 2), ("third", 2)]
    await bus.close()


async def test_local_bus_delivers_a_copy_as_json_would() -> None:
    bus = LocalBus()
    inbox = Inbox()
    bus.subscribe(inbox)
    await bus.start()
    message: dict[str, object] = {"ids": ("a", "b")}
    await bus.publish(message)
    message["ids"] = "changed"
    assert await inbox.wait_for(1) == [{"ids": ["a", "b"]}]
    await bus.close()


async def test_local_bus_refuses_messages_that_are_too_large_or_not_json() -> None:
    bus = LocalBus()
    inbox = Inbox()
    bus.subscribe(inbox)
    await bus.start()
    with pytest.raises(ValueError, match="at most 4000 bytes"):
        await bus.publish(exactly(MAX_MESSAGE_BYTES + 1))
    with pytest.raises(TypeError):
        await bus.publish({"x": object()})
    await bus.publish(exactly(MAX_MESSAGE_BYTES))
    assert await inbox.wait_for(1) == [exactly(MAX_MESSAGE_BYTES)]
    await bus.close()


async def test_local_bus_publishes_only_between_start_and_close_and_closes_twice() -> None:
    bus = LocalBus()
    inbox = Inbox()
    bus.subscribe(inbox)
    with pytest.raises(RuntimeError, match="not started"):
        await bus.publish({"n": 0})
    await bus.start()
    await bus.publish({"n": 1})
    await bus.close()  # before the queued delivery runs: it is dropped
    await bus.close()
    with pytest.raises(RuntimeError, match="closed"):
        await bus.publish({"n": 2})
    with pytest.raises(RuntimeError, match="closed"):
        await bus.start()
    await asyncio.sleep(0)  # the queued delivery's turn on the loop
    assert inbox.messages == []


# ----------------------------------------------------------------------------- open_bus


@pytest.mark.parametrize("url", ["memory://", "sqlite:///var/chatd.db", "sqlite:////abs.db"])
def test_open_bus_gives_a_local_bus_for_a_store_of_one_process(url: str) -> None:
    assert isinstance(open_bus(url, None), LocalBus)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_open_bus_gives_a_postgres_bus_without_connecting(scheme: str) -> None:
    from server.store.postgres.bus import PostgresBus, channel_for

    bus = open_bus(f"{scheme}://chatd:secret@127.0.0.1:1/chatd", "tenant_a")
    assert isinstance(bus, PostgresBus)
    assert bus.channel == channel_for("tenant_a")
    assert bus.backend_pid is None


@pytest.mark.parametrize(
    ("url", "message"),
    [("mysql://chatd:secret@db/chatd", "'mysql'"), ("chatd.db", "''"), ("memory://x", "memory")],
)
def test_open_bus_refuses_what_open_store_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        open_bus(url, None)
    assert "secret" not in str(raised.value)


def test_open_bus_refuses_a_malformed_schema() -> None:
    with pytest.raises(ValueError, match="schema"):
        open_bus("postgresql://127.0.0.1/chatd", 'x"; DROP')


def test_channels_are_short_identifiers_that_differ_by_schema() -> None:
    from server.store.postgres.bus import channel_for

    longest = "s" * 63
    channels = {channel_for(name) for name in ("public", "tenant_a", "tenant_b", longest)}
    assert len(channels) == 4
    for channel in channels:
        assert channel.isidentifier() and channel == channel.lower()
        assert len(channel.encode()) <= 63


# ----------------------------------------------------------------------------- PostgresBus


@asynccontextmanager
async def postgres_bus(
    dsn: str, schema: str | None, **options: Any
) -> AsyncIterator[tuple[Any, Inbox]]:
    """A started PostgresBus with an Inbox subscribed; closed on exit. Made by open_bus
    unless `options` go beyond what it takes."""
    from server.store.postgres.bus import PostgresBus

    if set(options) <= {"on_reconnect"}:
        bus = open_bus(dsn, schema, **options)
        assert isinstance(bus, PostgresBus)
    else:
        bus = PostgresBus(dsn, schema, **options)
    inbox = Inbox()
    bus.subscribe(inbox)
    await bus.start()
    try:
        yield bus, inbox
    finally:
        await bus.close()


async def terminate_backend(dsn: str, pid: int) -> None:
    """Ends the server process `pid` and waits until it is gone."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1, $2)", pid, 30_000)
    finally:
        await conn.close()


async def test_buses_on_one_schema_hear_each_other_and_themselves() -> None:
    dsn = postgres_dsn()
    async with (
        fresh_schema(dsn) as schema,
        postgres_bus(dsn, schema) as (a, heard_by_a),
        postgres_bus(dsn, schema) as (b, heard_by_b),
    ):
        await a.publish({"from": "a", "n": 1})
        await b.publish({"from": "b", "n": 1})
        await a.publish({"from": "a", "n": 2})
        expected = [{"from": "a", "n": 1}, {"from": "b", "n": 1}, {"from": "a", "n": 2}]
        assert await heard_by_a.wait_for(3) == expected
        assert await heard_by_b.wait_for(3) == expected


async def test_a_bus_on_another_schema_hears_nothing() -> None:
    dsn = postgres_dsn()
    async with (
        fresh_schema(dsn) as schema,
        fresh_schema(dsn) as other_schema,
        postgres_bus(dsn, schema) as (bus, heard),
        postgres_bus(dsn, other_schema) as (isolated, heard_isolated),
    ):
        assert bus.channel != isolated.channel
        await bus.publish({"n": "for the first schema"})
        # Sent after it: on a shared channel, the first would arrive before this one.
        await isolated.publish({"n": "sentinel"})
        await bus.publish({"n": "sentinel"})
        assert await heard_isolated.wait_for(1) == [{"n": "sentinel"}]
        assert await heard.wait_for(2) == [{"n": "for the first schema"}, {"n": "sentinel"}]


async def test_the_default_schema_is_the_connections_current_schema() -> None:
    import asyncpg

    from server.store.postgres.bus import channel_for

    dsn = postgres_dsn()
    conn = await asyncpg.connect(dsn)
    try:
        current = await conn.fetchval("SELECT current_schema()")
    finally:
        await conn.close()
    # The default schema is shared with whatever else uses this server: keep only ours.
    mine = {"token": secrets.token_hex(8)}
    heard_by_default, heard_by_named = Inbox(mine), Inbox(mine)
    async with (
        postgres_bus(dsn, None) as (default, _),
        postgres_bus(dsn, current) as (named, _),
    ):
        default.subscribe(heard_by_default)
        named.subscribe(heard_by_named)
        assert default.channel == channel_for(current)
        await named.publish(mine)
        assert await heard_by_default.wait_for(1) == [mine]
        assert await heard_by_named.wait_for(1) == [mine]


async def test_a_postgres_bus_refuses_an_oversize_message_and_sends_the_largest() -> None:
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema, postgres_bus(dsn, schema) as (bus, heard):
        with pytest.raises(ValueError, match="at most 4000 bytes"):
            await bus.publish(exactly(MAX_MESSAGE_BYTES + 1))
        await bus.publish(exactly(MAX_MESSAGE_BYTES))
        assert await heard.wait_for(1) == [exactly(MAX_MESSAGE_BYTES)]


async def test_a_failing_listener_does_not_stop_delivery() -> None:
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema, postgres_bus(dsn, schema) as (bus, heard):
        bus.subscribe(failing)
        later = Inbox()
        bus.subscribe(later)
        await bus.publish({"n": 1})
        await bus.publish({"n": 2})
        assert await later.wait_for(2) == [{"n": 1}, {"n": 2}]
        assert heard.messages == [{"n": 1}, {"n": 2}]


async def test_a_foreign_notification_that_is_not_a_json_object_is_skipped() -> None:
    import asyncpg

    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema, postgres_bus(dsn, schema) as (bus, heard):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_notify($1, 'not json')", bus.channel)
            await conn.execute("SELECT pg_notify($1, '[1]')", bus.channel)
        finally:
            await conn.close()
        await bus.publish({"n": 1})
        assert await heard.wait_for(1) == [{"n": 1}]


async def test_after_its_connection_is_terminated_the_bus_reconnects_and_delivers() -> None:
    dsn = postgres_dsn()
    reconnected = asyncio.Event()
    async with (
        fresh_schema(dsn) as schema,
        postgres_bus(dsn, schema, on_reconnect=reconnected.set) as (bus, heard),
        postgres_bus(dsn, schema) as (other, heard_by_other),
    ):
        await bus.publish({"n": "before"})
        await heard.wait_for(1)
        old_pid = bus.backend_pid
        assert old_pid is not None
        await terminate_backend(dsn, old_pid)
        async with asyncio.timeout(WAIT):
            await reconnected.wait()
        assert bus.backend_pid not in (None, old_pid)
        await other.publish({"n": "from the other"})
        await bus.publish({"n": "after"})
        assert await heard.wait_for(3) == [
            {"n": "before"},
            {"n": "from the other"},
            {"n": "after"},
        ]
        assert await heard_by_other.wait_for(3) == heard.messages


async def test_while_disconnected_publish_is_unavailable_and_close_is_prompt() -> None:
    dsn = postgres_dsn()
    hour = {"reconnect_delay": 3600.0, "reconnect_delay_max": 3600.0}
    async with fresh_schema(dsn) as schema, postgres_bus(dsn, schema, **hour) as (bus, _heard):
        pid = bus.backend_pid
        assert pid is not None
        await terminate_backend(dsn, pid)
        with pytest.raises(Unavailable, match="PostgreSQL is unavailable"):
            await bus.publish({"n": 1})
        # Closes the bus while it waits an hour to reconnect.
        async with asyncio.timeout(WAIT):
            await bus.close()


async def test_close_is_idempotent_and_ends_publishing() -> None:
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema, postgres_bus(dsn, schema) as (bus, _heard):
        await bus.close()
        await bus.close()
        assert bus.backend_pid is None
        with pytest.raises(RuntimeError, match="closed"):
            await bus.publish({"n": 1})
        with pytest.raises(RuntimeError, match="closed"):
            await bus.start()


async def test_a_bus_closed_before_start_and_publish_before_start() -> None:
    from server.store.postgres.bus import PostgresBus

    bus = PostgresBus("postgresql://127.0.0.1:1/chatd", "tenant_a")
    with pytest.raises(RuntimeError, match="not started"):
        await bus.publish({"n": 1})
    await bus.close()
    await bus.close()


async def test_an_unreachable_server_is_unavailable_at_start_without_echoing_secrets() -> None:
    from server.store.postgres.bus import PostgresBus

    bus = PostgresBus("postgresql://chatd:secret@127.0.0.1:1/chatd", "tenant_a")
    with pytest.raises(Unavailable, match="PostgreSQL is unavailable") as raised:
        await bus.start()
    assert "secret" not in str(raised.value)
    await bus.close()


# ----------------------------------------------------------------------------- outages


class Proxy:
    """A TCP relay to the PostgreSQL server whose link a test can cut, freeze or refuse.

    down: every new connection is closed on arrival (a server restarting), and counted.
    freeze(): the bytes of the connections relayed so far stop flowing without either
    side being closed (a silent network failure); new connections flow.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._freezes: list[asyncio.Event] = []
        self.down = False
        self.refused = 0
        self.refusal = asyncio.Event()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def freeze(self) -> None:
        for frozen in self._freezes:
            frozen.set()

    def cut(self) -> None:
        """Drops every relayed connection; new ones are relayed again (unless down)."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.refused += 1
            self.refusal.set()
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        frozen = asyncio.Event()
        self._freezes.append(frozen)
        await asyncio.gather(
            self._pipe(reader, up_writer, frozen),
            self._pipe(up_reader, writer, frozen),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        try:
            while data := await reader.read(65536):
                if frozen.is_set():
                    continue  # swallowed: neither side hears of it
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@asynccontextmanager
async def proxied(dsn: str) -> AsyncIterator[tuple[Proxy, str]]:
    """A Proxy to the server in `dsn`, and the DSN that goes through it."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    user = f"{parts.username}@" if parts.username else ""
    try:
        yield proxy, urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))
    finally:
        await proxy.close()


async def test_while_the_server_refuses_connections_the_bus_retries_until_it_is_back() -> None:
    dsn = postgres_dsn()
    reconnected = asyncio.Event()
    fast = {"reconnect_delay": 0.01, "reconnect_delay_max": 0.05}
    async with (
        fresh_schema(dsn) as schema,
        proxied(dsn) as (proxy, proxied_dsn),
        postgres_bus(proxied_dsn, schema, on_reconnect=reconnected.set, **fast) as (_bus, heard),
        postgres_bus(dsn, schema) as (direct, _),
    ):
        proxy.down = True
        proxy.cut()
        async with asyncio.timeout(WAIT):
            while proxy.refused < 3:
                proxy.refusal.clear()
                await proxy.refusal.wait()
        assert not reconnected.is_set()
        await direct.publish({"n": "lost in the gap"})
        proxy.down = False
        async with asyncio.timeout(WAIT):
            await reconnected.wait()
        await direct.publish({"n": "after"})
        assert await heard.wait_for(1) == [{"n": "after"}]


async def test_a_connection_that_stops_answering_is_found_by_the_probe_and_replaced() -> None:
    dsn = postgres_dsn()
    reconnected = asyncio.Event()
    quick = {"probe_interval": 0.05, "operation_timeout": 0.5, "reconnect_delay": 0.01}
    async with (
        fresh_schema(dsn) as schema,
        proxied(dsn) as (proxy, proxied_dsn),
        postgres_bus(proxied_dsn, schema, on_reconnect=reconnected.set, **quick) as (bus, heard),
    ):
        proxy.freeze()  # no error on either side: only a probe without answer tells
        async with asyncio.timeout(WAIT):
            await reconnected.wait()
        await bus.publish({"n": "after"})
        assert await heard.wait_for(1) == [{"n": "after"}]
