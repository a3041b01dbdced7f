"""`python -m bench.chatd_probe serve [chatd flags]`: chatd with heap and collector probes.

For the paced streams' breakdown in bench/README.md ("The paced streams"). Runs chatd's
own `main()` after setting up:
- garbage collection timing through `gc.callbacks`: per generation, how many collections,
  their total and longest time (ms);
- with CHATD_PROBE_TRACEMALLOC=1, `tracemalloc` (one frame), started before chatd's
  imports (it roughly doubles RSS and slows chatd: use it for where, not how much).

Each SIGUSR1 prints one JSON line on stderr, `{"probe": N, ...}`: VmRSS (KB), RSS by
mapping (`[heap]`, anonymous, files; KB, from /proc/self/smaps), glibc's main arena
(`mallinfo2`: arena, in use, free; bytes), the collections since the previous probe,
the 30 object types whose count grew most since it (`gc.get_objects()`), and with
tracemalloc the 30 source lines whose traced bytes grew most since it. Linux and glibc only.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from collections import Counter
from typing import Any

TOP = 30


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


class Probe:
    def __init__(self) -> None:
        self.count = 0
        self.collections = {g: [0, 0.0, 0.0] for g in range(3)}
        self._started = 0.0
        self._types: Counter[str] = Counter()
        self._snapshot: tracemalloc.Snapshot | None = None
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        self._mallinfo = libc.mallinfo2

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        row = self.collections[info["generation"]]
        row[0] += 1
        row[1] += took * 1e3
        row[2] = max(row[2], took * 1e3)

    def report(self, *_: object) -> None:
        self.count += 1
        out: dict[str, Any] = {"probe": self.count}
        with open("/proc/self/status") as status:
            out["vm_rss_kb"] = next(int(x.split()[1]) for x in status if x.startswith("VmRSS"))
        out["rss_kb_by_mapping"] = _smaps()
        info = self._mallinfo()
        out["main_arena"] = {
            "arena": info.arena,
            "in_use": info.uordblks,
            "free": info.fordblks,
        }
        out["collections"] = {
            str(g): {"count": c, "total_ms": round(t, 1), "max_ms": round(m, 2)}
            for g, (c, t, m) in self.collections.items()
        }
        self.collections = {g: [0, 0.0, 0.0] for g in range(3)}
        types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        grown = types.copy()
        grown.subtract(self._types)
        out["tracked_objects"] = sum(types.values())
        out["types_grown"] = dict(grown.most_common(TOP))
        self._types = types
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot()
            if self._snapshot is not None:
                stats = snapshot.compare_to(self._snapshot, "lineno")[:TOP]
                out["lines_grown"] = [
                    {"line": str(s.traceback), "bytes": s.size_diff, "blocks": s.count_diff}
                    for s in stats
                ]
            self._snapshot = snapshot
        print(json.dumps(out), file=sys.stderr, flush=True)


def _smaps() -> dict[str, int]:
    """RSS (KB) by mapping: `[heap]`, `anonymous`, `[stack]`..., and `files`."""
    out: Counter[str] = Counter()
    name = "anonymous"
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):
                path = fields[5] if len(fields) > 5 else ""
                name = "files" if path.startswith("/") else (path or "anonymous")
            elif fields[0] == "Rss:":
                out[name] += int(fields[1])
    return dict(out)


def main() -> None:
    if os.environ.get("CHATD_PROBE_TRACEMALLOC") == "1":
        tracemalloc.start(1)
    probe = Probe()
    gc.callbacks.append(probe.on_gc)
    signal.signal(signal.SIGUSR1, probe.report)
    from server.__main__ import main as chatd_main

    chatd_main(sys.argv[1:])


if __name__ == "__main__":
    main()
