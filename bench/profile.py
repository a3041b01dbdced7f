"""Profiles chatd under load with py-spy, or one cached session by object type; to bench/results."""

# python -m bench.profile unary|stream [--seconds 10] [--concurrency 16] [--postgres]
# python -m bench.profile gemini [--history 1000] [--concurrency 4]: chatd on the gemini
# provider against bench.fake_upstream, sessions as in bench.gemini.
# samples chatd (py-spy record --format raw: every running thread, then the GIL holder)
# while bench.load drives it, and ranks functions by self and inclusive samples.
# With --strace it counts syscalls per call (strace -c -f) of chatd and of the bare server;
# with --native the samples include C frames (grpc, uvloop, protobuf, sqlite3).
# python -m bench.profile memory breaks one cached 20-message session down by object type.
# py-spy is not a dependency of chatd: .venv/bin/pip install py-spy

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench import baseline, gemini, postgres, procs
from bench.chatd_client import SEND, STREAM, Chatd, send_payloads, stream_payloads, user_text
from bench.load import encode, run_load
from bench.procs import Server, chatd

RESULTS = Path(__file__).resolve().parent / "results"
_LINE = re.compile(r":\d+\)$")
TOP = 25


def summarize(raw: str, title: str) -> str:
    """Top functions by self samples (leaf frame) and inclusive samples (anywhere on stack)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    callers: dict[str, Counter[str]] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_LINE.sub(")", f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        if len(frames) > 1:
            callers.setdefault(frames[-1], Counter())[frames[-2]] += n
    total = max(total, 1)
    out = [title, f"{total} samples", "", f"top {TOP} by self time:"]
    out += [f"{100 * n / total:6.1f}%  {f}" for f, n in own.most_common(TOP)]
    out += ["", f"top {TOP} by inclusive time:"]
    out += [f"{100 * n / total:6.1f}%  {f}" for f, n in inclusive.most_common(TOP)]
    out += ["", "callers of the top 8 by self time:"]
    for leaf, _ in own.most_common(8):
        out.append(f"  {leaf}")
        top = callers.get(leaf, Counter()).most_common(4)
        out += [f"    {100 * n / total:5.1f}%  from {caller}" for caller, n in top]
    return "\n".join(out) + "\n"


async def cpu(
    kind: str,
    seconds: float,
    concurrency: int,
    on_postgres: bool,
    history: int = 0,
    native: bool = False,
) -> str:
    """Runs chatd under `kind` load at `concurrency` and returns py-spy's summary."""
    schema = postgres.fresh_schema() if on_postgres else ""
    try:
        return await _cpu(kind, seconds, concurrency, schema, history, native)
    finally:
        if schema:
            await postgres.drop_schema(schema)


async def _gemini_target(
    tmp: Path, history: int, stack: contextlib.AsyncExitStack
) -> tuple[Server, dict[str, Any]]:
    """chatd on the gemini provider and a fake upstream (both stopped by `stack`), with
    sessions of `history` messages sending all of them, as in bench.gemini."""
    fake = await gemini.FakeUpstream(0.0, tmp / "fake.log").start()
    stack.push_async_callback(fake.stop)
    server = await gemini.gemini_chatd(tmp, "p", fake).start()
    stack.push_async_callback(server.stop)
    client = Chatd(server.address)
    try:
        ids = await gemini.build_sessions(client, "p", gemini.SESSIONS, history)
    finally:
        await client.close()
    return server, {"method": STREAM, "payloads": encode(stream_payloads(ids, gemini.USER_TEXT))}


async def _target(kind: str, tmp: Path, schema: str = "") -> tuple[Server, dict[str, Any]]:
    """A started chatd with 64 sessions, and the load job for `kind` against it."""
    url = postgres.URL if schema else f"sqlite:///{tmp / 'p.db'}"
    env = {"CHATD_POSTGRES_SCHEMA": schema} if schema else {}
    server = await chatd(url, tmp / "chatd.log", **env).start()
    client = Chatd(server.address)
    try:
        ids = await client.create_sessions("p", 64)
    finally:
        await client.close()
    method, payloads = {
        "unary": (SEND, send_payloads(ids, user_text(31))),
        "stream": (STREAM, stream_payloads(ids, user_text(31))),
    }[kind]
    return server, {"method": method, "payloads": encode(payloads)}


def _job(server: Server, job: dict[str, Any], kind: str, concurrency: int) -> dict[str, Any]:
    shape = {"streaming": kind in ("stream", "gemini"), "concurrency": concurrency}
    return {"address": server.address, "server_pid": server.pid, **job, **shape}


async def _cpu(
    kind: str, seconds: float, concurrency: int, schema: str, history: int, native: bool
) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="chatd-profile-") as folder:
        tmp = Path(folder)
        async with contextlib.AsyncExitStack() as stack:
            if kind == "gemini":
                server, job = await _gemini_target(tmp, history, stack)
            else:
                server, job = await _target(kind, tmp, schema)
                stack.push_async_callback(server.stop)
            shape = {"warmup": 2 * seconds + 3, "duration": 1.0}
            load = asyncio.create_task(run_load({**_job(server, job, kind, concurrency), **shape}))
            await asyncio.sleep(1.5)
            texts = []
            for flags, what in (([], "every running thread"), (["--gil"], "the GIL holder")):
                raw = tmp / "raw.txt"
                args = ["record", "--format", "raw", "-o", str(raw), "--pid", str(server.pid)]
                args += ["--duration", str(int(seconds)), "--rate", "250", *flags]
                if native:
                    args.append("--native")
                spy_proc = await asyncio.create_subprocess_exec(
                    spy, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
                )
                await spy_proc.wait()
                texts.append(summarize(raw.read_text(), f"samples of {what}:"))
            result = await load
        what = f"{kind} ({history:,} messages of history)" if kind == "gemini" else kind
        title = (
            f"py-spy record of chatd on {'postgresql' if schema else 'sqlite'} under {what}"
            f" load, concurrency {concurrency},"
            f" 2 x {seconds:.0f} s ({result['throughput']:.0f} calls/s in the last second)\n\n"
        )
        return title + "\n".join(texts)


async def _strace(server: Server, job: dict[str, Any], seconds: float, tmp: Path) -> Counter[str]:
    """Syscalls per call of `server` (all threads) while bench.load runs `job`."""
    load = asyncio.create_task(run_load({**job, "warmup": 1.5, "duration": seconds + 1}))
    await asyncio.sleep(2.0)
    out = tmp / "strace.txt"
    args = ["-s", "INT", str(seconds), "strace", "-c", "-f", "-o", str(out), "-p", str(server.pid)]
    trace = await asyncio.create_subprocess_exec(
        "timeout", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await trace.wait()
    calls = (await load)["throughput"] * seconds
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[3].isdigit() and cells[-1] != "total":
            counts[cells[-1]] = round(int(cells[3]) / calls, 1)
    return counts


async def syscalls(kind: str, seconds: float, concurrency: int) -> str:
    """Syscalls per call, chatd against the bare server, under the same `kind` load."""
    with tempfile.TemporaryDirectory(prefix="chatd-profile-") as folder:
        tmp = Path(folder)
        server, job = await _target(kind, tmp)
        try:
            ours = await _strace(server, _job(server, job, kind, concurrency), seconds, tmp)
        finally:
            await server.stop()
        bare = await procs.baseline(tmp / "bare.log").start()
        try:
            method = baseline.STREAM if kind == "stream" else baseline.UNARY
            request = (
                baseline.request(225, 45, 50) if kind == "stream" else baseline.request(225, 999)
            )
            bare_job = {"method": method, "payloads": encode([request])}
            theirs = await _strace(bare, _job(bare, bare_job, kind, concurrency), seconds, tmp)
        finally:
            await bare.stop()
    lines = [
        f"strace -c -f: syscalls per {kind} call at concurrency {concurrency}, {seconds:.0f} s",
        "(per call = count / (calls/s of the load x seconds traced); strace slows both servers)",
        "",
        f"{'syscall':16} {'chatd':>8} {'bare':>8}",
    ]
    for name, _ in (ours + theirs).most_common(14):
        lines.append(f"{name:16} {ours[name]:8.1f} {theirs[name]:8.1f}")
    return "\n".join(lines) + "\n"


def _shared(obj: object) -> bool:
    """Objects every session shares: classes, enum members, modules, None, bools, small ints."""
    import enum
    import types

    if obj is None or isinstance(obj, bool | type | enum.Enum | types.ModuleType):
        return True
    return type(obj) is int and -5 <= obj <= 256


def _walk(root: object) -> tuple[Counter[str], Counter[str]]:
    """Bytes and objects by type reachable from `root`, shared ones left out (see _shared)."""
    seen: set[int] = set()
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or _shared(obj):
            continue
        seen.add(id(obj))
        sizes[type(obj).__name__] += sys.getsizeof(obj)
        counts[type(obj).__name__] += 1
        stack.extend(gc.get_referents(obj))
    return sizes, counts


async def memory() -> str:
    """Object-by-object size of one cached session as bench.memory stores it."""
    from bench.memory import CAP, MESSAGES, _stored
    from server.store import CachedStore, SqliteStore
    from server.store.cache_entry import Entry

    with tempfile.TemporaryDirectory(prefix="chatd-profile-") as folder:
        store = CachedStore(await SqliteStore.open(str(Path(folder) / "m.db")), CAP)
        session, messages = _stored(7, 1_700_000_000.0)
        await store.create_session(session, messages)
        await store.close()
        store = CachedStore(await SqliteStore.open(str(Path(folder) / "m.db")), CAP)
        await store.get_session(session.tenant, session.session_id)
        await store.recent_messages(session.tenant, session.session_id)
        entry: Entry = store._entries[(session.tenant, session.session_id)]
        sizes, counts = _walk(entry)
        estimate = entry.size
        await store.close()
    total = sum(sizes.values())
    out = [
        f"one cached session of {MESSAGES} short messages, loaded from SQLite (sys.getsizeof):",
        f"{total} bytes in all (the cache's own estimate: {estimate}); by type:",
    ]
    out += [f"{n:7d}  {name} ({counts[name]} objects)" for name, n in sizes.most_common()]
    out += [
        "",
        "Not counted: what every session shares (None, bools, small ints, enum members) and",
        "the allocator's own overhead (RSS per session is higher still: see latest.json).",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("kind", choices=("unary", "stream", "memory", "gemini"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--postgres", action="store_true", help=f"chatd on {postgres.URL}")
    parser.add_argument("--strace", action="store_true", help="syscalls per call, chatd vs bare")
    parser.add_argument("--history", type=int, default=1000, help="gemini: messages per session")
    parser.add_argument(
        "--native", action="store_true", help="C frames too (py-spy --native): -native.txt"
    )
    args = parser.parse_args()
    if args.kind == "gemini" and (args.strace or args.postgres):
        parser.error("gemini profiles chatd's CPU on SQLite only")
    if args.kind == "memory":
        text = asyncio.run(memory())
    elif args.strace:
        text = asyncio.run(syscalls(args.kind, args.seconds, args.concurrency))
    else:
        history = args.history if args.kind == "gemini" else 0
        text = asyncio.run(
            cpu(args.kind, args.seconds, args.concurrency, args.postgres, history, args.native)
        )
    suffix = "-postgres" if args.postgres else "-syscalls" if args.strace else ""
    if args.kind == "gemini":
        suffix = f"-{args.history}"
    if args.native:
        suffix += "-native"
    path = RESULTS / f"profile-{args.kind}{suffix}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text, end="")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
