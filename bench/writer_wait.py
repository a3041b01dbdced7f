"""How long another tenant's writes wait for SQLite's writer while one session is created
with a long history (an import or a fork).

Every write goes through SqliteStore's one writer thread, so a create that held it for the
whole insert held every other tenant's turn for as long. This opens a SqliteStore in a
temporary folder and, while one create of `--messages` messages runs, commits a small turn
to another tenant's session again and again (5 ms apart), recording each one's latency.
The row encoding of the create runs on the same event loop before its inserts; only the
turns committed while the create's inserts run are reported, next to all of them.

    .venv/bin/python -m bench.writer_wait --messages 300000
    .venv/bin/python -m bench.writer_wait --messages 300000 --one-job   # as before staging

`--one-job` raises the store's staging threshold above the history, so the create runs as
the single writer job every create was before long ones were staged.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from server.sessions.model import Message, Part, Role, Session, SessionSettings
from server.store import SqliteStore
from server.store.sqlite import store as sqlite_store

T0 = 1_700_000_000.0


def history(count: int) -> list[Message]:
    return [
        Message(
            (Role.USER, Role.MODEL)[i % 2],
            (Part(text=f"message {i}"),),
            seq=i,
            create_time=T0 + i,
            turn_id=f"t{i // 2}",
        )
        for i in range(count)
    ]


def session(tenant: str, session_id: str, messages: int = 0) -> Session:
    return Session(
        tenant,
        session_id,
        SessionSettings(model="echo"),
        create_time=T0,
        update_time=T0,
        message_count=messages,
        next_seq=messages,
        uid=f"uid-{session_id}",
    )


def summary(name: str, times: list[float]) -> str:
    if not times:
        return f"  {name:<28} n=    0"
    ordered = sorted(times)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"  {name:<28} n={len(ordered):5d}  p50 {p50 * 1e3:6.1f} ms"
        f"  p99 {p99 * 1e3:6.1f} ms  max {ordered[-1] * 1e3:7.1f} ms"
    )


async def main(messages: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = await SqliteStore.open(str(Path(folder) / "chatd.db"))
        try:
            quiet = session("quiet", "quiet")
            await store.create_session(quiet)
            big = history(messages)
            done = asyncio.Event()
            took: list[tuple[float, float]] = []  # (start, latency)

            async def turns() -> None:
                nonlocal quiet
                while not done.is_set():
                    seq = quiet.next_seq
                    added = [
                        Message(Role.USER, (Part(text="hi"),), seq=seq, create_time=T0),
                        Message(Role.MODEL, (Part(text="yo"),), seq=seq + 1, create_time=T0),
                    ]
                    after = quiet.evolve(
                        version=quiet.version + 1, next_seq=seq + 2, message_count=seq + 2
                    )
                    start = time.perf_counter()
                    await store.commit_turn(after, added, quiet.version)
                    took.append((start, time.perf_counter() - start))
                    quiet = after
                    await asyncio.sleep(0.005)

            probe = asyncio.create_task(turns())
            await asyncio.sleep(0.2)
            start = time.perf_counter()
            await store.create_session(session("noisy", "big", messages), big)
            elapsed = time.perf_counter() - start
            done.set()
            await probe
            # The encoding takes the first part of the create; its inserts come after it.
            # Turns that ended within the last inserts' span show the writer's wait.
            during = [t for s, t in took if start <= s <= start + elapsed]
            longest = max((t for _, t in took), default=0.0)
            print(f"create of {messages:,} messages: {elapsed:.2f} s")
            print(summary("other tenant's turns (all)", [t for _, t in took]))
            print(summary("during the create", during))
            print(f"  longest wait {longest * 1e3:.1f} ms")
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--one-job", action="store_true", help="insert in one writer job")
    args = parser.parse_args()
    if args.one_job:
        sqlite_store._STAGE_ABOVE = args.messages
    asyncio.run(main(args.messages))
