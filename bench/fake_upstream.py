"""The fake Gemini (tests/fake_gemini/) in a process of its own, for the gemini scenario.

`python -m bench.fake_upstream --chunks 50 --chunk-delay 0.05` serves on 127.0.0.1 (a
free port), prints `{"port": N, "pid": P}` on stdout, then answers one command a line on
stdin: `stats` prints what it received since the previous `stats` (requests per method,
contents per generate request, body sizes, its own CPU, the most streams in flight at
once, how late a 50 ms sleep on its event loop woke up) as one JSON line. It stops when
stdin closes, so it never outlives the harness.

Every generate call gets the same reply, streamed as `--chunks` SSE events `--chunk-delay`
seconds apart; countTokens counts words. Requests are counted, not kept: the fake's own
list of requests would grow by a 200 KB body per call at 1,000 messages of history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

from tests.fake_gemini import (
    FakeGemini,
    RecordedRequest,
    Reply,
    Script,
    echo_default,
    usage,
)

# 200 characters, as long as each message of the preloaded history: a session's context
# window then holds as many bytes after a few turns as before them, so chatd (whose window
# slides over the turns it stores) and the SDK's chat (a fresh chat on the preloaded history
# every turn) send requests of the same size. 50 chunks make it 4 characters a chunk.
REPLY_TEXT = (
    "Revenue is up four percent on plan. Three risks: supplier prices fixed while costs "
    "rise, two large customers renewing next quarter, and platform hiring three months "
    "behind: the spring release."
)
LAG_PERIOD = 0.05  # seconds the event-loop probe sleeps


class CountingFake(FakeGemini):
    """The fake with requests counted instead of recorded, plus in-flight and lag probes."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(strict=False)
        self._lock = threading.Lock()
        self._reply = reply
        self.set_default(self._answer_with)
        self._streams = 0
        self._stats = self._fresh()

    def _fresh(self) -> dict[str, Any]:
        return {
            "methods": Counter(),
            "contents": Counter(),
            "bytes": [],
            "max_streams": self._streams,
            "lag": [],
            "cpu_started": time.process_time(),
            "started": time.monotonic(),
        }

    def _answer_with(self, request: RecordedRequest) -> Script:
        if request.method == "countTokens":
            return echo_default(request)
        return self._reply

    def _record(self, items: list[Any], item: Any) -> None:
        if not isinstance(item, RecordedRequest):
            super()._record(items, item)
            return
        with self._lock:
            stats = self._stats
            stats["methods"][item.method or "unrouted"] += 1
            if item.method != "countTokens":
                stats["contents"][len(item.contents)] += 1
            stats["bytes"].append(len(item.raw_body))

    async def _stream(self, conn: Any, request: RecordedRequest, script: Any) -> None:
        with self._lock:
            self._streams += 1
            self._stats["max_streams"] = max(self._stats["max_streams"], self._streams)
        try:
            await super()._stream(conn, request, script)
        finally:
            with self._lock:
                self._streams -= 1

    async def probe_lag(self) -> None:
        """Records how late each LAG_PERIOD sleep wakes up: the fake's own pacing error."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # cancelled when the fake stops
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_PERIOD)
            late = loop.time() - started - LAG_PERIOD
            with self._lock:
                self._stats["lag"].append(late)

    def start_probe(self) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.probe_lag(), self._loop)

    def take_stats(self) -> dict[str, Any]:
        """What arrived since the last call, and resets the counts."""
        with self._lock:
            stats, self._stats = self._stats, self._fresh()
        sizes = stats["bytes"]
        lag = sorted(stats["lag"])
        requests = sum(stats["methods"].values())

        def pick(q: float) -> float:
            return lag[min(len(lag) - 1, int(q * len(lag)))] * 1e3 if lag else 0.0

        return {
            "requests": dict(stats["methods"]),
            "contents": {str(k): v for k, v in sorted(stats["contents"].items())},
            "body_bytes_min": min(sizes, default=0),
            "body_bytes_max": max(sizes, default=0),
            "body_bytes_mean": sum(sizes) / len(sizes) if sizes else 0,
            "cpu_us_per_request": (time.process_time() - stats["cpu_started"])
            / max(requests, 1)
            * 1e6,
            "seconds": time.monotonic() - stats["started"],
            "max_streams": stats["max_streams"],
            "loop_lag_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)},
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_upstream", description=__doc__)
    parser.add_argument("--chunks", type=int, default=50, help="SSE events per reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between events")
    args = parser.parse_args()
    reply = Reply(
        text=REPLY_TEXT,
        chunks=args.chunks,
        chunk_delay=args.chunk_delay,
        usage=usage(prompt=1000, candidates=250),
    )
    fake = CountingFake(reply)
    fake.start()
    fake.start_probe()
    port = int(fake.base_url.rsplit(":", 1)[1])
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(fake.take_stats()), flush=True)
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
