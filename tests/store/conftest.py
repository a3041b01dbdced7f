"""Every store backend as a fixture param: a new backend is one entry in BACKENDS.

"staged-sqlite" is SqliteStore with every create that has a history staged, two messages
per writer job, so that the whole suite also runs through staged creates.

PostgreSQL backends run against the server in CHATD_TEST_POSTGRES_DSN, each test in a
schema of its own that is dropped afterwards; without the variable they skip. With it
they must run: an unreachable server fails them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.sessions.ports import SessionStore
from server.store import CachedStore, MemoryStore, SqliteStore
from server.store.sqlite import store as sqlite_store

# Small enough that the conformance suite also exercises eviction and refills.
CACHE_BYTES = 64_000
DSN_VARIABLE = "CHATD_TEST_POSTGRES_DSN"


@dataclass(frozen=True)
class Backend:
    name: str
    # Each call opens the same underlying data (a persistent backend reopens its file).
    open: Callable[[], Awaitable[SessionStore]]
    persistent: bool


def postgres_dsn() -> str:
    """The test server's DSN, or a skip when none is configured."""
    dsn = os.environ.get(DSN_VARIABLE, "")
    if not dsn:
        pytest.skip(f"{DSN_VARIABLE} is not set")
    return dsn


@asynccontextmanager
async def fresh_schema(dsn: str) -> AsyncIterator[str]:
    """A schema name no other test uses; the schema is dropped on exit if it was made."""
    import asyncpg  # type: ignore[import-untyped]

    schema = f"chatd_test_{secrets.token_hex(6)}"
    try:
        yield schema
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


async def open_postgres(dsn: str, schema: str, **options: int) -> SessionStore:
    from server.store.postgres import PostgresStore

    return await PostgresStore.open(dsn, schema=schema, **options)


def _local_backends(tmp_path: Path) -> dict[str, Backend]:
    (tmp_path / "store").mkdir(exist_ok=True)
    db = str(tmp_path / "store" / "chatd.db")

    async def memory() -> SessionStore:
        return MemoryStore()

    async def sqlite() -> SessionStore:
        return await SqliteStore.open(db)

    async def cached_sqlite() -> SessionStore:
        return CachedStore(await SqliteStore.open(db), CACHE_BYTES)

    async def cached_memory() -> SessionStore:
        return CachedStore(MemoryStore(), CACHE_BYTES)

    # Every history packed between calls: the compact tier's decode, promote and trim.
    async def packed_cached_memory() -> SessionStore:
        return CachedStore(MemoryStore(), CACHE_BYTES, max_decoded_bytes=0)

    # Shared mode's validation path, exercised without a PostgreSQL server.
    async def cached_shared_sqlite() -> SessionStore:
        return CachedStore(await SqliteStore.open(db), CACHE_BYTES, shared=True)

    return {
        "memory": Backend("memory", memory, persistent=False),
        "sqlite": Backend("sqlite", sqlite, persistent=True),
        "staged-sqlite": Backend("staged-sqlite", sqlite, persistent=True),
        "cached-sqlite": Backend("cached-sqlite", cached_sqlite, persistent=True),
        "cached-memory": Backend("cached-memory", cached_memory, persistent=False),
        "packed-cached-memory": Backend(
            "packed-cached-memory", packed_cached_memory, persistent=False
        ),
        "cached-shared-sqlite": Backend(
            "cached-shared-sqlite", cached_shared_sqlite, persistent=True
        ),
    }


def _postgres_backend(name: str, dsn: str, schema: str) -> Backend:
    async def postgres() -> SessionStore:
        return await open_postgres(dsn, schema)

    async def cached_shared_postgres() -> SessionStore:
        return CachedStore(await open_postgres(dsn, schema), CACHE_BYTES, shared=True)

    opener = postgres if name == "postgres" else cached_shared_postgres
    return Backend(name, opener, persistent=True)


POSTGRES_BACKENDS = ("postgres", "cached-shared-postgres")
BACKENDS = (
    "memory",
    "sqlite",
    "staged-sqlite",
    "cached-sqlite",
    "cached-memory",
    "packed-cached-memory",
    "cached-shared-sqlite",
    *POSTGRES_BACKENDS,
)


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Backend]:
    name: str = request.param
    if name == "staged-sqlite":
        monkeypatch.setattr(sqlite_store, "_STAGE_ABOVE", 0)
        monkeypatch.setattr(sqlite_store, "_HISTORY_SLICE", 2)
    if name not in POSTGRES_BACKENDS:
        yield _local_backends(tmp_path)[name]
        return
    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        yield _postgres_backend(name, dsn, schema)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[SessionStore]:
    opened = await backend.open()
    yield opened
    await opened.close()
