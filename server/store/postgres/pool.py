"""Opening PostgreSQL for chatd: a pool confined to one schema, then migrations."""

from __future__ import annotations

import re

from server.store import migrations
from server.store.postgres.driver import Connection, Pool, create_pool, translated

# Spliced into CREATE SCHEMA and search_path, which take no bound parameters.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# One lock per schema: replicas starting together queue here, and the later ones then
# find nothing left to do. Transaction-scoped, so a crash cannot leave it held.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"


def check_schema(schema: str) -> str:
    if _SCHEMA_NAME.fullmatch(schema) is None:
        raise ValueError(
            f"schema {schema[:64]!r} must be 1-63 lowercase letters, digits or '_',"
            " not starting with a digit"
        )
    return schema


async def _migrate(conn: Connection, schema: str | None) -> None:
    """Creates `schema` if needed and brings it up to date, or refuses a newer one."""
    async with conn.transaction():
        target = schema or await conn.fetchval("SELECT current_schema()")
        if target is None:
            raise RuntimeError("PostgreSQL: no schema on the search_path to create tables in")
        await conn.execute(_LOCK, f"chatd.migrations.{target}")
        # Looked up rather than CREATE SCHEMA IF NOT EXISTS, which needs the CREATE
        # privilege on the database even when the schema is already there.
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", target)
        if exists is None:
            await conn.execute(f'CREATE SCHEMA "{target}"')
        await conn.execute(migrations.BOOTSTRAP)
        current = await conn.fetchval(migrations.CURRENT_VERSION)
        for statement, params in migrations.upgrade(current, migrations.POSTGRESQL):
            await conn.execute(statement, *params)


async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    schema: str | None,
    connect_timeout: float,
) -> Pool:
    """A pool whose connections see only `schema` (when given), migrated to the latest."""
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ValueError(f"need 0 <= min_size <= max_size, max_size >= 1 ({min_size}, {max_size})")
    settings = {"application_name": "chatd"}
    if schema is not None:
        # Tables are named unqualified, so the search path alone selects the schema.
        settings["search_path"] = f'"{check_schema(schema)}"'
    pool = await create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        connect_timeout=connect_timeout,
        server_settings=settings,
    )
    try:
        with translated():
            async with pool.acquire() as conn:
                await _migrate(conn, schema)
    except BaseException:
        await pool.close()
        raise
    return pool
