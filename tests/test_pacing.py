"""Heavy work on the event loop runs in slices, and full garbage collections wait for it."""

from __future__ import annotations

import asyncio
import gc
import time

from server.sessions.pacing import Pacer, deferred_full_collection, paced_map


async def test_paced_work_lets_other_tasks_run_between_slices() -> None:
    woke = 0
    done = asyncio.Event()

    async def other() -> None:
        nonlocal woke
        while not done.is_set():
            woke += 1
            await asyncio.sleep(0)

    def busy(item: int) -> int:
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass
        return item * 2

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    woke = 0
    result = await paced_map(busy, range(60))  # about 60 ms of CPU, slices of 4 ms
    done.set()
    await task
    assert result == [i * 2 for i in range(60)]
    assert woke >= 3, "the other task ran between slices"


async def test_a_pacer_does_not_yield_before_its_slice_is_used() -> None:
    pacer = Pacer(slice_seconds=60.0)
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    task = asyncio.create_task(other())
    for _ in range(1000):
        await pacer.tick()
    assert not ran, "no yield within the slice"
    await task


async def test_full_collections_are_deferred_until_the_last_heavy_block_ends() -> None:
    before = gc.get_threshold()
    with deferred_full_collection():
        deferred = gc.get_threshold()
        assert deferred[:2] == before[:2] and deferred[2] > 1_000_000
        with deferred_full_collection():
            pass
        await asyncio.sleep(0)
        assert gc.get_threshold() == deferred, "an inner block ending changes nothing"
    assert gc.get_threshold() == deferred, "restored on the loop's next turn, not at once"
    await asyncio.sleep(0)
    assert gc.get_threshold() == before
