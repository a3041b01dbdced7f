"""MCP servers as a tool source: the operator's JSON file of servers, one supervised
connection per server (a stdio subprocess or a streamable-HTTP URL), and a Tool per server
tool, named "<server>__<tool>", that the registry runs like any Python tool.

The file has the shape other MCP hosts use (Claude Desktop, Gemini CLI, VS Code):

    {"mcpServers": {
        "files":  {"command": "npx", "args": ["-y", "some-server"], "env": {...}, "cwd": "/srv"},
        "search": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "..."}}}}

Per server, optionally: "timeout" (seconds per call, default DEFAULT_TIMEOUT),
"includeTools"/"excludeTools" (tool names, as in Gemini CLI), "disabled" (true skips it),
"type" ("stdio", "http" or "streamable-http"; inferred when absent). `${VAR}` in "args",
"env", "cwd", "url" and "headers" values is replaced by the environment variable VAR; an
unset VAR is a configuration error.

Sources: the MCP Python SDK 2.x client (mcp.Client, mcp.client.stdio.stdio_client,
mcp.client.streamable_http.streamable_http_client) and the MCP specification's CallToolResult
content blocks (text, image, audio, resource_link, resource).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import json
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
import httpx2
import mcp_types
import structlog
from mcp import Client
from mcp.client.session import IncomingMessage, MessageHandlerFnT
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import SubscriptionLost
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from server.redact import redact_url
from server.sessions.model import Blob
from server.tools.definition import DEFAULT_TIMEOUT, NAME_PATTERN, Tool, ToolError, ToolResult
from server.tools.registry import DEFAULT_MAX_RESULT_BYTES, ToolRegistry

# Between the server's name and its tool's: Gemini names allow letters, digits, "_", "." and
# "-"; a double underscore rarely appears in either name, so the split stays readable.
SEPARATOR = "__"
# How long start-up waits for each server to connect and list its tools.
CONNECT_TIMEOUT = 30.0
# Restart delays after a server is lost: the first restart is immediate, then these double
# up to the cap while the server keeps failing without answering a call in between.
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0

_SERVER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEYS = frozenset(
    {
        "type",
        "command",
        "args",
        "env",
        "cwd",
        "url",
        "httpUrl",
        "headers",
        "timeout",
        "includeTools",
        "excludeTools",
        "disabled",
    }
)
_TYPES = {"stdio": "stdio", "http": "http", "streamable-http": "http", "streamableHttp": "http"}
# Keywords of JSON Schema meta-data that say nothing about the arguments.
_DROPPED = frozenset({"$schema", "$id"})
# JSON-RPC error codes after which the connection itself is gone.
_CONNECTION_CLOSED = mcp_types.CONNECTION_CLOSED
# How the SDK resolves a request whose connection, or whose own response stream, is gone:
# CONNECTION_CLOSED with one of its own messages ("Connection closed", "SSE stream ended
# without a response", "SSE stream failed: ..."). A server may answer -32000 itself
# (JSON-RPC 2.0 reserves -32000..-32099 for implementation-defined server errors,
# https://www.jsonrpc.org/specification#error_object): that is its answer, not a loss.
_SDK_CLOSE_MESSAGES = ("Connection closed", "SSE stream ")
# httpx2's SSE reader refusing one event over its size limit (httpx2/_sse.py): that
# response is lost, the connection is not.
_EVENT_TOO_LARGE = "byte limit"


def _connection_gone(e: Exception) -> bool:
    """Whether `e`, raised by a request, means the connection itself is gone: a transport
    error, or the SDK's own CONNECTION_CLOSED (not a server's -32000, not one oversized
    event)."""
    if not isinstance(e, MCPError):
        return True
    return (
        e.code == _CONNECTION_CLOSED
        and e.message.startswith(_SDK_CLOSE_MESSAGES)
        and _EVENT_TOO_LARGE not in e.message
    )


# The streamable-HTTP header naming the session (compared lower-case, as httpx does).
_SESSION_HEADER = "mcp-session-id"


class McpConfigError(ValueError):
    """The MCP servers file cannot be used; the message names the entry and key."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One configured server: a stdio `command` (with `args`, `env`, `cwd`) or a `url`
    (with `headers`); `timeout` is seconds per call."""

    name: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = ""
    url: str = field(default="", repr=False)  # may carry a token in its query
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    include_tools: frozenset[str] | None = None
    exclude_tools: frozenset[str] = frozenset()

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"


def load_config(path: str, environ: Mapping[str, str] | None = None) -> list[ServerConfig]:
    """The enabled servers of the JSON file at `path`, in file order.

    Raises McpConfigError naming the offending server and key: an unreadable
    file, JSON that is not {"mcpServers": {name: {...}}}, an unknown key, a server with both
    or neither of "command" and "url", or a `${VAR}` whose variable is unset.
    """
    env = os.environ if environ is None else environ
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except OSError as e:
        raise McpConfigError(f"cannot read: {e.strerror or e}") from e
    except ValueError as e:
        raise McpConfigError(f"not JSON: {e}") from e
    servers = document.get("mcpServers") if isinstance(document, dict) else None
    if not isinstance(servers, dict):
        raise McpConfigError('expected an object {"mcpServers": {name: server}}')
    configs = []
    for name, entry in servers.items():
        where = f"mcpServers.{name}"
        if not _SERVER_NAME.fullmatch(name):
            raise McpConfigError(
                f"{where}: a server name must be a letter or '_', then letters, digits, "
                "'_' or '-' (it prefixes its tools' names)"
            )
        if not isinstance(entry, dict):
            raise McpConfigError(f"{where}: must be an object")
        config = _server(name, entry, where, env)
        if config is not None:
            configs.append(config)
    return configs


def _server(
    name: str, entry: dict[str, Any], where: str, env: Mapping[str, str]
) -> ServerConfig | None:
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise McpConfigError(f"{where}: unknown keys {unknown} (known: {sorted(_KEYS)})")
    if _get(entry, "disabled", bool, where, False):
        return None
    url = _expand(
        _get(entry, "url", str, where, "") or _get(entry, "httpUrl", str, where, ""),
        env,
        f"{where}.url",
    )
    command = _get(entry, "command", str, where, "")
    kind = _get(entry, "type", str, where, "http" if url else "stdio")
    if kind not in _TYPES:
        raise McpConfigError(
            f"{where}.type: {kind!r} is not supported; use one of {sorted(_TYPES)}"
        )
    if bool(url) == bool(command) or (_TYPES[kind] == "http") != bool(url):
        raise McpConfigError(
            f'{where}: give either "command" (a stdio server) or "url" (streamable HTTP)'
        )
    if url and not url.startswith(("http://", "https://")):
        raise McpConfigError(f"{where}.url: must be an http:// or https:// URL")
    args = _get(entry, "args", list, where, [])
    if not all(isinstance(a, str) for a in args):
        raise McpConfigError(f"{where}.args: must be an array of strings")
    timeout = _get(entry, "timeout", (int, float), where, DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not 0 < timeout < float("inf"):
        raise McpConfigError(f"{where}.timeout: must be a positive number of seconds")
    include = entry.get("includeTools")
    return ServerConfig(
        name=name,
        command=command,
        args=tuple(_expand(a, env, f"{where}.args") for a in args),
        env=_strings(entry, "env", where, env),
        cwd=_expand(_get(entry, "cwd", str, where, ""), env, f"{where}.cwd"),
        url=url,
        headers=_strings(entry, "headers", where, env),
        timeout=float(timeout),
        include_tools=None if include is None else frozenset(_names(entry, "includeTools", where)),
        exclude_tools=frozenset(_names(entry, "excludeTools", where)),
    )


def _get(entry: dict[str, Any], key: str, kind: Any, where: str, default: Any) -> Any:
    value = entry.get(key, default)
    if not isinstance(value, kind):
        names = {str: "a string", list: "an array", bool: "true or false", dict: "an object"}
        raise McpConfigError(f"{where}.{key}: must be {names.get(kind, 'a number')}")
    return value


def _strings(entry: dict[str, Any], key: str, where: str, env: Mapping[str, str]) -> dict[str, str]:
    value = _get(entry, key, dict, where, {})
    if not all(isinstance(v, str) for v in value.values()):
        raise McpConfigError(f"{where}.{key}: values must be strings")
    return {k: _expand(v, env, f"{where}.{key}.{k}") for k, v in value.items()}


def _names(entry: dict[str, Any], key: str, where: str) -> list[str]:
    value = _get(entry, key, list, where, [])
    if not all(isinstance(v, str) for v in value):
        raise McpConfigError(f"{where}.{key}: must be an array of tool names")
    return [str(v) for v in value]


def _expand(text: str, env: Mapping[str, str], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise McpConfigError(f"{where}: environment variable {name} is not set")
        return env[name]

    return _VARIABLE.sub(value, text)


# --------------------------------------------------------------------------- connections


class McpServerError(Exception):
    """A server could not be connected at start-up, or lists tools chatd cannot serve."""


@dataclass(slots=True)
class _Attempt:
    """What the HTTP layer saw of one call's requests: whether any was sent, whether one
    reached the server (began to be written to a connection, and was not refused), and
    whether one was refused by a server that no longer knew the session."""

    sent: bool = False
    reached: bool = False
    refused: bool = False


# The current call's _Attempt. The SDK's streamable-HTTP transport sends each message in
# the context of the task that wrote it (its context streams carry the sender's context),
# so _WatchedClient sees the caller's attempt; requests of no call see None.
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "chatd_mcp_attempt", default=None
)


class _WatchedClient(httpx2.AsyncClient):
    """An HTTP client that notes, in the current call's _Attempt, whether a request
    reached the server: once its headers begin to be written to a connection (the "trace"
    extension's send_request_headers event, https://www.python-httpx.org/advanced/extensions/),
    unless it is answered 404 while carrying an Mcp-Session-Id, which says the server does
    not know the session and did not process the request (MCP streamable HTTP, "Session
    Management": https://modelcontextprotocol.io/specification/2025-11-25/basic/transports).
    A request that failed to connect, or was never sent, did not reach it."""

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        attempt = _ATTEMPT.get()
        if attempt is None:
            return await super().send(request, **kwargs)
        attempt.sent = True
        before = attempt.reached
        outer = request.extensions.get("trace")

        async def trace(event: str, info: dict[str, Any]) -> None:
            # Noted at once, not when send returns: the SDK may wake the call (the
            # connection given up meanwhile) while this request still waits for its
            # response, and the call must then know that the request may have arrived.
            if event.endswith(".send_request_headers.started"):
                attempt.reached = True
            if outer is not None:
                await outer(event, info)

        request.extensions["trace"] = trace
        response = await super().send(request, **kwargs)
        if response.status_code == 404 and _SESSION_HEADER in request.headers:
            attempt.refused = True
            attempt.reached = before  # this request was not processed
        else:
            attempt.reached = True
        return response


class McpServer:
    """One supervised connection: connects, reconnects when the connection is lost (a stdio
    server is started again), runs calls on whatever connection is current, and lists the
    server's tools again when the server says they changed.

    `listed` is the server's latest tool list and `listings` counts the lists read: at
    start-up, after each reconnection and after each change the server announces.
    `on_listed`, when set, is called with the server after each.
    """

    def __init__(
        self, config: ServerConfig, *, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    ) -> None:
        self.config = config
        self.listed: list[mcp_types.Tool] = []
        self.listings = 0
        self.on_listed: Callable[[McpServer], None] | None = None
        # A streamed result is JSON (its text often twice: content and structuredContent)
        # in one SSE event: room for any result chatd would accept, and then some.
        self._max_event_bytes = 4 * max_result_bytes + 64 * 1024
        self._client: Client | None = None
        # "connecting" (calls wait), "up", "down" (between restarts: a call starts the next
        # attempt at once and waits for it), "closed".
        self._state = "connecting"
        self._changed = asyncio.Event()
        self._listing = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = asyncio.Event()
        self._wake = asyncio.Event()
        self._failures = 0
        # Connection attempts begun so far.
        self._attempts = 0
        # A call's HTTP requests have been seen by _WatchedClient: a call of which it saw
        # none was sent none (rather than sent some the watch missed).
        self._watching = False
        self._error = ""
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._connect_timeout = CONNECT_TIMEOUT
        # Restarts so far (for logs and tests).
        self.restarts = 0

    @property
    def connected(self) -> bool:
        """A connection is up: calls go straight to the server."""
        return self._state == "up"

    async def start(self, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        """Connects and lists the tools; raises McpServerError saying why it cannot
        (within `connect_timeout` seconds, or it says there was no answer)."""
        self._first = asyncio.get_running_loop().create_future()
        self._connect_timeout = connect_timeout
        self._task = asyncio.create_task(self._supervise(), name=f"mcp:{self.config.name}")
        try:
            async with asyncio.timeout(connect_timeout):
                await asyncio.shield(self._first)
        except TimeoutError:
            await self.close()
            raise McpServerError(f"no answer within {connect_timeout:g}s") from None
        except McpServerError:
            await self.close()
            raise

    async def close(self) -> None:
        """Closes the connection (a stdio server is stopped) and stops reconnecting."""
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            if self._state != "up":  # still connecting: nothing to close politely
                task.cancel()
            done, _ = await asyncio.wait([task], timeout=10)
            if not done:
                task.cancel()
                await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # logged by the supervisor already
        self._set("closed")

    async def wait_listed(self, after: int) -> None:
        """Returns once `listings` exceeds `after`: a tool list newer than the one seen."""
        while self.listings <= after:
            await self._listing.wait()

    async def call(self, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """The server's result; raises ToolError when the server cannot be reached or is
        lost during the call (the registry's timeout bounds the wait for a reconnection).

        An HTTP call none of whose requests can have reached the server (none was sent
        before the connection closed, the connection was refused, or the server no longer
        knew the session) reconnects and is sent once more; one that may have reached it
        never is.
        """
        for last in (False, True):
            client = await self._connected()
            attempt = _Attempt()
            token = _ATTEMPT.set(attempt)
            try:
                result = await client.call_tool(tool, arguments)
                self._watching = self._watching or attempt.sent
            except (
                MCPError,
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
                httpx2.HTTPError,
                OSError,
            ) as e:
                self._watching = self._watching or attempt.sent
                # Only HTTP requests are watched: a stdio call is never sent again.
                if not (self.config.url and _unsent(attempt, e, self._watching)):
                    raise self._failed(client, e) from e
                self._connection_lost(e, client)
                if last:
                    raise ToolError(
                        f"MCP server {self.config.name!r} cannot be reached: {_describe(e)}"
                    ) from e
                _log().warning(
                    "mcp_call_resent",
                    mcp_server=self.config.name,
                    tool=tool,
                    error=_describe(e),
                )
                continue
            except ValidationError as e:
                raise ToolError(
                    f"MCP server {self.config.name!r} sent a result that is not valid MCP: {e}"
                ) from e
            finally:
                _ATTEMPT.reset(token)
            self._failures = 0
            return result
        raise AssertionError("unreachable")  # the loop returns or raises

    def _failed(self, client: Client, e: Exception) -> ToolError:
        """The ToolError for a call on `client` that failed once it may have reached the
        server; a connection that failed is given up (and made again)."""
        if isinstance(e, MCPError):
            if _EVENT_TOO_LARGE in e.message:
                return ToolError(
                    f"MCP server {self.config.name!r} sent a result larger than chatd takes "
                    f"({e.message})"
                )
            if not _connection_gone(e):
                return ToolError(f"MCP server {self.config.name!r}: {e}")
            self._connection_lost(e, client)
            return ToolError(
                f"MCP server {self.config.name!r} was lost during the call; it is being restarted"
            )
        self._connection_lost(e, client)
        return ToolError(f"MCP server {self.config.name!r} cannot be reached: {_describe(e)}")

    async def _connected(self) -> Client:
        """The current connection, once there is one. While the server is down between
        restarts, the first look starts the next attempt at once; raises ToolError when
        the server is closed, or down again after an attempt begun since."""
        woke_at: int | None = None
        while True:
            changed = self._changed
            if self._state == "up" and self._client is not None:
                return self._client
            if self._state == "closed":
                raise ToolError(f"MCP server {self.config.name!r} is closed")
            if self._state == "down":
                if woke_at is not None and self._attempts > woke_at:
                    raise ToolError(
                        f"MCP server {self.config.name!r} cannot be reached ({self._error}); "
                        "chatd keeps trying to reconnect"
                    )
                if woke_at is None:
                    woke_at = self._attempts
                    self._wake.set()
            await changed.wait()

    def _set(self, state: str) -> None:
        self._state = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _connection_lost(self, cause: BaseException | None, client: Client | None = None) -> None:
        """Gives the current connection up (a no-op when `client`, the one that failed,
        is no longer current: a call that began before a reconnection)."""
        if self._lost.is_set() or self._state != "up":
            return
        if client is not None and client is not self._client:
            return
        if cause is not None:
            self._error = _describe(cause)
        self._lost.set()
        # Calls from now on wait for the new connection.
        self._client = None
        self._set("connecting" if self._failures == 0 else "down")

    def _listed_now(self, listed: list[mcp_types.Tool]) -> None:
        self.listed = listed
        self.listings += 1
        listing, self._listing = self._listing, asyncio.Event()
        listing.set()
        if self.on_listed is not None:
            try:
                self.on_listed(self)
            except Exception:
                _log().exception("mcp_tools_not_applied", mcp_server=self.config.name)

    async def _supervise(self) -> None:
        log = _log().bind(mcp_server=self.config.name, transport=self.config.transport)
        while not self._closing.is_set():
            self._lost = asyncio.Event()
            lost = self._lost
            # Set when the server says its tools changed (a notification, or an event on
            # a subscriptions/listen stream).
            changed = asyncio.Event()
            self._attempts += 1
            try:
                # Each attempt, reconnections too, must connect and list within the timeout.
                async with asyncio.timeout(self._connect_timeout) as deadline:
                    async with Client(
                        _transport(
                            self.config, lambda: self._connection_lost(None), self._max_event_bytes
                        ),
                        cache=None,
                        client_info=mcp_types.Implementation(name="chatd", version="1"),
                        message_handler=_on_message(changed),
                    ) as client:
                        listed = await _list_tools(client)
                        deadline.reschedule(None)
                        self._client = client
                        self._set("up")
                        self._listed_now(listed)
                        if self._first is not None and not self._first.done():
                            self._first.set_result(None)
                            log.info("mcp_server_connected", tools=[t.name for t in listed])
                        else:
                            log.info("mcp_server_reconnected", restarts=self.restarts)
                        await self._serve(client, lost, changed, log)
            except Exception as e:
                self._error = _describe(e)
                if self._first is not None and not self._first.done():
                    self._first.set_exception(McpServerError(self._error))
                    return
                if not lost.is_set():
                    log.warning("mcp_server_failed", error=self._error)
            finally:
                self._client = None
            if self._closing.is_set():
                return
            delay = (
                0.0
                if self._failures == 0
                else min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self._failures - 1))
            )
            self._failures += 1
            self.restarts += 1
            log.warning("mcp_server_lost", error=self._error, restart_in=delay)
            if delay:
                self._set("down")
                # Until the delay is over, chatd closes, or a call wants the server now.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await _first_of(self._closing.wait(), self._wake.wait())
            self._wake.clear()
            if not self._closing.is_set():
                self._set("connecting")

    async def _serve(
        self, client: Client, lost: asyncio.Event, changed: asyncio.Event, log: Any
    ) -> None:
        """While the connection lasts: lists the tools again each time they change."""
        listening = None
        if _announces_changes(client):
            listening = asyncio.create_task(self._listen(client, changed, log))
        try:
            while True:
                await _first_of(lost.wait(), self._closing.wait(), changed.wait())
                if lost.is_set() or self._closing.is_set():
                    return
                changed.clear()
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        listed = await _list_tools(client)
                except Exception as e:
                    log.warning("mcp_tools_not_listed", error=_describe(e))
                    if isinstance(e, MCPError) and not _connection_gone(e):
                        # The server refused this listing (mid-reload, say): the tools
                        # stay as last listed until its next change or a reconnection.
                        continue
                    # Listed afresh by the reconnection.
                    self._connection_lost(e)
                    return
                log.info("mcp_tools_listed", tools=[t.name for t in listed])
                self._listed_now(listed)
        finally:
            if listening is not None:
                listening.cancel()
                await asyncio.wait([listening])

    async def _listen(self, client: Client, changed: asyncio.Event, log: Any) -> None:
        """Holds a subscriptions/listen stream for tool list changes open (2026-07-28
        servers announce changes only there); its events, like the notifications of
        earlier protocol versions, set `changed` through the message handler too."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _ in subscription:
                    changed.set()
        except SubscriptionLost as e:
            # No replay: the connection is made again and the tools listed afresh.
            log.warning("mcp_subscription_lost", error=_describe(e))
            self._connection_lost(e)
        except Exception as e:
            log.warning("mcp_subscription_failed", error=_describe(e))
        else:
            log.info("mcp_subscription_ended")


def _unsent(attempt: _Attempt, e: Exception, watching: bool) -> bool:
    """The call failed for want of a connection or session, and none of its requests
    reached the server: sending it again cannot run the tool twice. That none reached it
    counts only once the server's requests are known to be watched (`watching`: this
    call's or an earlier one's were seen); a refusal is seen itself."""
    if attempt.reached:
        return False
    if attempt.refused:
        return True
    return _connection_gone(e) and watching


def _announces_changes(client: Client) -> bool:
    """The server sends tool list changes on subscriptions/listen streams (2026-07-28)."""
    tools = client.server_capabilities.tools
    return (
        client.protocol_version in MODERN_PROTOCOL_VERSIONS
        and tools is not None
        and bool(tools.list_changed)
    )


def _on_message(changed: asyncio.Event) -> MessageHandlerFnT:
    async def handle(message: IncomingMessage) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            changed.set()

    return handle


async def _first_of(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def _list_tools(client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(1000):  # a server whose cursor never ends cannot hang start-up
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


@contextlib.asynccontextmanager
async def _transport(
    config: ServerConfig, on_lost: Callable[[], None], max_event_bytes: int
) -> AsyncIterator[tuple[_WatchedRead, Any]]:
    """The SDK's transport for the server, its read stream watched for the end of the
    connection (a stdio server exiting ends it at once)."""
    async with contextlib.AsyncExitStack() as stack:
        if config.url:
            http = await stack.enter_async_context(
                _WatchedClient(
                    headers=dict(config.headers),
                    # The SDK's defaults: a response stream may stay open for long.
                    timeout=httpx2.Timeout(30.0, read=300.0),
                )
            )
            streams = await stack.enter_async_context(
                streamable_http_client(
                    config.url, http_client=http, max_sse_event_size=max_event_bytes
                )
            )
        else:
            params = StdioServerParameters(
                command=config.command,
                args=list(config.args),
                env=dict(config.env) or None,
                cwd=config.cwd or None,
            )
            streams = await stack.enter_async_context(stdio_client(params))
        read, write = streams
        yield _WatchedRead(read, on_lost), write


class _WatchedRead:
    """A transport's read stream that calls `on_lost` when it ends or breaks."""

    def __init__(self, inner: Any, on_lost: Callable[[], None]) -> None:
        self._inner = inner
        self._on_lost = on_lost

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_lost()
            raise
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        result: bool | None = await self._inner.__aexit__(exc_type, exc_val, exc_tb)
        return result


# --------------------------------------------------------------------------- tools


def server_tools(server: McpServer) -> list[Tool]:
    """A Tool for each listed tool the config admits, named "<server>__<tool>".

    Raises McpServerError naming the tool when its name is not a valid Gemini function name
    or its input schema uses JSON Schema chatd does not enforce (the same refusal a Python
    tool gets); "excludeTools" leaves such a tool out.
    """
    tools, refused = admitted_tools(server)
    if refused:
        raise refused[0][1]
    return tools


def admitted_tools(server: McpServer) -> tuple[list[Tool], list[tuple[str, McpServerError]]]:
    """The Tools of the listed tools the config admits, and each tool chatd cannot serve
    (by its MCP name) with the McpServerError saying why."""
    config = server.config
    tools: list[Tool] = []
    refused: list[tuple[str, McpServerError]] = []
    for listed in server.listed:
        if config.include_tools is not None and listed.name not in config.include_tools:
            continue
        if listed.name in config.exclude_tools:
            continue
        try:
            tools.append(_tool(server, listed))
        except McpServerError as e:
            refused.append((listed.name, e))
    return tools, refused


def _tool(server: McpServer, listed: mcp_types.Tool) -> Tool:
    config = server.config
    name = f"{config.name}{SEPARATOR}{listed.name}"
    if not NAME_PATTERN.fullmatch(name):
        raise McpServerError(
            f"MCP server {config.name!r}: tool {listed.name!r} would be named {name!r}, "
            f"which is not a valid Gemini function name ({NAME_PATTERN.pattern}); rename "
            "the server or add the tool to its excludeTools"
        )
    try:
        return Tool(
            name=name,
            description=listed.description or listed.title or "",
            parameters=gemini_schema(listed.input_schema),
            function=_caller(server, listed.name),
            timeout=config.timeout,
            source=origin(config.name),
        )
    except ValueError as e:
        raise McpServerError(
            f"{e}; chatd refuses schemas it cannot check, as for Python tools: "
            "add the tool to the server's excludeTools to serve the others"
        ) from None


def origin(server: str) -> str:
    """Where the tools of the named server come from, in messages and the registry."""
    return f"MCP server {server!r}"


def gemini_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """An MCP tool's input schema in the subset chatd checks: "$schema" and "$id" dropped,
    and `anyOf: [S, {"type": "null"}]` (how pydantic writes an Optional) as S with
    "nullable": true. Everything else is passed on unchanged, for Tool to accept or refuse.
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED:
            continue
        if key == "properties" and isinstance(value, Mapping):
            out[key] = {
                k: gemini_schema(v) if isinstance(v, Mapping) else v for k, v in value.items()
            }
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = gemini_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            others = [s for s in value if s != {"type": "null"}]
            if len(value) == 2 and len(others) == 1 and isinstance(others[0], Mapping):
                out.update(gemini_schema(others[0]))
                out["nullable"] = True
            else:
                out[key] = value
        else:
            out[key] = value
    if "properties" in schema and "type" not in out:
        out["type"] = "object"
    return out


def _caller(server: McpServer, tool: str) -> Callable[..., Any]:
    async def call(**arguments: Any) -> Any:
        result = await server.call(tool, arguments)
        return tool_result(server.config.name, result)

    call.__qualname__ = f"mcp:{server.config.name}.{tool}"
    return call


def tool_result(server: str, result: mcp_types.CallToolResult) -> ToolResult:
    """A CallToolResult as chatd's ToolResult: text blocks (joined by newlines) are the
    value, or the structured content when there is no text; images, audio and embedded
    resources are parts; a resource link is a line of the text. Raises ToolError with the
    text when the result is an error (isError)."""
    texts: list[str] = []
    parts: list[Blob] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            texts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(Blob(block.mime_type, _decode(server, block.data)))
        elif isinstance(block, mcp_types.EmbeddedResource):
            res = block.resource
            if isinstance(res, mcp_types.TextResourceContents):
                data = res.text.encode()
                mime = res.mime_type or "text/plain"
            else:
                data = _decode(server, res.blob)
                mime = res.mime_type or "application/octet-stream"
            parts.append(Blob(mime, data, str(res.uri)))
        elif isinstance(block, mcp_types.ResourceLink):
            texts.append(f"[resource {block.name}: {block.uri}]")
    if result.is_error:
        raise ToolError("\n".join(texts) or f"MCP server {server!r} reported an error")
    value: Any
    if texts:
        value = texts[0] if len(texts) == 1 else "\n".join(texts)
    else:
        value = result.structured_content
    return ToolResult(value, tuple(parts))


def _decode(server: str, data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ToolError(f"MCP server {server!r} sent media that is not base64") from None


def _describe(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return text[:500]


# --------------------------------------------------------------------------- the set


class McpServers:
    """Every configured server: started together, their tools, closed together.

    Once `attach`ed to the registry serving their tools, each new tool list of a server
    (after a change it announced, or a reconnection) is applied to it.
    """

    def __init__(
        self,
        configs: Sequence[ServerConfig],
        *,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.servers = [McpServer(c, max_result_bytes=max_result_bytes) for c in configs]
        # Each tool with where it came from, once started.
        self.tools: list[tuple[Tool, str]] = []
        self._registry: ToolRegistry | None = None
        self._on_skipped: Callable[[str, str], None] | None = None
        # Per server, the tools (MCP names) not served at its last application, by reason.
        self._skipped: dict[str, dict[str, str]] = {}

    async def start(self, connect_timeout: float = CONNECT_TIMEOUT) -> list[tuple[Tool, str]]:
        """Connects every server at once and returns each tool with where it came from.

        Raises McpServerError naming the first server that cannot start (within
        `connect_timeout` seconds each) or whose tools chatd cannot serve; every server is
        closed again then.
        """
        results = await asyncio.gather(
            *(s.start(connect_timeout) for s in self.servers), return_exceptions=True
        )
        for server, outcome in zip(self.servers, results, strict=True):
            if isinstance(outcome, BaseException):
                await self.close()
                config = server.config
                what = (
                    f"URL {redact_url(config.url)}" if config.url else f"command {config.command!r}"
                )
                cause = str(outcome) if isinstance(outcome, McpServerError) else _describe(outcome)
                raise McpServerError(
                    f"MCP server {config.name!r} ({what}) cannot start: {cause}"
                ) from outcome
        found: list[tuple[Tool, str]] = []
        for server in self.servers:
            try:
                found += [(t, origin(server.config.name)) for t in server_tools(server)]
            except McpServerError:
                await self.close()
                raise
        self.tools = found
        return found

    def attach(
        self, registry: ToolRegistry, on_skipped: Callable[[str, str], None] | None = None
    ) -> None:
        """Keeps `registry` serving each server's latest tools from now on.

        A tool whose name another server or a Python tool already serves, or that chatd
        cannot serve (its name or schema), is left out: logged as an error and passed to
        `on_skipped(server, reason)` ("conflict" or "invalid") once, when it appears.
        """
        self._registry = registry
        self._on_skipped = on_skipped
        for server in self.servers:
            server.on_listed = self._listed
        for server in self.servers:
            self._apply(server)

    def _listed(self, server: McpServer) -> None:
        self._apply(server)
        # A name the server gave up may be one another server's tool was refused for.
        for other in self.servers:
            if other is not server and self._skipped.get(other.config.name):
                self._apply(other)

    def _apply(self, server: McpServer) -> None:
        registry = self._registry
        if registry is None:
            return
        name = server.config.name
        log = _log().bind(mcp_server=name)
        before = registry.served_by(origin(name))
        tools, refused = admitted_tools(server)
        skipped: dict[str, str] = {}
        earlier = self._skipped.get(name, {})
        for listed, error in refused:
            skipped[listed] = "invalid"
            if earlier.get(listed) != "invalid":
                log.error(
                    "mcp_tool_skipped",
                    tool=f"{name}{SEPARATOR}{listed}",
                    why="invalid",
                    error=str(error),
                )
        for tool, holder in registry.replace(origin(name), tools):
            listed = tool.name.removeprefix(f"{name}{SEPARATOR}")
            skipped[listed] = "conflict"
            if earlier.get(listed) != "conflict":
                log.error(
                    "mcp_tool_skipped",
                    tool=tool.name,
                    why="conflict",
                    error=f"{holder} already serves a tool named {tool.name!r}",
                )
        if self._on_skipped is not None:
            for listed, reason in skipped.items():
                if earlier.get(listed) != reason:
                    self._on_skipped(name, reason)
        self._skipped[name] = skipped
        after = registry.served_by(origin(name))
        if after != before:
            log.info(
                "mcp_tools_changed", added=sorted(after - before), removed=sorted(before - after)
            )

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers))


def _log() -> Any:
    return structlog.get_logger("chatd.tools")
