"""chatd at a git revision against chatd of the working tree, alternately, on one load.

    python -m bench.ab REV [--kind unary|stream] [--postgres] [--concurrency 16]
        [--rounds 3] [--duration 4]

Each side is a server process of its own (REV's code is `git archive`d to a temporary
folder and run from there, with the same interpreter and installed packages), with 64
fresh sessions and the 31-word message of the other scenarios. The two alternate, load
by load, `--rounds` times; each load reports calls/s and the server's CPU per call (all
its threads, from /proc). On a shared machine both drift with other work, but the two
sides drift together, so their ratio holds better than either figure: the best round of
each is compared, and every round is printed.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import postgres, procs
from bench.chatd_client import SEND, STREAM, Chatd, send_payloads, stream_payloads, user_text
from bench.load import encode, run_load


def export(rev: str, into: Path) -> Path:
    """REV's tree, unpacked under `into`."""
    tree = into / "tree"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(procs.ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


async def start(name: str, root: Path, tmp: Path, on_postgres: bool) -> tuple[procs.Server, str]:
    schema = postgres.fresh_schema() if on_postgres else ""
    url = postgres.URL if schema else f"sqlite:///{tmp / f'{name}.db'}"
    env = {"CHATD_POSTGRES_SCHEMA": schema} if schema else {}
    server = procs.chatd(url, tmp / f"{name}.log", **env)
    server.cwd = root
    return await server.start(), schema


async def main(args: argparse.Namespace) -> None:
    method, payloads = (SEND, send_payloads) if args.kind == "unary" else (STREAM, stream_payloads)
    with tempfile.TemporaryDirectory(prefix="chatd-ab-") as folder:
        tmp = Path(folder)
        roots = {args.rev: export(args.rev, tmp), "working tree": procs.ROOT}
        jobs: dict[str, dict[str, Any]] = {}
        servers: list[tuple[procs.Server, str]] = []
        try:
            for name, root in roots.items():
                server, schema = await start(name.replace(" ", "-"), root, tmp, args.postgres)
                servers.append((server, schema))
                client = Chatd(server.address)
                try:
                    ids = await client.create_sessions("ab", 64)
                finally:
                    await client.close()
                jobs[name] = {
                    "address": server.address,
                    "server_pid": server.pid,
                    "method": method,
                    "payloads": encode(payloads(ids, user_text(31))),
                    "streaming": args.kind == "stream",
                    "concurrency": args.concurrency,
                    "warmup": 1.5,
                    "duration": args.duration,
                }
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
            for _ in range(args.rounds):
                for name, job in jobs.items():
                    result = await run_load(job)
                    results[name].append(result)
                    print(
                        f"  {name:14} {result['throughput']:7.0f} calls/s"
                        f"  server CPU {result['server_cpu_us_per_call']:6.0f} us/call"
                        f"  p50 {result['p50_ms']:6.2f} p99 {result['p99_ms']:7.2f} ms"
                        f"  other CPU {result['other_cpu_share']:.2f}",
                        flush=True,
                    )
        finally:
            for server, schema in servers:
                await server.stop()
                if schema:
                    await postgres.drop_schema(schema)
    best = {
        name: (
            max(r["throughput"] for r in rs),
            min(r["server_cpu_us_per_call"] for r in rs),
        )
        for name, rs in results.items()
    }
    (old_rate, old_cpu), (new_rate, new_cpu) = best[args.rev], best["working tree"]
    print(
        f"best rounds, {args.kind} c={args.concurrency}:"
        f" {args.rev} {old_rate:.0f} calls/s, {old_cpu:.0f} us/call;"
        f" working tree {new_rate:.0f} calls/s ({new_rate / old_rate:.2f}x),"
        f" {new_cpu:.0f} us/call ({new_cpu / old_cpu:.2f}x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("rev")
    parser.add_argument("--kind", choices=("unary", "stream"), default="unary")
    parser.add_argument("--postgres", action="store_true", help=f"chatd on {postgres.URL}")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    procs.run(main(parser.parse_args()))
