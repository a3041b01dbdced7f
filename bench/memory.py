"""Memory and start-up with 100,000 stored sessions: RSS against cap + base, bytes per session."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.chatd_client import COUNT_TOKENS, Chatd, touch_payloads
from bench.load import encode, run_load
from bench.procs import QUIET, Server, chatd
from bench.report import Check, below, info
from server.sessions.model import (
    DEFAULT_TENANT,
    ContextPolicy,
    FinishReason,
    Message,
    Part,
    Role,
    Session,
    SessionSettings,
    Usage,
)
from server.store import CachedStore, MemoryStore, SqliteStore

SESSIONS = 100_000
MESSAGES = 20  # short messages per stored session
CAP = 32 * 1024 * 1024  # CHATD_CACHE_MAX_BYTES for the memory run
WARM, SIZED, TOUCHED = 500, 2_500, 20_000  # sessions touched: warm-up, sizing, in all
STARTS = 3
MIB = 1024 * 1024


def session_id(i: int) -> str:
    return f"mem-{i:06d}"


def _stored(i: int, now: float) -> tuple[Session, list[Message]]:
    """Session i with MESSAGES short messages: user and echo-model turns, as a turn stores them."""
    messages = []
    for k in range(MESSAGES):
        turn = f"t{i:07d}{k // 2:08d}"
        if k % 2 == 0:
            messages.append(Message(Role.USER, (Part(text=f"short question {k}"),), k, now, turn))
        else:
            usage = Usage(40 + k, 12, 52 + k)
            text = f"Echo: short answer {k} of session {i}"
            part = (Part(text=text),)
            messages.append(
                Message(Role.MODEL, part, k, now, turn, usage, FinishReason.STOP, "echo")
            )
    session = Session(
        DEFAULT_TENANT, session_id(i), SessionSettings(), now, now, MESSAGES, MESSAGES, Usage()
    )
    return session, messages


async def build_db(path: Path) -> float:
    """Writes SESSIONS sessions straight into a SQLite file with the store API; seconds taken."""
    started = time.perf_counter()
    store = await SqliteStore.open(str(path), "NORMAL")
    now = time.time()
    try:
        for start in range(0, SESSIONS, 2000):
            rows = [_stored(i, now) for i in range(start, min(SESSIONS, start + 2000))]
            await asyncio.gather(*(store.create_session(s, m) for s, m in rows))
    finally:
        await store.close()
    return time.perf_counter() - started


async def cache_estimate(path: Path) -> dict[str, float]:
    """In this process, as the memory run touches them: WARM sessions read, then SIZED more,
    with the cache's own size estimate and tracemalloc's Python heap per session of those."""
    store = CachedStore(await SqliteStore.open(str(path), "NORMAL"), CAP)

    async def touch(first: int, count: int) -> None:
        for i in range(first, first + count):
            await store.get_session(DEFAULT_TENANT, session_id(i))
            await store.recent_messages(DEFAULT_TENANT, session_id(i))

    try:
        tracemalloc.start()  # before the warm-up, or what it decoded would be untraced
        await touch(0, WARM)
        gc.collect()
        before, estimated = tracemalloc.get_traced_memory()[0], store.stats.bytes
        await touch(WARM, SIZED)
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        stats = store.stats
    finally:
        await store.close()
    return {
        "estimate_bytes": (stats.bytes - estimated) / SIZED,
        "tracemalloc_bytes": heap / SIZED,
        "decoded_sessions": stats.decoded_entries,
        "decoded_bytes": stats.decoded_bytes,
    }


async def _touch(server: Server, ids: list[str]) -> dict[str, Any]:
    job = {
        "address": server.address,
        "server_pid": server.pid,
        "method": COUNT_TOKENS,
        "payloads": encode(touch_payloads(ids)),
        "concurrency": 32,
        "duration": 120.0,
        "once": True,
    }
    result = await run_load(job)
    if result["calls"] != len(ids) or result["errors"]:
        raise RuntimeError(f"touched {result['calls']} of {len(ids)}: {result['errors']}")
    return result


async def _settled_rss(server: Server) -> int:
    await asyncio.sleep(0.5)
    return server.rss()


async def base_rss(tmp: Path) -> int:
    """RSS of an idle chatd on an empty database, after one session was created and read."""
    server = await chatd(f"sqlite:///{tmp / 'empty.db'}", tmp / "chatd-memory.log").start()
    client = Chatd(server.address)
    try:
        ids = await client.create_sessions("idle", 1)
        await _touch(server, ids)
        return await _settled_rss(server)
    finally:
        await client.close()
        await server.stop()


async def startup(db: Path, tmp: Path) -> list[float]:
    """Seconds from spawn to health SERVING on the big database, STARTS times."""
    times = []
    for _ in range(STARTS):
        await QUIET.wait()
        server = await chatd(f"sqlite:///{db}", tmp / "chatd-startup.log").start()
        times.append(server.startup_seconds)
        await server.stop()
    return times


async def memory_run(db: Path, tmp: Path, say: Any) -> dict[str, Any]:
    """Touches WARM, then SIZED, then the rest of TOUCHED sessions; RSS after each step."""
    env = {"CHATD_CACHE_MAX_BYTES": str(CAP)}
    server = await chatd(f"sqlite:///{db}", tmp / "chatd-memory.log", **env).start()
    try:
        rss = {"start": server.rss()}
        await _touch(server, [session_id(i) for i in range(WARM)])
        rss["warm"] = await _settled_rss(server)
        await _touch(server, [session_id(i) for i in range(WARM, WARM + SIZED)])
        rss["sized"] = await _settled_rss(server)
        rest = await _touch(server, [session_id(i) for i in range(WARM + SIZED, TOUCHED)])
        rss["all"] = await _settled_rss(server)
    finally:
        await server.stop()
    per_session = (rss["sized"] - rss["warm"]) / SIZED
    say(
        f"  RSS MiB: start {rss['start'] / MIB:.1f}, {WARM} touched {rss['warm'] / MIB:.1f},"
        f" {WARM + SIZED} touched {rss['sized'] / MIB:.1f},"
        f" {TOUCHED} touched {rss['all'] / MIB:.1f}"
        f" ({rest['throughput']:.0f} touches/s)"
    )
    return {"rss": rss, "rss_per_session": per_session, "touch_rate": rest["throughput"]}


def _disk_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


async def memory(tmp: Path, say: Any) -> tuple[dict[str, Any], list[Check]]:
    """Builds the database, then start-up, base RSS, the memory run and the size estimates."""
    db = tmp / "sessions.db"
    built = await build_db(db)
    size = _disk_bytes(tmp, "sessions.db*")
    say(f"memory: {SESSIONS:,} sessions x {MESSAGES} messages written in {built:.1f} s")
    say(f"  ({size / MIB:.0f} MiB on disk)")
    starts = await startup(db, tmp)
    say(f"  start-up to SERVING: {', '.join(f'{s:.2f}' for s in starts)} s")
    base = await base_rss(tmp)
    run = await memory_run(db, tmp, say)
    estimate = await cache_estimate(db)
    say(
        f"  per cached session: {run['rss_per_session']:,.0f} B by RSS,"
        f" {estimate['tracemalloc_bytes']:,.0f} B by tracemalloc,"
        f" {estimate['estimate_bytes']:,.0f} B by the cache's estimate"
        f" ({estimate['decoded_sessions']:,.0f} sessions decoded,"
        f" {estimate['decoded_bytes'] / MIB:.1f} MiB)"
    )
    final = run["rss"]["all"]
    scenario = f"memory ({SESSIONS // 1000}k sessions, cap {CAP // MIB} MiB)"
    checks = [
        below(scenario, f"RSS MiB after {TOUCHED:,} touched", final / MIB, (base + CAP) / MIB),
        info(scenario, "base RSS MiB (idle, empty DB)", base / MIB),
        below(scenario, "bytes/cached session (RSS delta)", run["rss_per_session"], 4096),
        info(scenario, "bytes/cached session (cache estimate)", estimate["estimate_bytes"]),
        info(scenario, "bytes/cached session (tracemalloc)", estimate["tracemalloc_bytes"]),
        info(scenario, "sessions in the decoded tier", estimate["decoded_sessions"]),
        below("startup (100k sessions)", f"seconds to SERVING (max of {STARTS})", max(starts), 2.0),
    ]
    result = {
        "name": "memory",
        "sessions": SESSIONS,
        "messages_per_session": MESSAGES,
        "cap_bytes": CAP,
        "db_bytes": size,
        "build_seconds": built,
        "base_rss": base,
        **run,
        **estimate,
        "startup_seconds": starts,
        "startup_median": statistics.median(starts),
    }
    return result, checks


async def cache_turns(rounds: int = 300, sessions: int = 64) -> float:
    """CPU µs per turn of CachedStore over a MemoryStore, in this process: `sessions`
    sessions with max_messages=20, each turn get_session, recent_messages(20) and
    commit_turn of a 31-word user message and a 51-word model reply (the unary
    scenario's sizes), after 100 warm-up rounds. The cache's own cost on the hot path."""
    cache = CachedStore(MemoryStore(), 64 * MIB)
    settings = SessionSettings(context_policy=ContextPolicy(max_messages=20))
    now = 1_700_000_000.0
    for i in range(sessions):
        await cache.create_session(Session(DEFAULT_TENANT, f"turns-{i}", settings, now, now))
    words = ("lorem ipsum dolor sit amet " * 11).split()
    question, answer = " ".join(words[:31]), "Echo: " + " ".join(words[:50])
    usage = Usage(40, 12, 52)

    async def turns(count: int, turn: int) -> int:
        for _ in range(count):
            for i in range(sessions):
                s = await cache.get_session(DEFAULT_TENANT, f"turns-{i}")
                await cache.recent_messages(DEFAULT_TENANT, s.session_id, 20)
                turn, at, seq = turn + 1, now + turn / 1000, s.next_seq
                tid = f"{turn:032x}"
                added = [
                    Message(Role.USER, (Part(text=question),), seq, at, tid),
                    Message(
                        Role.MODEL,
                        (Part(text=answer),),
                        seq + 1,
                        at,
                        tid,
                        usage,
                        FinishReason.STOP,
                        "echo",
                    ),
                ]
                after = s.evolve(
                    version=s.version + 1,
                    next_seq=seq + 2,
                    message_count=s.message_count + 2,
                    update_time=at,
                )
                await cache.commit_turn(after, added, s.version)
        return turn

    turn = await turns(100, 0)
    started = time.process_time()
    await turns(rounds, turn)
    return (time.process_time() - started) / (rounds * sessions) * 1e6


if __name__ == "__main__":
    print(f"{asyncio.run(cache_turns()):.1f} µs of CPU per turn (cache over MemoryStore)")
