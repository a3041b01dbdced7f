"""chatd's turns without gRPC: ChatSessions.run_turn in this process, CPU per turn.

    python -m bench.turns [--postgres] [--concurrency 16] [--seconds 4] [--rounds 3]
        [--against REV]

The unary scenario's turn (64 sessions with context_policy.max_messages=20, the 31-word
message, the echo provider, the store and cache chatd opens for that URL) run by
`--concurrency` tasks on one event loop, as SendMessage runs them, minus gRPC: what is
left is chatd's own work (domain, store, cache, provider). Each round reports turns/s
and this process's CPU per turn (all its threads: SQLite's writer included); the
machine's other work is not in it, so the figure moves less with other load than a
whole-server one. On PostgreSQL it also reports the CPU of the server processes
serving the pool's connections (from /proc; PostgreSQL's background writers are not in
it). With `--against REV` the rounds alternate
between REV's code (`git archive`d, run from a temporary folder) and the working tree,
in the order ABBA..., each after a wait for a quiet machine (at most 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import postgres, procs
from bench.ab import export
from bench.chatd_client import user_text


async def measure(url: str, schema: str, concurrency: int, seconds: float) -> dict[str, float]:
    """One round: fresh sessions in a fresh store, a warm-up, then `seconds` of turns."""
    from server.providers.echo import EchoProvider
    from server.rpc.reply_codec import encode_events
    from server.sessions.engine import TurnInput
    from server.sessions.model import ContextPolicy, Part, SessionSettings
    from server.sessions.service import ChatSessions
    from server.store import open_store
    from server.tools import load_tools

    store = await open_store(url, cache_max_bytes=64 << 20, postgres_schema=schema or None)
    chats = ChatSessions(
        store, EchoProvider(), load_tools((), entry_points=False), event_encoder=encode_events
    )
    settings = SessionSettings(context_policy=ContextPolicy(max_messages=20))
    ids = [f"t-{i}" for i in range(64)]
    for sid in ids:
        await chats.create("default", settings, sid)
    turn = TurnInput(parts=(Part(text=user_text(31)),), stream_text=False)
    counting = False
    stop = False
    turns = 0

    async def worker(mine: list[str]) -> None:
        nonlocal turns
        while not stop:
            for sid in mine:
                async for _ in chats.run_turn("default", sid, turn):
                    pass
                turns += counting

    tasks = [asyncio.create_task(worker(ids[w::concurrency])) for w in range(concurrency)]
    await asyncio.sleep(1.5)
    backends = await _backends(store) if schema else []
    counting = True
    cpu, wall = time.process_time(), time.perf_counter()
    server_cpu = sum(map(procs.cpu_seconds, backends))
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server_cpu = sum(map(procs.cpu_seconds, backends)) - server_cpu
    counted = turns
    stop = True
    await asyncio.gather(*tasks)
    await store.close()
    return {
        "turns_per_s": counted / wall,
        "cpu_us_per_turn": cpu / max(counted, 1) * 1e6,
        "postgres_cpu_us_per_turn": server_cpu / max(counted, 1) * 1e6,
        "backends": len(backends),
    }


async def _backends(store: object) -> list[int]:
    """The PostgreSQL server processes of the store's pooled connections (benchmark only:
    reaches into CachedStore and PostgresStore for the pool)."""
    pool = store._inner._pool  # type: ignore[attr-defined]
    pids = set()
    for _ in range(4 * pool.get_max_size()):
        async with pool.acquire() as conn:
            pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
    return sorted(pids)


def one_round(root: Path, args: argparse.Namespace, tmp: Path, n: int) -> dict[str, float]:
    """A round in a process of its own, running `root`'s code."""
    schema = postgres.fresh_schema() if args.postgres else ""
    url = postgres.URL if schema else f"sqlite:///{tmp / f'turns-{n}.db'}"
    command = [sys.executable, "-m", "bench.turns", "--round", url, schema]
    command += ["--concurrency", str(args.concurrency), "--seconds", str(args.seconds)]
    try:
        out = subprocess.run(command, cwd=root, check=True, capture_output=True, text=True)
    finally:
        if schema:
            procs.run(postgres.drop_schema(schema))
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__)
    parser.add_argument("--postgres", action="store_true", help=f"chatd on {postgres.URL}")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", metavar="REV", help="alternate with REV's code")
    parser.add_argument("--round", nargs=2, metavar=("URL", "SCHEMA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.round:
        url, schema = args.round
        print(json.dumps(procs.run(measure(url, schema, args.concurrency, args.seconds))))
        return
    with tempfile.TemporaryDirectory(prefix="chatd-turns-") as folder:
        tmp = Path(folder)
        roots = {"working tree": procs.ROOT}
        if args.against:
            (tmp / "rev").mkdir()
            tree = export(args.against, tmp / "rev")
            for name in ("ab.py", "turns.py"):  # this harness, whatever REV has
                shutil.copy(procs.ROOT / "bench" / name, tree / "bench" / name)
            roots = {args.against: tree, **roots}
        best: dict[str, dict[str, float]] = {}
        n = 0
        order = list(roots.items())
        for i in range(args.rounds):
            # ABBA: the round after another pays for its clean-up (a dropped schema,
            # a checkpoint), so neither side may always come second.
            for name, root in order if i % 2 == 0 else order[::-1]:
                procs.run(procs.QUIET.wait())
                n += 1
                r = one_round(root, args, tmp, n)
                backend = ""
                if args.postgres:
                    backend = (
                        f"  PostgreSQL backends ({r['backends']:.0f})"
                        f" {r['postgres_cpu_us_per_turn']:6.0f} us/turn"
                    )
                print(
                    f"  {name:14} {r['turns_per_s']:7.0f} turns/s"
                    f"  CPU {r['cpu_us_per_turn']:6.0f} us/turn{backend}",
                    flush=True,
                )
                if name not in best or r["cpu_us_per_turn"] < best[name]["cpu_us_per_turn"]:
                    best[name] = r
    store = "postgresql" if args.postgres else "sqlite"
    line = f"best rounds, {store} c={args.concurrency}:"
    for name, r in best.items():
        line += f" {name} {r['cpu_us_per_turn']:.0f} us/turn ({r['turns_per_s']:.0f} turns/s);"
    if args.against:
        old, new = best[args.against], best["working tree"]
        line += f" {new['cpu_us_per_turn'] / old['cpu_us_per_turn']:.2f}x CPU"
    print(line)


if __name__ == "__main__":
    main()
