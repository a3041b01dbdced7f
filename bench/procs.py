"""Server processes for the benchmark: spawn, wait for health SERVING, read RSS and CPU, stop."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
HOST = "127.0.0.1"
_TICKS = os.sysconf("SC_CLK_TCK")
# Without these a refused connection backs off for about a second, which start-up
# timing would count.
_FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 20),
]

# Settings that would throttle or disturb a benchmark; CHATD_METRICS_LISTEN is harmless
# where the setting does not exist (unknown variables are ignored).
CHATD_ENV = {
    "CHATD_RATE_LIMIT": "0",
    "CHATD_MAX_STREAMS": "0",
    "CHATD_METRICS_LISTEN": "",
    "CHATD_MAX_SESSIONS_PER_TENANT": "0",
}


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed, as chatd uses it then; None means asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def event_loop_name() -> str:
    return "uvloop" if loop_factory() is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the loop chatd would pick (baseline server and load generator)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent busy (not idle or waiting), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


class Quiet:
    """Waits, before each measured load, until other work on the machine has died down."""

    # Other processes (test suites, builds) skew a ratio; waiting is bounded per load and
    # in total, so a busy machine makes the run slower by at most `budget` seconds.

    def __init__(self, threshold: float = 0.3, each: float = 10.0, budget: float = 90.0) -> None:
        self.threshold, self.each, self.budget = threshold, each, budget
        self.waited = 0.0

    async def wait(self) -> float:
        """CPUs busy in the last 0.5 s sample (the machine's, servers idle included)."""
        started = time.monotonic()
        while True:
            before = machine_busy_seconds()
            await asyncio.sleep(0.5)
            busy = (machine_busy_seconds() - before) / 0.5
            spent = time.monotonic() - started
            if busy < self.threshold or spent >= self.each or self.waited + spent >= self.budget:
                self.waited += spent
                return busy


QUIET = Quiet()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def wait_serving(address: str, limit: float, proc: asyncio.subprocess.Process) -> None:
    """Polls grpc.health.v1 Check every 5 ms until SERVING; raises if the process dies."""
    deadline = time.monotonic() + limit
    async with grpc.aio.insecure_channel(address, options=_FAST_RECONNECT) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before serving")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.005)
    raise TimeoutError(f"{address} not SERVING within {limit} s")


class Server:
    """A server subprocess on 127.0.0.1:<free port>; its stderr goes to `log`."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.args = [sys.executable, *[a.replace("{port}", str(self.port)) for a in args]]
        self.env = {**os.environ, **env}
        self.log = log
        # The folder it runs in, whose packages it imports first (bench.ab: another revision).
        self.cwd = ROOT
        self.proc: asyncio.subprocess.Process | None = None
        self.startup_seconds = 0.0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, limit: float = 30) -> Server:
        """Spawns the process and returns once health says SERVING (timing it)."""
        with self.log.open("ab") as log:
            started = time.perf_counter()
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, cwd=self.cwd, env=self.env, stderr=log
            )
        try:
            await wait_serving(self.address, limit, self.proc)
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def rss(self) -> int:
        return rss_bytes(self.pid)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def chatd(database_url: str, log: Path, provider: str = "echo", **env: str) -> Server:
    """chatd on the echo provider (or `provider`), configured as the benchmark needs."""
    args = ["-m", "server", "serve", "--listen", HOST + ":{port}", "--database-url"]
    args += [database_url, "--log-level", "warning", "--log-format", "json", "--provider", provider]
    return Server("chatd", args, {**CHATD_ENV, **env}, log)


def baseline(log: Path) -> Server:
    """The bare grpc.aio server of bench/baseline.py."""
    return Server("bare", ["-m", "bench.baseline", "--listen", HOST + ":{port}"], {}, log)
