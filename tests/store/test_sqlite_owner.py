"""The owner lock and the WAL identity check of the SQLite store, on real SQLite files."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import pytest

from server.startup import StartupError
from server.store import SqliteStore
from server.store.sqlite import files as sqlite_files
from server.store.sqlite import wal as sqlite_wal
from server.store.sqlite.connect import BUSY_TIMEOUT_MS, connect
from server.store.sqlite.owner import (
    Fingerprint,
    OwnerLock,
    OwnerRecord,
    WalHeader,
    database_user,
)
from server.store.sqlite.wal import WalKeeper, check_before_open, current_header, wal_path

from .builders import TENANT, new_session


def crash_image(source: Path, target: Path, *, restarts: int = 0, page_size: int = 4096) -> None:
    """Copies a database and its WAL while the connection that wrote them is still open:
    what a kill -9 leaves. `restarts` full checkpoints first, so the WAL header has moved on."""
    conn = sqlite3.connect(source, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("CREATE TABLE t (x)")
        for i in range(restarts):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.execute("INSERT INTO t VALUES ('last')")
        shutil.copyfile(source, target)
        shutil.copyfile(wal_path(source), wal_path(target))
    finally:
        conn.close()


def header_of(database: Path) -> WalHeader:
    header = current_header(database)
    assert header is not None
    return header


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A crash image whose WAL was restarted once (checkpoint sequence 1)."""
    target = tmp_path / "image.db"
    crash_image(tmp_path / "source.db", target, restarts=1)
    assert header_of(target).checkpoint == 1
    return target


def predecessor(header: WalHeader, steps: int = 1) -> WalHeader:
    return WalHeader(header.checkpoint - steps, header.salt1 - steps, header.salt2 ^ 0x5A5A)


def test_the_recorded_wal_is_accepted_and_kept(image: Path) -> None:
    header = header_of(image)
    record = OwnerRecord(header, Fingerprint.of(image))
    assert check_before_open(image, record) == header
    assert wal_path(image).exists()


def test_the_successor_of_the_recorded_wal_is_accepted(image: Path) -> None:
    """A crash after the write that restarted the WAL but before its header was recorded."""
    header = header_of(image)
    assert check_before_open(image, OwnerRecord(predecessor(header), None)) == header


def test_a_wal_two_restarts_ahead_of_the_record_is_refused(image: Path) -> None:
    record = OwnerRecord(predecessor(header_of(image), 2), None)
    with pytest.raises(StartupError, match="another database") as raised:
        check_before_open(image, record)
    assert raised.value.path == str(wal_path(image))
    assert "move" in raised.value.fix


def test_a_new_wal_is_accepted_when_the_record_says_chatd_was_opening(tmp_path: Path) -> None:
    """A crash while opening, after SQLite started a WAL from nothing: sequence 0 belongs."""
    target = tmp_path / "fresh.db"
    crash_image(tmp_path / "source.db", target)
    assert header_of(target).checkpoint == 0
    record = OwnerRecord(None, Fingerprint.of(target), opening=True)
    assert check_before_open(target, record) is not None


def test_a_new_wal_next_to_a_cleanly_closed_database_is_refused(tmp_path: Path) -> None:
    """chatd closed the database and removed its WAL: whatever WAL appeared is foreign."""
    target = tmp_path / "fresh.db"
    crash_image(tmp_path / "source.db", target)
    with pytest.raises(StartupError, match="another database"):
        check_before_open(target, OwnerRecord(None, Fingerprint.of(target)))


def test_a_restarted_wal_is_refused_when_none_was_recorded(image: Path) -> None:
    with pytest.raises(StartupError, match="another database"):
        check_before_open(image, OwnerRecord(None, None))


def test_a_wal_without_any_record_is_refused(image: Path) -> None:
    with pytest.raises(StartupError, match="no record"):
        check_before_open(image, None)


def test_a_changed_database_file_is_refused_under_its_old_wal(image: Path) -> None:
    header = header_of(image)
    recorded = Fingerprint.of(image)
    assert recorded is not None
    moved = Fingerprint(recorded.inode, recorded.size, recorded.mtime_ns - 1)
    with pytest.raises(StartupError, match="database file changed"):
        check_before_open(image, OwnerRecord(header, moved))


def test_a_wal_of_another_page_size_is_refused(tmp_path: Path, image: Path) -> None:
    other = tmp_path / "other.db"
    crash_image(tmp_path / "other-source.db", other, page_size=8192)
    shutil.copyfile(wal_path(other), wal_path(image))
    with pytest.raises(StartupError, match="page size 8192"):
        check_before_open(image, OwnerRecord(header_of(image), None))


def test_a_wal_with_nothing_to_replay_is_removed(image: Path) -> None:
    """Only a header (a crash before the first frame): SQLite would discard it as well."""
    os.truncate(wal_path(image), sqlite_wal.WAL_HEADER_SIZE)
    assert check_before_open(image, None) is None
    assert not wal_path(image).exists()


def test_a_wal_that_is_not_one_is_refused(image: Path) -> None:
    wal_path(image).write_bytes(b"not a wal" * 100)
    with pytest.raises(StartupError, match="not a valid SQLite WAL"):
        check_before_open(image, None)


# ------------------------------------------------------------------- through SqliteStore


def owner_record(database: Path) -> dict[str, object]:
    raw = json.loads(Path(f"{database}.lock").read_text())
    assert isinstance(raw, dict)
    return raw


async def test_a_second_store_on_the_same_file_in_one_process_is_refused(tmp_path: Path) -> None:
    """Two stores would be two caches of one file, even in one process; after close it opens."""
    database = tmp_path / "chatd.db"
    store = await SqliteStore.open(str(database))
    try:
        with pytest.raises(StartupError, match=f"already in use by chatd pid {os.getpid()}"):
            await SqliteStore.open(str(database))
        await store.create_session(new_session())
    finally:
        await store.close()
    reopened = await SqliteStore.open(str(database))
    try:
        assert (await reopened.get_session(TENANT, "s1")).session_id == "s1"
    finally:
        await reopened.close()


def test_the_writer_checkpoints_and_records_every_new_wal_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Driven as the writer thread drives it: after each write the record names the WAL in
    use; with a small checkpoint size the WAL restarts often and stays small."""
    monkeypatch.setattr(sqlite_wal, "CHECKPOINT_PAGES", 4)
    database = tmp_path / "chatd.db"
    lock = OwnerLock.acquire(database)
    keeper = WalKeeper(lock, database, BUSY_TIMEOUT_MS)
    conn = connect(str(database), "FULL", writer=True)
    try:
        keeper.opened(conn)
        seen: set[WalHeader] = set()
        for i in range(200):
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (100 + i, "x" * 500))
            # What a crash right after this write would find: the recorded WAL or its successor.
            header = header_of(database)
            seen.add(header)
            recorded = WalHeader(*owner_record(database)["wal"])  # type: ignore[misc]
            assert header == recorded or predecessor(header).salt1 == recorded.salt1
            assert header == recorded or predecessor(header).checkpoint == recorded.checkpoint
            keeper.after_batch(conn)
            after = current_header(database)  # None just after a checkpoint emptied the WAL
            assert after is None or owner_record(database)["wal"] == list(astuple(after))
        assert len({h.checkpoint for h in seen}) > 3, "the WAL never restarted"
        assert wal_path(database).stat().st_size < 8 * 4096
        keeper.closing()
    finally:
        conn.close()
    keeper.closed()
    lock.release()
    assert not wal_path(database).exists()
    raw = owner_record(database)
    assert raw["wal"] is None
    assert raw["database"] == list(astuple(Fingerprint.of(database)))  # type: ignore[arg-type]


async def test_the_lock_file_names_the_holder_and_is_released_on_close(tmp_path: Path) -> None:
    database = tmp_path / "chatd.db"
    store = await SqliteStore.open(str(database))
    raw = owner_record(database)
    assert raw["pid"] == os.getpid()
    assert raw["path"] == str(database)
    await store.close()
    lock = OwnerLock.acquire(database)
    lock.release()


def test_a_refused_start_keeps_what_the_previous_owner_recorded(image: Path) -> None:
    """Taking the lock names the new holder at once but keeps the files' recorded state, so
    a start refused over a WAL is refused again, for the same reason, when retried."""
    for _ in range(2):
        lock = OwnerLock.acquire(image)
        try:
            assert owner_record(image)["pid"] == os.getpid()
            with pytest.raises(StartupError, match="no record"):
                check_before_open(image, lock.previous)
        finally:
            lock.release()
    header = header_of(image)
    lock = OwnerLock.acquire(image)
    lock.record(predecessor(header, 2), None)
    lock.release()
    for _ in range(2):
        lock = OwnerLock.acquire(image)
        try:
            with pytest.raises(StartupError, match="another database"):
                check_before_open(image, lock.previous)
        finally:
            lock.release()


def test_a_database_shorter_than_its_header_says_is_left_to_its_wal(tmp_path: Path) -> None:
    """A checkpoint cut short by kill -9 writes page 1 (the new size) before the file has
    grown; the WAL still holds every page, so only without a WAL is that truncation."""
    database = tmp_path / "chatd.db"
    conn = sqlite3.connect(database)
    conn.execute("CREATE TABLE filler (x)")
    conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 1000,)] * 40)
    conn.commit()
    conn.close()
    os.truncate(database, 8192)
    with pytest.raises(StartupError, match="is truncated"):
        sqlite_files.inspect(database)
    wal_path(database).write_bytes(b"\0" * 64)
    assert sqlite_files.inspect(database).new is False


_HOLD = (
    "import sqlite3, sys; conn = sqlite3.connect(sys.argv[1]);"
    " conn.execute('SELECT count(*) FROM sqlite_master').fetchone();"
    " print('open', flush=True); sys.stdin.read()"
)


def test_a_database_open_in_another_process_is_refused_before_its_wal_is_judged(
    image: Path,
) -> None:
    """SQLite's locks name the other process even with a free lock file; the WAL is not
    touched, and once that process has closed the database the lock is taken."""
    wal_before = wal_path(image).read_bytes()
    # Leaving the with block closes the pipes and waits for the process.
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(image)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline() == b"open\n"
            assert database_user(image) == holder.pid
            with pytest.raises(StartupError, match=f"is open in process {holder.pid} ") as raised:
                OwnerLock.acquire(image)
            assert raised.value.path == str(image)
            assert "never delete the lock file of a running chatd" in raised.value.fix
            assert wal_path(image).read_bytes() == wal_before
        finally:
            holder.kill()
    assert database_user(image) is None
    OwnerLock.acquire(image).release()


def test_a_reader_whose_shared_memory_file_was_deleted_is_still_found(image: Path) -> None:
    """Its read lock on the database file's lock bytes names it without the -shm file."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(image)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"open\n"
            image.with_name(image.name + "-shm").unlink()
            assert database_user(image) == holder.pid
        finally:
            holder.kill()


def test_no_shared_memory_file_and_no_reader_is_no_user(tmp_path: Path) -> None:
    """The probe creates nothing: a missing database or -shm file is simply unused."""
    database = tmp_path / "chatd.db"
    assert database_user(database) is None
    assert not database.exists() and not database.with_name("chatd.db-shm").exists()
