"""`python -m bench.paced [--runs N]`: only the gemini scenario's paced part (about 40 s a run).

200 concurrent StreamReply calls on a fresh chatd (`--provider gemini`) while a fake Gemini
in its own process paces each reply at 20 chunks/s, as `python -m bench --only gemini` runs
it after its part 1 (bench/gemini.py, `paced`). Prints the bench's line and one JSON line
per run: added inter-chunk gap p50/p99 (ms; all gaps, and once every stream has started),
chatd's CPU in cores, first delta p99 (ms) and RSS per stream (KB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from bench import gemini

FIELDS = (
    "added_gap_p50_ms",
    "added_gap_p99_ms",
    "added_steady_gap_p99_ms",
    "server_cpu_share",
    "first_delta_p99_ms",
)


async def main(runs: int) -> None:
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="chatd-paced-") as folder:
            result = await gemini.paced(Path(folder), print)
        figures = {key: round(result[key], 2) for key in FIELDS}
        figures["rss_kb_per_stream"] = round(result["rss_bytes_per_stream"] / 1024, 1)
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    asyncio.run(main(parser.parse_args().runs))
