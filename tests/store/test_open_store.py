"""open_store: which backend a URL names, and when it is cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.sessions.errors import Unavailable
from server.store import CachedStore, MemoryStore, SqliteStore, open_store

from .builders import TENANT, new_session
from .conftest import fresh_schema, postgres_dsn


async def test_memory_url_opens_an_uncached_memory_store() -> None:
    store = await open_store("memory://", cache_max_bytes=1 << 20)
    assert isinstance(store, MemoryStore)


async def test_sqlite_url_with_an_absolute_path_is_cached_when_asked(tmp_path: Path) -> None:
    db = tmp_path / "abs" / "chatd.db"
    db.parent.mkdir()
    store = await open_store(f"sqlite:///{db}", cache_max_bytes=1 << 20)  # four slashes
    try:
        assert isinstance(store, CachedStore)
        await store.create_session(new_session())
    finally:
        await store.close()
    assert db.exists()


async def test_sqlite_url_with_a_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    store = await open_store("sqlite:///var/rel.db", cache_max_bytes=0, sqlite_synchronous="normal")
    try:
        assert isinstance(store, SqliteStore)
        await store.create_session(new_session())
        assert (await store.get_session(TENANT, "s1")).session_id == "s1"
    finally:
        await store.close()
    assert (tmp_path / "var" / "rel.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/chatd", "'mysql'"),
        ("chatd.db", "''"),
        ("sqlite://relative.db", "sqlite:///"),
        ("sqlite:///", "sqlite:///"),
        ("memory://extra", "memory"),
        ("sqlite:///chatd.db?password=secret", "no '\\?' query"),
        ("sqlite:////tmp/chatd.db#secret", "'#' fragment"),
    ],
)
async def test_unsupported_urls_name_the_problem_without_echoing_secrets(
    url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        await open_store(url, cache_max_bytes=0)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_an_unreachable_postgres_is_unavailable_without_echoing_secrets(
    scheme: str,
) -> None:
    """Nothing listens on port 1: the failure is Unavailable and names no credentials."""
    with pytest.raises(Unavailable, match="PostgreSQL is unavailable") as raised:
        await open_store(f"{scheme}://chatd:secret@127.0.0.1:1/chatd", cache_max_bytes=0)
    assert "secret" not in str(raised.value)
    assert "secret" not in repr(raised.value.__cause__)


async def test_a_malformed_postgres_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="URL is invalid") as raised:
        await open_store("postgresql://chatd:secret@127.0.0.1:notaport/db", cache_max_bytes=0)
    assert "secret" not in str(raised.value)
    assert raised.value.__cause__ is None


@pytest.mark.parametrize(("cache_bytes", "cached"), [(1 << 20, True), (0, False)])
async def test_postgres_urls_open_a_shared_cache_over_postgres(
    cache_bytes: int, cached: bool
) -> None:
    from server.store.postgres import PostgresStore

    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        store = await open_store(
            dsn,
            cache_max_bytes=cache_bytes,
            postgres_min_connections=1,
            postgres_max_connections=2,
            postgres_schema=schema,
        )
        try:
            if cached:
                assert isinstance(store, CachedStore)
                assert store.shared
            else:
                assert isinstance(store, PostgresStore)
            await store.create_session(new_session())
            assert (await store.get_session(TENANT, "s1")).session_id == "s1"
        finally:
            await store.close()
