"""PostgreSQL: reachability, a fresh schema per run, and dropping it afterwards."""

from __future__ import annotations

import os
import secrets

import asyncpg  # type: ignore[import-untyped]  # ships no type information

URL = os.environ.get("CHATD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def fresh_schema() -> str:
    return f"chatd_bench_{secrets.token_hex(4)}"


async def unreachable(url: str = URL) -> str | None:
    """Why PostgreSQL at `url` cannot be used, or None when it answers."""
    if "127.0.0.1" not in url and "localhost" not in url:
        return f"{url} is not on this machine"
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {url} is unreachable: {exc}"
    await conn.close()
    return None


async def drop_schema(schema: str, url: str = URL) -> None:
    if not schema.startswith("chatd_bench_") or not schema.replace("_", "").isalnum():
        raise ValueError(f"refusing to drop schema {schema!r}")
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
