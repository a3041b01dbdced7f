"""`python -m bench.paced [--runs N] [--probe]`: only the gemini scenario's paced part.

About 40 s a run.

200 concurrent StreamReply calls on a fresh chatd (`--provider gemini`) while a fake Gemini
in its own process paces each reply at 20 chunks/s, as `python -m bench --only gemini` runs
it after its part 1 (bench/gemini.py, `paced`). Prints the bench's line and one JSON line
per run: added inter-chunk gap p50/p99 (ms; all gaps, and once every stream has started),
chatd's CPU in cores, first delta p99 (ms) and RSS per stream (KB).

With `--probe`, chatd runs under bench/chatd_probe.py (CHATD_PROBE_TRACEMALLOC=1 in the
environment adds tracemalloc) and is probed just before the 200 calls, at `--probe-at`
seconds into them (all upstream by then) and after them; the probes' JSON lines (RSS by
mapping, malloc arena, collections and their pauses, object types and source lines
grown) are printed after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import gemini
from bench.procs import Server

FIELDS = (
    "added_gap_p50_ms",
    "added_gap_p99_ms",
    "added_steady_gap_p99_ms",
    "server_cpu_share",
    "first_delta_p99_ms",
)


def prober(at: float) -> Callable[[Server], Awaitable[None]]:
    async def probe(server: Server) -> None:
        os.kill(server.pid, signal.SIGUSR1)
        await asyncio.sleep(at)
        os.kill(server.pid, signal.SIGUSR1)
        await asyncio.sleep(gemini.CHUNKS * gemini.PACE + 1.5 - at)
        os.kill(server.pid, signal.SIGUSR1)

    return probe


async def main(runs: int, probe_at: float | None) -> None:
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="chatd-paced-") as folder:
            during = None if probe_at is None else prober(probe_at)
            result = await gemini.paced(Path(folder), print, during)
            if probe_at is not None:
                log = Path(folder) / "chatd-gemini-paced.log"
                for line in log.read_text().splitlines():
                    if line.startswith('{"probe"'):
                        print(line)
        figures = {key: round(result[key], 2) for key in FIELDS}
        figures["rss_kb_per_stream"] = round(result["rss_bytes_per_stream"] / 1024, 1)
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--probe", action="store_true", help="chatd under bench.chatd_probe")
    parser.add_argument("--probe-at", type=float, default=1.5, help="seconds into the calls")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.probe_at if args.probe else None))
