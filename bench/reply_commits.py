"""What a reply written with its turn costs the store: commit_turn with and without one.

    python -m bench.reply_commits [--turns 2000] [--concurrency 1,16] [--rounds 3]
        [--payload 2048] [--answer 8] [--postgres-only | --sqlite-only]

Each measurement opens a fresh store (SQLite in a temporary folder with chatd's default
synchronous=FULL, or PostgreSQL at CHATD_BENCH_POSTGRES_URL in a fresh schema dropped
afterwards), creates `--concurrency` sessions and commits `--turns` turns of two short
messages (a 5-character question and an `--answer`-character answer) spread over them,
one task per session. With a reply, each turn also writes a
new completed reply record and one chunk of its events, a `--payload`-byte blob (what a
StreamReply's events come to). Figures are wall time per commit (the latency at
concurrency 1) and this process's CPU per commit (all its threads, SQLite's writer
included) and, on PostgreSQL, the CPU of the server processes serving the pool's
connections per commit (from /proc; PostgreSQL's background writers are not in it).
Modes alternate within each round and each keeps its best round: other work on the
machine can only slow a round down.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from bench import postgres, procs
from server.sessions.model import Message, Part, Role, Session, SessionSettings
from server.sessions.ports import ReplyEvents, ReplyRecord, ReplyState, ReplyWrite, SessionStore
from server.store import SqliteStore

T0 = 1_700_000_000.0
# A fresh store, how to close it, and the pids of the database server processes serving it.
Opened = tuple[SessionStore, Callable[[], Awaitable[None]], list[int]]
Opener = Callable[[], Awaitable[Opened]]


def session(session_id: str) -> Session:
    return Session(
        "bench",
        session_id,
        SessionSettings(model="echo"),
        create_time=T0,
        update_time=T0,
        uid=f"uid-{session_id}",
    )


def reply(s: Session, n: int, payload: bytes) -> ReplyWrite:
    record = ReplyRecord(
        tenant=s.tenant,
        session_id=s.session_id,
        reply_id=f"{s.session_id}-r{n}",
        turn_id=f"t{n}",
        request_id=f"q{n}",
        background=False,
        state=ReplyState.COMPLETED,
        create_time=s.update_time,
        update_time=s.update_time,
        last_seq=16,
    )
    return ReplyWrite(record, ReplyEvents(1, 16, payload))


async def run(
    store: SessionStore,
    turns: int,
    concurrency: int,
    payload: bytes | None,
    answer: str,
    backends: list[int],
) -> tuple[float, float, float]:
    """Commits `turns` turns over `concurrency` sessions; (wall s, CPU s, the backends'
    CPU s) per commit."""
    sessions = [session(f"s{i}") for i in range(concurrency)]
    for s in sessions:
        await store.create_session(s)
    each = turns // concurrency

    async def worker(s: Session) -> None:
        for n in range(each):
            seq = s.next_seq
            when = s.update_time + 1
            added = [
                Message(Role.USER, (Part(text="hello"),), seq=seq, create_time=when),
                Message(Role.MODEL, (Part(text=answer),), seq=seq + 1, create_time=when),
            ]
            after = s.evolve(
                version=s.version + 1,
                next_seq=seq + 2,
                message_count=s.message_count + 2,
                update_time=when,
            )
            written = None if payload is None else reply(after, n, payload)
            await store.commit_turn(after, added, s.version, reply=written)
            s = after

    server = sum(map(procs.cpu_seconds, backends))
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(s) for s in sessions))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server = sum(map(procs.cpu_seconds, backends)) - server
    done = each * concurrency
    return wall / done, cpu / done, server / done


async def sqlite_opener() -> Opened:
    folder = tempfile.TemporaryDirectory()
    store = await SqliteStore.open(str(Path(folder.name) / "chatd.db"))

    async def close() -> None:
        await store.close()
        folder.cleanup()

    return store, close, []


async def postgres_opener() -> Opened:
    from server.store.postgres import PostgresStore

    schema = postgres.fresh_schema()
    # Every connection opened beforehand: a connect is not part of a commit's cost.
    store = await PostgresStore.open(postgres.URL, schema=schema, min_size=16, max_size=16)

    async def close() -> None:
        await store.close()
        await postgres.drop_schema(schema)

    # Benchmark only: the pool's connections, each held at once, say their server pids.
    # The store types its asyncpg pool by the little it uses of it.
    pool: Any = store._pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    backends = [await conn.fetchval("SELECT pg_backend_pid()") for conn in held]
    for conn in held:
        await pool.release(conn)
    return store, close, backends


async def measure(name: str, opener: Opener, args: argparse.Namespace) -> None:
    payload = os.urandom(args.payload)
    for concurrency in args.concurrency:
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(args.rounds):
            for mode, blob in (("no reply", None), ("reply", payload)):
                store, close, backends = await opener()
                try:
                    measured = await run(
                        store, args.turns, concurrency, blob, "a" * args.answer, backends
                    )
                finally:
                    await close()
                if mode not in best or measured[0] < best[mode][0]:
                    best[mode] = measured
        plain, with_reply = best["no reply"], best["reply"]
        for mode, (wall, cpu, server) in best.items():
            line = (
                f"{name:<8} c={concurrency:<3} {mode:<9} {wall * 1e6:8.0f} µs/commit"
                f" {1 / wall:8.0f} commits/s  CPU {cpu * 1e6:6.0f} µs/commit"
            )
            if server:
                line += f"  server CPU {server * 1e6:6.0f} µs/commit"
            print(line)
        line = (
            f"{name:<8} c={concurrency:<3} reply/no reply: wall {with_reply[0] / plain[0]:.2f}x,"
            f" CPU {with_reply[1] / plain[1]:.2f}x"
        )
        if plain[2]:
            line += f", server CPU {with_reply[2] / plain[2]:.2f}x"
        print(line, flush=True)


async def main(args: argparse.Namespace) -> None:
    if not args.postgres_only:
        await measure("sqlite", sqlite_opener, args)
    if not args.sqlite_only:
        if (why := await postgres.unreachable()) is not None:
            print(f"postgres skipped: {why}")
            return
        await measure("postgres", postgres_opener, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.reply_commits", description=__doc__)
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument(
        "--concurrency", type=lambda v: [int(c) for c in v.split(",")], default=[1, 16]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--payload", type=int, default=2048, help="event bytes per reply")
    parser.add_argument("--answer", type=int, default=8, help="characters of the answer")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--postgres-only", action="store_true")
    only.add_argument("--sqlite-only", action="store_true")
    # The store's "created new database" warning each time would bury the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    asyncio.run(main(parser.parse_args()))
