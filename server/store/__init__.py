"""Session storage backends behind the SessionStore Protocol, chosen by URL."""

from __future__ import annotations

from server.sessions.ports import SessionStore
from server.store.cache import CachedStore, CacheStats
from server.store.memory import MemoryStore
from server.store.migrations import SchemaTooNew
from server.store.sqlite import SqliteStore

__all__ = [
    "CacheStats",
    "CachedStore",
    "MemoryStore",
    "SchemaTooNew",
    "SqliteStore",
    "open_store",
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
) -> SessionStore:
    """Opens the store `url` names, behind a write-through cache when cache_max_bytes > 0.

    `memory://` keeps everything in process memory (and is never cached: it already is
    memory). `sqlite:///var/chatd.db` is relative to the working directory and
    `sqlite:////var/lib/chatd.db` is absolute. `postgresql://user:pass@host/db` (or
    `postgres://`) uses a pool of that many connections, with chatd's tables in
    `postgres_schema` when set (created if missing) and else in the server's default
    schema; several replicas may share it, so its cache runs in shared mode.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    store: SessionStore
    if scheme == "memory":
        if url.lower() != "memory://":
            raise ValueError("a memory store URL has nothing after 'memory://'")
        return MemoryStore()
    if scheme == "sqlite":
        if not url.startswith(_SQLITE_PREFIX) or len(url) == len(_SQLITE_PREFIX):
            raise ValueError("a sqlite store URL is sqlite:///relative.db or sqlite:////abs.db")
        store = await SqliteStore.open(url[len(_SQLITE_PREFIX) :], sqlite_synchronous)
    elif scheme in ("postgres", "postgresql"):
        # Imported here so that only PostgreSQL deployments need the driver.
        from server.store.postgres import PostgresStore

        store = await PostgresStore.open(
            url,
            min_size=postgres_min_connections,
            max_size=postgres_max_connections,
            schema=postgres_schema,
        )
        if cache_max_bytes > 0:
            return CachedStore(store, cache_max_bytes, shared=True)
        return store
    else:
        # Only the scheme is named, for the same reason.
        raise ValueError(
            f"unsupported store URL scheme {scheme!r};"
            " use sqlite:///path.db, postgresql://host/db or memory://"
        )
    return CachedStore(store, cache_max_bytes) if cache_max_bytes > 0 else store
