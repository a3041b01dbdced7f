"""The slice of asyncpg chatd uses, typed, and the translation of its errors to chatd's."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped]  # ships no type information

from server.sessions.errors import AlreadyExists, Conflict, DuplicateRequest, Unavailable


class Record(Protocol):
    def __getitem__(self, key: int | str, /) -> Any: ...


class Connection(Protocol):
    async def execute(self, query: str, *args: object) -> str: ...

    async def fetch(self, query: str, *args: object) -> list[Record]: ...

    async def fetchrow(self, query: str, *args: object) -> Record | None: ...

    async def fetchval(self, query: str, *args: object) -> Any: ...

    def transaction(self) -> AbstractAsyncContextManager[object]: ...


class ListeningConnection(Protocol):
    """A connection of its own, outside any pool, that LISTENs for notifications."""

    async def execute(self, query: str, *args: object) -> str: ...

    async def fetchval(self, query: str, *args: object) -> Any: ...

    async def add_listener(
        self, channel: str, callback: Callable[[Any, int, str, str], None]
    ) -> None: ...

    def add_termination_listener(self, callback: Callable[[Any], None]) -> None: ...

    def get_server_pid(self) -> int: ...

    def is_closed(self) -> bool: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


class Pool(Protocol):
    def acquire(self) -> AbstractAsyncContextManager[Connection]: ...

    async def close(self) -> None: ...


# Errors that say the server is out of reach or refused service, not that the request
# was wrong: connection loss (class 08), shutdown (57), exhaustion (53), timeouts, the
# client's "connection is closed" (InterfaceError), and its protocol state errors, which
# a connection the server dropped while idle raises on next use.
_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
# Both only arise when a concurrent transaction won; retrying may succeed.
_LOST_RACE = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)
# PostgreSQL text cannot hold U+0000 and jsonb refuses "\u0000" (22021, 22P05).
_NUL = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
)


def _reason(exc: BaseException) -> str:
    """Why, without the DSN: server messages and errno texts never contain it."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"{exc.sqlstate}: {exc.args[0] if exc.args else type(exc).__name__}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raises chatd's errors in place of asyncpg's within the block."""
    try:
        yield
    except asyncpg.exceptions.UniqueViolationError as exc:
        # Writes use ON CONFLICT DO NOTHING and raise chatd's errors themselves; a unique
        # violation getting here is a race those clauses do not cover.
        constraint = getattr(exc, "constraint_name", "") or ""
        if constraint.startswith("requests"):
            raise DuplicateRequest(
                "the request id was already made", reason="DUPLICATE_REQUEST"
            ) from exc
        if constraint.startswith("sessions"):
            raise AlreadyExists("the session already exists", reason="SESSION_EXISTS") from exc
        raise
    except _LOST_RACE as exc:
        raise Conflict(f"a concurrent write won ({_reason(exc)})", reason="CONFLICT") from exc
    except _NUL as exc:
        raise ValueError("PostgreSQL cannot store NUL characters in this field") from exc
    except _UNREACHABLE as exc:
        raise Unavailable(
            f"PostgreSQL is unavailable: {_reason(exc)}", reason="STORE_UNAVAILABLE"
        ) from exc


async def _keep_session(conn: object) -> None:
    """The pool's reset on release, instead of asyncpg's RESET ALL, CLOSE ALL, UNLISTEN *
    and pg_advisory_unlock_all(): a round trip per release for state chatd never leaves
    on a connection (no SET, cursors, LISTEN or session-level advisory locks; the tenant
    lock is transaction-level). asyncpg still rolls back an open transaction first.
    https://magicstack.github.io/asyncpg/current/api/index.html#asyncpg.pool.create_pool
    """


@contextlib.contextmanager
def _url_errors_hidden() -> Iterator[None]:
    try:
        yield
    except (ValueError, asyncpg.exceptions.ClientConfigurationError) as exc:
        # asyncpg's parse errors may quote the URL, password included.
        raise ValueError(
            f"the PostgreSQL URL is invalid ({type(exc).__name__}); check its syntax"
        ) from None


async def connect(
    dsn: str, *, connect_timeout: float, server_settings: Mapping[str, str]
) -> ListeningConnection:
    """One connection outside any pool; Unavailable when the server cannot be reached or
    refuses us, ValueError (not quoting it) when the URL is malformed."""
    with _url_errors_hidden(), translated():
        conn: ListeningConnection = await asyncpg.connect(
            dsn, timeout=connect_timeout, server_settings=dict(server_settings)
        )
    return conn


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    connect_timeout: float,
    server_settings: Mapping[str, str],
) -> Pool:
    """A connected pool; Unavailable when the server cannot be reached or refuses us."""
    with _url_errors_hidden(), translated():
        pool: Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            server_settings=dict(server_settings),
            reset=_keep_session,
        )
    return pool
