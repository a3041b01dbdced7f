"""Import rules import-linter cannot express: only the gemini provider touches the SDK, and
each database driver is imported by its store backend's package alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"
GEMINI = SERVER / "providers" / "gemini"
# The MCP client's streamable-HTTP transport takes an httpx2.AsyncClient for the headers an
# operator configures (the mcp SDK's documented way): the MCP module, not Gemini's transport.
MCP = SERVER / "tools" / "mcp_servers.py"
# Each driver and the one package that may import it.
DRIVERS = {"sqlite3": SERVER / "store" / "sqlite", "asyncpg": SERVER / "store" / "postgres"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_gemini_provider_imports_google_genai_or_its_transport() -> None:
    offenders = [
        str(path.relative_to(SERVER))
        for path in SERVER.rglob("*.py")
        if GEMINI not in path.parents
        and any(
            name == "google.genai"
            or name.startswith("google.genai.")
            or (name.startswith("httpx") and path != MCP)
            for name in imported_modules(path)
        )
    ]
    assert offenders == []


def test_opening_a_sqlite_store_does_not_load_the_postgresql_driver(tmp_path: Path) -> None:
    """asyncpg is installed with every chatd, but only a PostgreSQL URL imports it
    (server/store/__init__.py): the application, and a SQLite store it opens, never load it."""
    code = (
        "import asyncio, sys, server.__main__, server.app\n"
        "from server.store import open_store\n"
        "async def main():\n"
        f"    store = await open_store('sqlite:///{tmp_path}/chatd.db', cache_max_bytes=1 << 20)\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
        "assert 'asyncpg' not in sys.modules, 'asyncpg was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=SERVER.parent, check=True, timeout=60)


def test_each_database_driver_is_imported_only_by_its_backend_package() -> None:
    offenders = [
        f"{path.relative_to(SERVER)} imports {driver}"
        for path in SERVER.rglob("*.py")
        for driver, package in DRIVERS.items()
        if package not in path.parents
        and any(name == driver or name.startswith(f"{driver}.") for name in imported_modules(path))
    ]
    assert offenders == []
