"""Session storage backends behind the SessionStore Protocol, chosen by URL."""

from __future__ import annotations

from collections.abc import Callable

from server.sessions.ports import ReplyBus, SessionStore
from server.store.bus import LocalBus
from server.store.cache import CachedStore, CacheStats
from server.store.memory import MemoryStore
from server.store.migrations import SchemaTooNew
from server.store.sqlite import SqliteStore

__all__ = [
    "CacheStats",
    "CachedStore",
    "LocalBus",
    "MemoryStore",
    "SchemaTooNew",
    "SqliteStore",
    "open_bus",
    "open_store",
    "shared_url",
]

_SQLITE_PREFIX = "sqlite:///"


async def open_store(
    url: str,
    *,
    cache_max_bytes: int,
    sqlite_synchronous: str = "FULL",
    postgres_min_connections: int = 1,
    postgres_max_connections: int = 10,
    postgres_schema: str | None = None,
    wrap: Callable[[SessionStore], SessionStore] | None = None,
) -> SessionStore:
    """Opens the store `url` names, behind a write-through cache when cache_max_bytes > 0.

    `wrap`, when given, decorates the database's own store, beneath the cache: it sees
    the operations that reach the database (tracing's spans per transaction), not hits.

    `memory://` keeps everything in process memory (and is never cached: it already is
    memory). `sqlite:///var/chatd.db` is relative to the working directory and
    `sqlite:////var/lib/chatd.db` is absolute. `postgresql://user:pass@host/db` (or
    `postgres://`) uses a pool of that many connections, with chatd's tables in
    `postgres_schema` when set (created if missing) and else in the server's default
    schema; several replicas may share it, so its cache runs in shared mode.
    """
    store: SessionStore
    backend = _backend(url)
    wrapped = wrap or (lambda store: store)
    if backend == "memory":
        return wrapped(MemoryStore())
    if backend == "sqlite":
        store = wrapped(await SqliteStore.open(url[len(_SQLITE_PREFIX) :], sqlite_synchronous))
    else:
        # Imported here, not at the top: asyncpg is installed with every chatd (a
        # dependency in pyproject.toml), but only a PostgreSQL URL loads it, so a start on
        # SQLite or memory does not pay for importing it (about 0.1 s).
        from server.store.postgres import PostgresStore

        store = wrapped(
            await PostgresStore.open(
                url,
                min_size=postgres_min_connections,
                max_size=postgres_max_connections,
                schema=postgres_schema,
            )
        )
        if cache_max_bytes > 0:
            return CachedStore(store, cache_max_bytes, shared=True)
        return store
    return CachedStore(store, cache_max_bytes) if cache_max_bytes > 0 else store


def open_bus(
    database_url: str, schema: str | None, *, on_reconnect: Callable[[], None] | None = None
) -> ReplyBus:
    """The ReplyBus of the store `database_url` names (read as open_store reads it),
    not yet started.

    A PostgreSQL URL gives a PostgresBus on the channel of `schema` (the store's
    postgres_schema; None for the server's default schema), which needs one connection
    of its own besides the store's pool; `on_reconnect` runs whenever it listens again
    after losing its connection (messages sent meanwhile were lost to this replica).
    memory:// and sqlite:/// give a LocalBus, which never loses anything: their store
    serves one process. Raises ValueError for a URL open_store refuses, or a malformed
    schema name.
    """
    if _backend(database_url) != "postgres":
        return LocalBus()
    # Imported here, not at the top: only a PostgreSQL URL loads asyncpg (see open_store).
    from server.store.postgres.bus import PostgresBus

    return PostgresBus(database_url, schema, on_reconnect=on_reconnect)


def shared_url(database_url: str) -> bool:
    """Whether several processes may share the store the URL names (PostgreSQL)."""
    return _backend(database_url) == "postgres"


def _backend(url: str) -> str:
    """'memory', 'sqlite' or 'postgres'; ValueError, naming only the scheme, otherwise."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        if url.lower() != "memory://":
            raise ValueError("a memory store URL has nothing after 'memory://'")
        return "memory"
    if scheme == "sqlite":
        if not url.startswith(_SQLITE_PREFIX) or len(url) == len(_SQLITE_PREFIX):
            raise ValueError("a sqlite store URL is sqlite:///relative.db or sqlite:////abs.db")
        if "?" in url or "#" in url:
            # SQLite takes no URL options here; the file would be named after them (and a
            # password in them would land in a file name and its log lines).
            raise ValueError("a sqlite store URL takes no '?' query or '#' fragment")
        return "sqlite"
    if scheme in ("postgres", "postgresql"):
        return "postgres"
    # Only the scheme is named: the rest of the URL may hold a password.
    raise ValueError(
        f"unsupported store URL scheme {scheme!r};"
        " use sqlite:///path.db, postgresql://host/db or memory://"
    )
