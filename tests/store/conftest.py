"""Every store backend as a fixture param: a new backend is one entry in BACKENDS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.sessions.ports import SessionStore
from server.store import CachedStore, MemoryStore, SqliteStore

# Small enough that the conformance suite also exercises eviction and refills.
CACHE_BYTES = 64_000


@dataclass(frozen=True)
class Backend:
    name: str
    # Each call opens the same underlying data (a persistent backend reopens its file).
    open: Callable[[], Awaitable[SessionStore]]
    persistent: bool


def _backends(tmp_path: Path) -> dict[str, Backend]:
    db = str(tmp_path / "store" / "chatd.db")

    async def memory() -> SessionStore:
        return MemoryStore()

    async def sqlite() -> SessionStore:
        return await SqliteStore.open(db)

    async def cached_sqlite() -> SessionStore:
        return CachedStore(await SqliteStore.open(db), CACHE_BYTES)

    async def cached_memory() -> SessionStore:
        return CachedStore(MemoryStore(), CACHE_BYTES)

    # A PostgreSQL backend joins here, skipping when its DSN is not in the environment.
    return {
        "memory": Backend("memory", memory, persistent=False),
        "sqlite": Backend("sqlite", sqlite, persistent=True),
        "cached-sqlite": Backend("cached-sqlite", cached_sqlite, persistent=True),
        "cached-memory": Backend("cached-memory", cached_memory, persistent=False),
    }


BACKENDS = ("memory", "sqlite", "cached-sqlite", "cached-memory")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name: str = request.param
    return _backends(tmp_path)[name]


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[SessionStore]:
    opened = await backend.open()
    yield opened
    await opened.close()
