"""The SQLite file as a real `chatd serve` process sees it: one owner, its own WAL only, and
one clear line (path, cause, fix) with exit code 1 for every unusable file."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatd.v1 import chat_service_pb2 as pb
from server.store import SqliteStore
from tests.process import ROOT, ChatdProcess
from tests.store.conftest import fresh_schema, postgres_dsn

NOBODY = 65534


async def refused(
    database: Path, *, prefix: tuple[str, ...] = (), cwd: Path = ROOT
) -> tuple[int, list[str]]:
    """Runs `chatd serve` on `database` until it exits; its exit code and non-empty stderr
    lines. `prefix` runs the server through another program (setpriv, a limits wrapper)."""
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "server",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        f"sqlite:///{database}",
        cwd=cwd,
        env={**os.environ, "CHATD_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return await proc.wait(), lines


def one_line(code: int, lines: list[str], path: Path, *causes: str) -> dict[str, Any]:
    """The run exited 1 after exactly one error record naming `path` and the cause."""
    assert code == 1, lines
    assert len(lines) == 1, lines
    record: dict[str, Any] = json.loads(lines[0])
    assert (record["level"], record["event"]) == ("error", "cannot start")
    assert record["path"] == str(path)
    for cause in causes:
        assert cause in record["cause"], record
    assert record["fix"]
    return record


def wal_of(database: Path) -> Path:
    return database.with_name(f"{database.name}-wal")


async def create_and_kill(database: Path, *session_ids: str) -> None:
    """A chatd that stores sessions (with one turn each) and dies by SIGKILL, leaving its WAL."""
    server = await ChatdProcess("--database-url", f"sqlite:///{database}").start()
    try:
        async with server.channel() as channel:
            stub, _ = server.stubs(channel)
            for sid in session_ids:
                await stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
                await stub.SendMessage(pb.SendMessageRequest(session_id=sid, text=f"hi {sid}"))
        server.send_signal(signal.SIGKILL)
        await server.wait()
    finally:
        await server.kill()
    assert wal_of(database).stat().st_size > 0, "the test needs a WAL left behind"


async def stop(server: ChatdProcess) -> None:
    """SIGTERM once a call was answered (so the signal handlers are in place); exit code 0."""
    await session_ids(server)
    server.send_signal(signal.SIGTERM)
    assert await server.wait() == 0


async def session_ids(server: ChatdProcess) -> list[str]:
    async with server.channel() as channel:
        stub, _ = server.stubs(channel)
        listed = await stub.ListSessions(pb.ListSessionsRequest(page_size=100))
        return sorted(s.session_id for s in listed.sessions)


# ------------------------------------------------------------------------------- one owner


async def test_a_second_process_on_the_same_file_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    """The second chatd exits 1 naming the first one's pid and host; the first keeps serving."""
    database = tmp_path / "chatd.db"
    first = await ChatdProcess("--database-url", f"sqlite:///{database}").start()
    try:
        async with first.channel() as channel:
            stub, _ = first.stubs(channel)
            await stub.CreateSession(pb.CreateSessionRequest(session_id="before"))
            code, lines = await refused(database)
            assert first.proc is not None
            record = one_line(code, lines, database, "already in use", f"pid {first.proc.pid}")
            assert socket.gethostname() in record["cause"]
            await stub.CreateSession(pb.CreateSessionRequest(session_id="after"))
            await stub.SendMessage(pb.SendMessageRequest(session_id="before", text="still here"))
            got = await stub.GetSession(pb.GetSessionRequest(session_id="before"))
            assert got.session.message_count == 2
        assert await session_ids(first) == ["after", "before"]
    finally:
        await first.kill()


async def _until_checkpointed(stub: Any, database: Path, session_id: str) -> int:
    """Sends 100,000-character turns until the server's TRUNCATE checkpoint (every 1,000
    pages) has emptied its WAL and the next write restarted it; the number of turns sent.
    (The empty WAL itself is not observable here: the reply's write restarts it at once.)"""
    size = 0
    for sent in range(1, 100):
        text = os.urandom(50_000).hex()  # incompressible, as large as a turn may be
        await stub.SendMessage(pb.SendMessageRequest(session_id=session_id, text=text))
        size, before = wal_of(database).stat().st_size, size
        if size < before:
            return sent
    raise AssertionError("the WAL was never checkpointed")


@pytest.mark.parametrize("wal", ["first", "restarted-after-checkpoint"])
async def test_a_deleted_lock_file_does_not_let_a_second_chatd_in(tmp_path: Path, wal: str) -> None:
    """With the running chatd's lock file deleted, a second chatd takes a new one, but
    SQLite's own locks show the database open: it exits 1 naming the first one's pid,
    whether its WAL is the first one or one restarted after a checkpoint. (A WAL a
    checkpoint has just emptied, which would otherwise be removed under the running
    server, is the empty-wal case of the next test.)"""
    database = tmp_path / "chatd.db"
    first = await ChatdProcess("--database-url", f"sqlite:///{database}").start()
    try:
        assert first.proc is not None
        async with first.channel() as channel:
            stub, _ = first.stubs(channel)
            await stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
            if wal == "restarted-after-checkpoint":
                sent = await _until_checkpointed(stub, database, "s")
            else:
                await stub.SendMessage(pb.SendMessageRequest(session_id="s", text="hello"))
                sent = 1
                assert wal_of(database).stat().st_size > 0
            wal_before = wal_of(database).read_bytes()
            database.with_name("chatd.db.lock").unlink()
            code, lines = await refused(database)
            record = one_line(code, lines, database, f"is open in process {first.proc.pid}")
            assert "lock file" in record["cause"] and "running chatd" in record["fix"]
            assert wal_of(database).read_bytes() == wal_before  # not judged, not removed
            await stub.SendMessage(pb.SendMessageRequest(session_id="s", text="still here"))
            got = await stub.GetSession(pb.GetSessionRequest(session_id="s"))
            turns = got.session.message_count
            assert turns == 2 * (sent + 1)  # each turn: the user's message and the reply
        await stop(first)
    finally:
        await first.kill()
    again = await ChatdProcess("--database-url", f"sqlite:///{database}").start()
    try:
        async with again.channel() as channel:
            stub, _ = again.stubs(channel)
            got = await stub.GetSession(pb.GetSessionRequest(session_id="s"))
            assert got.session.message_count == turns
        await stop(again)
    finally:
        await again.kill()


_HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "empty-wal":
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE kept (x)")
    conn.execute("INSERT INTO kept VALUES ('written by the other program')")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
else:
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
print("open", flush=True)
sys.stdin.read()
print(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0], flush=True)
"""


@pytest.mark.parametrize("holding", ["reader", "empty-wal"])
async def test_another_program_with_the_database_open_blocks_the_start(
    tmp_path: Path, holding: str
) -> None:
    """chatd cannot tell a reader from a chatd whose lock file was deleted: any other
    process with the database open (here Python's sqlite3: a reader of chatd's database,
    or a WAL-mode writer whose checkpoint left an empty WAL) blocks the start, naming it."""
    database = tmp_path / "chatd.db"
    await _made_by_chatd(database)
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD,
        str(database),
        holding,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 20) == b"open\n"
        if holding == "empty-wal":
            assert wal_of(database).stat().st_size == 0
        code, lines = await refused(database)
        one_line(code, lines, database, f"is open in process {holder.pid} (")
        if holding == "empty-wal":
            assert wal_of(database).exists()  # not taken for a WAL with nothing to replay
        holder.stdin.close()
        out, _ = await asyncio.wait_for(holder.communicate(), 20)
        assert int(out) > 0, "the other program's connection broke"
        assert await holder.wait() == 0
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    server = await ChatdProcess("--database-url", f"sqlite:///{database}").start()
    await stop(server)
    await server.kill()


# ------------------------------------------------------------------------------------ WAL


async def test_the_wal_left_by_kill_9_is_replayed(tmp_path: Path) -> None:
    database = tmp_path / "chatd.db"
    await create_and_kill(database, "a", "b")
    server = await ChatdProcess("--database-url", f"sqlite:///{database}").start()
    try:
        assert await session_ids(server) == ["a", "b"]
        opened = [e for e in server.log if e.get("event") == "database opened"]
        assert opened == [opened[0]] and opened[0]["wal_replayed"] is True
    finally:
        await server.kill()


@pytest.mark.parametrize("mine_ended", ["killed", "stopped"])
async def test_a_foreign_wal_is_refused_and_left_unapplied(tmp_path: Path, mine_ended: str) -> None:
    """Another database's WAL copied next to this one, whether this one's chatd was killed
    (its own WAL replaced) or stopped cleanly (no WAL expected): refused, nothing touched."""
    mine, other = tmp_path / "mine.db", tmp_path / "other.db"
    if mine_ended == "killed":
        await create_and_kill(mine, "mine")
    else:
        server = await ChatdProcess("--database-url", f"sqlite:///{mine}").start()
        try:
            await stop(server)
        finally:
            await server.kill()
        assert not wal_of(mine).exists()
    await create_and_kill(other, "other")
    foreign = wal_of(other).read_bytes()
    wal_of(mine).write_bytes(foreign)
    before = mine.read_bytes()
    code, lines = await refused(mine)
    one_line(code, lines, wal_of(mine), "another database")
    assert wal_of(mine).read_bytes() == foreign
    assert mine.read_bytes() == before


async def test_the_wal_of_a_database_restored_from_a_backup_is_refused(tmp_path: Path) -> None:
    """A backup copied over the database after a crash must not get the newer WAL applied."""
    database, backup = tmp_path / "chatd.db", tmp_path / "backup.db"
    server = await ChatdProcess("--database-url", f"sqlite:///{database}").start()
    try:
        async with server.channel() as channel:
            stub, _ = server.stubs(channel)
            await stub.CreateSession(pb.CreateSessionRequest(session_id="old"))
        await stop(server)
    finally:
        await server.kill()
    backup.write_bytes(database.read_bytes())  # a new mtime, as a restore gives it
    await create_and_kill(database, "new")
    database.write_bytes(backup.read_bytes())
    code, lines = await refused(database)
    one_line(code, lines, wal_of(database), "database file changed")


# ----------------------------------------------------------------- unusable files, one line


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 40)


def _filled(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_migrations (version)")
        conn.execute("CREATE TABLE filler (x)")
        conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 1000,)] * 40)
    conn.close()


def _truncated(path: Path) -> None:
    _filled(path)
    os.truncate(path, 8192)


def _damaged(path: Path) -> None:
    """A valid header over a page 1 of garbage: only SQLite itself can tell."""
    _filled(path)
    with open(path, "r+b") as file:
        file.seek(100)
        file.write(b"\xab" * (4096 - 100))


def _too_new(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_migrations (version, description, applied_at)")
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    conn.close()


def _foreign_schema(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.close()


def _directory(path: Path) -> None:
    path.mkdir()


def _hard_linked(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    os.link(path, path.with_name("other-name.db"))


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _fifo_wal(path: Path) -> None:
    os.mkfifo(wal_of(path))


def _fifo_lock(path: Path) -> None:
    os.mkfifo(path.with_name(path.name + ".lock"))


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (_garbage, "is not a SQLite database"),
        (_truncated, "is truncated"),
        (_damaged, "is damaged"),
        (_too_new, "schema version 999 is newer"),
        (_foreign_schema, "another program's SQLite database"),
        (_directory, "is a directory"),
        # Opening a FIFO waits for a writer: without the check chatd would hang silently.
        (_fifo, "is a named pipe"),
        (_fifo_wal, "its WAL file is a named pipe"),
        (_fifo_lock, "its lock file is a named pipe"),
        # Under a second name, a second chatd would take another lock and another WAL.
        (_hard_linked, "has 2 names (hard links)"),
    ],
    ids=[
        "garbage",
        "truncated",
        "damaged",
        "too-new",
        "foreign-schema",
        "directory",
        "fifo",
        "fifo-wal",
        "fifo-lock",
        "hard-link",
    ],
)
async def test_an_unusable_file_is_one_line_and_exit_1(
    tmp_path: Path, make: Callable[[Path], None], cause: str
) -> None:
    database = tmp_path / "chatd.db"
    make(database)
    code, lines = await refused(database)
    one_line(code, lines, database, cause)


async def test_a_disk_full_at_first_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Writes beyond 8 KiB fail (RLIMIT_FSIZE, SIGXFSZ ignored) as on a full disk."""
    limit = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        " resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192));"
        " os.execv(sys.argv[1], sys.argv[1:])"
    )
    database = tmp_path / "chatd.db"
    code, lines = await refused(database, prefix=(sys.executable, "-c", limit))
    one_line(code, lines, database, "cannot be written")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory anyone may write, for running chatd as another user than the test's."""
    path = Path(tempfile.mkdtemp(prefix="chatd-perm-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _unprivileged() -> tuple[str, ...]:
    """Runs chatd where permission bits apply: as nobody when the tests run as root."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permission bits cannot be tested")
    for needed in (ROOT, Path(sys.executable).parent):
        for directory in (needed, *needed.parents):
            if not directory.stat().st_mode & 0o001:
                pytest.skip(f"{directory} is closed to other users: chatd cannot run as nobody")
    return (setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")


async def _made_by_chatd(database: Path) -> None:
    await (await SqliteStore.open(str(database))).close()


async def test_a_read_only_database_is_refused_at_start(shared_dir: Path) -> None:
    """chatd does not serve a database it cannot write (rather than failing writes later)."""
    prefix = _unprivileged()
    database = shared_dir / "chatd.db"
    await _made_by_chatd(database)
    (shared_dir / "chatd.db.lock").unlink()
    database.chmod(0o444)
    code, lines = await refused(database, prefix=prefix)
    one_line(code, lines, database, "is read-only")


async def test_a_database_chatd_may_not_read_is_one_line_and_exit_1(shared_dir: Path) -> None:
    prefix = _unprivileged()
    database = shared_dir / "chatd.db"
    await _made_by_chatd(database)
    (shared_dir / "chatd.db.lock").unlink()
    database.chmod(0o200 if os.geteuid() != 0 else 0o600)
    code, lines = await refused(database, prefix=prefix)
    one_line(code, lines, database, "cannot read it", "ermission denied")


async def test_a_read_only_directory_is_one_line_and_exit_1(shared_dir: Path) -> None:
    """Without a writable directory there is no lock file, WAL or shared memory file."""
    prefix = _unprivileged()
    directory = shared_dir / "ro"
    directory.mkdir()
    database = directory / "chatd.db"
    directory.chmod(0o555)
    code, lines = await refused(database, prefix=prefix)
    one_line(code, lines, database, "cannot open or create its lock file")


async def test_a_postgres_schema_from_a_newer_chatd_is_one_line_and_exit_1() -> None:
    """Not only SQLite: the newer-schema refusal is the same record, and no URL is echoed."""
    import asyncpg  # type: ignore[import-untyped]  # ships no type information

    dsn = postgres_dsn()
    async with fresh_schema(dsn) as schema:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
            await conn.execute(
                f"CREATE TABLE {schema}.schema_migrations"
                " (version BIGINT PRIMARY KEY, description TEXT, applied_at BIGINT)"
            )
            await conn.execute(f"INSERT INTO {schema}.schema_migrations VALUES (999, 'x', 0)")
        finally:
            await conn.close()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            dsn,
            "--postgres-schema",
            schema,
            cwd=ROOT,
            env={**os.environ, "CHATD_LOG_FORMAT": "json"},
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        lines = [line for line in stderr.decode().splitlines() if line.strip()]
        one_line(await proc.wait(), lines, Path("CHATD_DATABASE_URL"), "999")
        assert dsn not in lines[0]


# ----------------------------------------------------------------------------------- paths


async def test_a_relative_path_is_resolved_logged_and_a_new_file_announced(
    tmp_path: Path,
) -> None:
    """sqlite:///var/chatd.db is relative to the working directory; the absolute path is
    logged, and creating the file says so, so a start from the wrong directory shows."""
    expected = tmp_path / "var" / "chatd.db"
    expected.parent.mkdir()  # as `make run` does: chatd never creates the directory
    for life in ("new", "existing"):
        server = ChatdProcess("--database-url", "sqlite:///var/chatd.db", cwd=tmp_path)
        await server.start()
        try:
            opened = [e for e in server.log if e.get("event") == "database opened"]
            assert [e["path"] for e in opened] == [str(expected)]
            created = [e for e in server.log if str(e.get("event")).startswith("created new")]
            if life == "new":
                assert created[0]["event"] == f"created new database at {expected}"
                assert created[0]["level"] == "warning"
                assert created[0]["working_directory"] == str(tmp_path)
            else:
                assert created == []
            await stop(server)
        finally:
            await server.kill()
