"""CachedStore specifics: hits, bounds, eviction, and never serving a failed write."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace as dataclass_replace

import pytest

from server.sessions.errors import Conflict, NotFound
from server.sessions.model import Message, Role, Session
from server.sessions.ports import ReplyWrite, RequestRecord, SessionStore
from server.store import CachedStore, MemoryStore, rules

from .builders import (
    EVERY_PART_KIND,
    T0,
    TENANT,
    commit,
    history,
    new_session,
    text_message,
    turn_of,
    with_history,
)


class SpyStore(MemoryStore):
    """A MemoryStore that counts reads, can fail writes and can hold a history load or a
    session read (`held` is set once one waits at the hold)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.fail_commits = False
        self.hold_loads: asyncio.Event | None = None
        self.hold_sessions: asyncio.Event | None = None
        self.held = asyncio.Event()

    async def get_session(self, tenant: str, session_id: str) -> Session:
        self.calls["get_session"] += 1
        loaded = await super().get_session(tenant, session_id)
        if self.hold_sessions is not None:
            self.held.set()
            await self.hold_sessions.wait()
        return loaded

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        self.calls["recent_messages"] += 1
        loaded = await super().recent_messages(tenant, session_id, limit)
        if self.hold_loads is not None:
            self.held.set()
            await self.hold_loads.wait()
        return loaded

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        self.calls["list_messages"] += 1
        return await super().list_messages(tenant, session_id, after_seq, limit)

    async def commit_turn(
        self,
        session: Session,
        messages: Sequence[Message],
        expected_version: int,
        request: RequestRecord | None = None,
        reply: ReplyWrite | None = None,
    ) -> None:
        if self.fail_commits:
            raise OSError("disk on fire")
        await super().commit_turn(session, messages, expected_version, request, reply)


@pytest.fixture
def inner() -> SpyStore:
    return SpyStore()


async def test_reads_after_writes_through_the_cache_never_reach_inner(inner: SpyStore) -> None:
    cache = CachedStore(inner, 1_000_000)
    session = new_session()
    await cache.create_session(session)
    session = await commit(cache, session, "a", "b")
    assert await cache.get_session(TENANT, "s1") == session
    assert await history(cache, session) == ["a", "b"]
    assert [m.text for m in await cache.recent_messages(TENANT, "s1", 1)] == ["b"]
    assert [m.seq for m in await cache.list_messages(TENANT, "s1", 0, 10)] == [1]
    assert inner.calls == Counter()
    assert cache.stats.hits == 4
    assert cache.stats.misses == 0


async def test_a_cold_session_is_loaded_once_then_served_from_the_tail(inner: SpyStore) -> None:
    session = new_session()
    await inner.create_session(session)
    for i in range(5):
        session = await commit(inner, session, f"m{i}")
    cache = CachedStore(inner, 1_000_000)
    assert await cache.get_session(TENANT, "s1") == session
    assert await cache.get_session(TENANT, "s1") == session
    assert inner.calls["get_session"] == 1
    assert [m.text for m in await cache.recent_messages(TENANT, "s1", 2)] == ["m3", "m4"]
    assert [m.text for m in await cache.recent_messages(TENANT, "s1", 1)] == ["m4"]
    assert inner.calls["recent_messages"] == 1
    # More than the tail holds: loaded again, and now known to be the whole history.
    assert len(await cache.recent_messages(TENANT, "s1", 3)) == 3
    assert len(await cache.recent_messages(TENANT, "s1", 50)) == 5
    assert len(await cache.recent_messages(TENANT, "s1")) == 5
    assert inner.calls["recent_messages"] == 3
    # list_messages reaches behind the tail only when the tail cannot answer.
    assert [m.seq for m in await cache.list_messages(TENANT, "s1", -1, 2)] == [0, 1]
    assert inner.calls["list_messages"] == 0


async def test_size_stays_bounded_and_evicted_sessions_read_from_inner(inner: SpyStore) -> None:
    max_bytes = 40_000
    cache = CachedStore(inner, max_bytes)
    sessions = []
    for i in range(150):
        session = new_session(f"s{i:03}")
        await cache.create_session(session)
        session = await commit(cache, session, "x" * 300, f"reply {i}")
        sessions.append(session)
        assert cache.stats.bytes <= max_bytes
    stats = cache.stats
    assert stats.evictions > 0
    assert 0 < stats.entries < len(sessions)
    for session in sessions:  # the oldest were evicted long ago
        assert await cache.get_session(TENANT, session.session_id) == session
        assert await history(cache, session) == ["x" * 300, f"reply {int(session.session_id[1:])}"]
        assert cache.stats.bytes <= max_bytes
    assert cache.stats.misses > 0


async def test_one_huge_session_cannot_take_over_the_cache(inner: SpyStore) -> None:
    cache = CachedStore(inner, 100_000)
    small = new_session("small")
    await cache.create_session(small)
    small = await commit(cache, small, "tiny")
    huge = new_session("huge")
    await cache.create_session(huge)
    for _ in range(10):
        huge = await commit(cache, huge, "y" * 20_000)
    assert cache.stats.bytes <= 100_000 // 4 + 2_000  # the huge entry's share, plus 'small'
    assert await history(cache, huge) == ["y" * 20_000] * 10
    inner.calls.clear()
    assert await history(cache, small) == ["tiny"]
    assert inner.calls == Counter()  # 'small' was never pushed out


async def test_the_cached_tail_is_capped_per_session(inner: SpyStore) -> None:
    cache = CachedStore(inner, 1_000_000, max_tail_messages=4)
    session = new_session()
    await cache.create_session(session)
    for i in range(10):
        session = await commit(cache, session, f"m{i}")
    assert [m.text for m in await cache.recent_messages(TENANT, "s1", 4)] == [
        f"m{i}" for i in range(6, 10)
    ]
    assert inner.calls["recent_messages"] == 0
    assert [m.text for m in await cache.recent_messages(TENANT, "s1", 6)] == [
        f"m{i}" for i in range(4, 10)
    ]
    assert inner.calls["recent_messages"] == 1


async def test_a_failed_inner_write_does_not_change_cached_data(inner: SpyStore) -> None:
    cache = CachedStore(inner, 1_000_000)
    session = new_session()
    await cache.create_session(session)
    session = await commit(cache, session, "before")
    inner.fail_commits = True
    with pytest.raises(OSError, match="fire"):
        await commit(cache, session, "never stored")
    inner.fail_commits = False
    assert await cache.get_session(TENANT, "s1") == session
    assert await history(cache, session) == ["before"]


async def test_a_conflict_from_inner_drops_the_stale_entry(inner: SpyStore) -> None:
    """Another writer moved the session on: the cache reloads rather than serve stale data."""
    cache = CachedStore(inner, 1_000_000)
    session = new_session()
    await cache.create_session(session)
    theirs = await commit(inner, session, "written elsewhere")
    with pytest.raises(Conflict):
        await commit(cache, session, "lost")
    assert await cache.get_session(TENANT, "s1") == theirs
    assert await history(cache, theirs) == ["written elsewhere"]


async def test_a_slow_history_load_cannot_overwrite_a_newer_commit(inner: SpyStore) -> None:
    """Loads and writes of one session are serialized, so the tail never goes stale."""
    cache = CachedStore(inner, 1_000_000)
    session = new_session()
    await inner.create_session(session)
    session = await commit(inner, session, "old")
    await cache.get_session(TENANT, "s1")
    inner.hold_loads = asyncio.Event()
    load = asyncio.create_task(cache.recent_messages(TENANT, "s1"))
    await inner.held.wait()
    after, messages = turn_of(session, ["new"])
    write = asyncio.create_task(cache.commit_turn(after, messages, session.version))
    # One turn of the loop: the write's first step runs to the session's lock, held by
    # the load, where it waits (nothing before it awaits anything else).
    await asyncio.sleep(0)
    assert not write.done()
    # Cached reads of other data are not blocked meanwhile.
    assert await cache.get_session(TENANT, "s1") == session
    inner.hold_loads.set()
    assert [m.text for m in await load] == ["old"]
    await write
    inner.calls.clear()
    assert await history(cache, after) == ["old", "new"]
    assert inner.calls == Counter()


async def test_the_memory_url_is_never_cached_and_stats_start_at_zero() -> None:
    from server.store import open_store

    store: SessionStore = await open_store("memory://", cache_max_bytes=1000)
    assert isinstance(store, MemoryStore)
    assert CachedStore(MemoryStore(), 10).stats.bytes == 0


# ----------------------------------------------------------------------------- shared mode


async def test_shared_get_session_always_reads_inner_and_validates_one_history_read(
    inner: SpyStore,
) -> None:
    cache = CachedStore(inner, 1_000_000, shared=True)
    session = new_session()
    await cache.create_session(session)
    session = await commit(cache, session, "a", "b")
    # Without a get_session first, history comes from inner.
    assert await history(cache, session) == ["a", "b"]
    assert inner.calls["recent_messages"] == 1
    assert await cache.get_session(TENANT, "s1") == session
    assert inner.calls["get_session"] == 1
    assert await history(cache, session) == ["a", "b"]  # validated: from the tail
    assert inner.calls["recent_messages"] == 1
    assert [m.seq for m in await cache.list_messages(TENANT, "s1", 0, 10)] == [1]
    assert inner.calls["list_messages"] == 1  # the validation was used up
    await cache.get_session(TENANT, "s1")
    assert [m.seq for m in await cache.list_messages(TENANT, "s1", 0, 10)] == [1]
    assert inner.calls == Counter(get_session=2, recent_messages=1, list_messages=1)


async def test_shared_mode_drops_the_tail_when_another_writer_moved_the_session(
    inner: SpyStore,
) -> None:
    cache = CachedStore(inner, 1_000_000, shared=True)
    session = new_session()
    await cache.create_session(session)
    session = await commit(cache, session, "mine")
    await cache.get_session(TENANT, "s1")
    theirs = await commit(inner, session, "theirs")  # another replica, behind our back
    assert await cache.get_session(TENANT, "s1") == theirs
    assert await history(cache, theirs) == ["mine", "theirs"]
    # Our next turn, based on the fresh read, goes through and is cached again.
    ours = await commit(cache, theirs, "mine again")
    assert await cache.get_session(TENANT, "s1") == ours
    inner.calls.clear()
    assert await history(cache, ours) == ["mine", "theirs", "mine again"]
    assert inner.calls == Counter()


async def test_shared_mode_forgets_a_session_deleted_elsewhere(inner: SpyStore) -> None:
    cache = CachedStore(inner, 1_000_000, shared=True)
    await cache.create_session(new_session())
    await cache.get_session(TENANT, "s1")
    await inner.delete_session(TENANT, "s1")
    with pytest.raises(NotFound):
        await cache.get_session(TENANT, "s1")
    with pytest.raises(NotFound):
        await cache.recent_messages(TENANT, "s1")


async def test_a_cached_session_that_expired_is_not_served_after_a_sweep(
    inner: SpyStore,
) -> None:
    """Unshared, every hit skips inner: the sweep must drop what it may have deleted."""
    cache = CachedStore(inner, 1_000_000)
    for sid, expire in (("due", T0 + 5), ("later", T0 + 50)):
        session = new_session(sid, expire=expire)
        await cache.create_session(session)
        await commit(cache, session, "hi")
    assert await cache.delete_expired(T0 + 10, 10) == 1
    with pytest.raises(NotFound):
        await cache.get_session(TENANT, "due")
    assert (await cache.get_session(TENANT, "later")).session_id == "later"


async def test_a_load_racing_a_sweep_cannot_cache_a_deleted_session(inner: SpyStore) -> None:
    cache = CachedStore(inner, 1_000_000)
    session = new_session(expire=T0 + 5)
    await inner.create_session(session)
    inner.hold_sessions = asyncio.Event()
    load = asyncio.create_task(cache.get_session(TENANT, "s1"))
    await inner.held.wait()
    assert await cache.delete_expired(T0 + 10, 10) == 1
    inner.hold_sessions.set()
    assert await load == session  # read before the sweep, so not cached after it
    inner.hold_sessions = None
    with pytest.raises(NotFound):
        await cache.get_session(TENANT, "s1")
    assert cache.stats.entries == 0


async def test_writes_through_the_cache_keep_the_entry_consistent(inner: SpyStore) -> None:
    cache = CachedStore(inner, 1_000_000)
    session, messages = with_history(new_session(), "x", "y")
    await cache.create_session(session, messages)
    inner.calls.clear()
    assert await history(cache, session) == ["x", "y"]  # complete from the create
    cleared = session.evolve(version=2, message_count=0)
    await cache.clear_history(cleared, 1)
    assert await cache.get_session(TENANT, "s1") == cleared
    assert await cache.recent_messages(TENANT, "s1") == []
    assert inner.calls == Counter()
    with pytest.raises(Conflict):
        await cache.clear_history(cleared.evolve(version=3), 1)
    assert await cache.get_session(TENANT, "s1") == cleared
    assert inner.calls["get_session"] == 1  # the conflict dropped the entry


async def _engine_turns(
    cache: CachedStore, session: Session, turns: int, window: int
) -> tuple[list[list[Message]], list[list[Message]]]:
    """Turns as the turn engine makes them: read the window, then commit two messages.
    Returns each turn's read and each turn's committed messages."""
    reads, committed = [], []
    for i in range(turns):
        reads.append(await cache.recent_messages(TENANT, session.session_id, window))
        after, messages = turn_of(session, [f"q{i}", f"a{i}"])
        await cache.commit_turn(after, messages, session.version)
        session = after
        committed.append(messages)
    return reads, committed


async def test_a_session_in_use_reads_the_same_message_objects_turn_after_turn(
    inner: SpyStore,
) -> None:
    cache = CachedStore(inner, 1_000_000)
    session, messages = with_history(new_session(), *(f"old{i}" for i in range(30)))
    await inner.create_session(session, messages)
    assert await cache.get_session(TENANT, "s1") == session
    reads, committed = await _engine_turns(cache, session, 80, 20)
    for i in range(79):
        before, after = reads[i], reads[i + 1]
        # The window moves by a turn; what both windows hold is the very same objects,
        # and the turn's messages are the objects it committed.
        assert all(a is b for a, b in zip(before[2:], after[:18], strict=True))
        assert all(a is b for a, b in zip(after[18:], committed[i], strict=True))
    assert inner.calls["recent_messages"] == 1
    # Older messages were packed meanwhile, and still read back equal.
    texts = [f"old{i}" for i in range(30)] + [t for i in range(80) for t in (f"q{i}", f"a{i}")]
    whole = await cache.recent_messages(TENANT, "s1", 170)
    assert [m.text for m in whole] == texts[-170:]
    assert all(a is b for a, b in zip(whole[-20:-2], reads[-1][2:], strict=True))
    assert [m.seq for m in await cache.list_messages(TENANT, "s1", 40, 3)] == [41, 42, 43]
    assert inner.calls["recent_messages"] == 1
    assert inner.calls["list_messages"] == 0


async def test_a_session_demoted_to_the_packed_tier_reads_back_equal(inner: SpyStore) -> None:
    cache = CachedStore(inner, 1_000_000, max_decoded_bytes=20_000)
    rich = [
        dataclass_replace(EVERY_PART_KIND, seq=0),
        text_message(1, "plain ünïcödé 🚀 line\nbreak", role=Role.MODEL),
    ]
    sessions = []
    for i in range(40):
        session = new_session(f"s{i:02}").evolve(next_seq=2, message_count=2)
        await cache.create_session(session, rich)
        sessions.append(await commit(cache, session, f"q{i}", f"a{i}"))
    stats = cache.stats
    assert stats.decoded_bytes <= 20_000
    assert 0 < stats.decoded_entries < stats.entries == 40
    for session in sessions:
        i = int(session.session_id[1:])
        expected = [*rich, *turn_of(session.evolve(next_seq=2), [f"q{i}", f"a{i}"])[1]]
        expected = [rules.quantize_message(m) for m in expected]
        expected[2:] = [dataclass_replace(m, create_time=session.update_time) for m in expected[2:]]
        assert await cache.recent_messages(TENANT, session.session_id) == expected
        assert await cache.list_messages(TENANT, session.session_id, 0, 2) == expected[1:3]
        assert cache.stats.decoded_bytes <= 20_000
    assert inner.calls["recent_messages"] == inner.calls["list_messages"] == 0
    # A demoted session read again is decoded once, then served as the same objects.
    first = await cache.recent_messages(TENANT, "s00", 3)
    again = await cache.recent_messages(TENANT, "s00", 3)
    assert len(first) == 3
    assert all(a is b for a, b in zip(first, again, strict=True))


async def test_eviction_under_the_cap_holds_with_packed_sessions(inner: SpyStore) -> None:
    max_bytes = 60_000
    cache = CachedStore(inner, max_bytes)
    sessions = []
    for i in range(200):
        session, messages = with_history(
            new_session(f"s{i:03}"), *(f"m{k} of {i}" for k in range(20))
        )
        await cache.create_session(session, messages)
        sessions.append(session)
        await cache.recent_messages(TENANT, session.session_id, 20)
        stats = cache.stats
        assert stats.bytes <= max_bytes
        # Only the session in use may be decoded beyond the decoded tier's share.
        assert stats.decoded_bytes <= max_bytes // 8 or stats.decoded_entries == 1
    assert cache.stats.evictions > 0
    decoded_only = CachedStore(inner, max_bytes, max_decoded_bytes=max_bytes)
    for session in sessions:
        await decoded_only.recent_messages(TENANT, session.session_id, 20)
        await decoded_only.get_session(TENANT, session.session_id)
        await decoded_only.recent_messages(TENANT, session.session_id, 20)
    # Packed, more sessions fit under the same cap than decoded.
    assert cache.stats.entries > 2 * decoded_only.stats.entries
    for session in sessions[-cache.stats.entries :]:
        inner.calls.clear()
        texts = [m.text for m in await cache.recent_messages(TENANT, session.session_id)]
        assert texts == [f"m{k} of {int(session.session_id[1:])}" for k in range(20)]
        assert inner.calls == Counter()


async def test_a_session_bigger_than_the_decoded_share_stays_decoded_while_in_use(
    inner: SpyStore,
) -> None:
    cache = CachedStore(inner, 1_000_000, max_decoded_bytes=1_000)
    session = new_session()
    await cache.create_session(session)
    reads, committed = await _engine_turns(cache, session, 10, 20)
    assert cache.stats.decoded_entries == 1
    assert cache.stats.decoded_bytes > 1_000
    assert all(a is b for a, b in zip(reads[-1][-2:], committed[-2], strict=True))
    await cache.create_session(*with_history(new_session("s2"), "x", "y"))
    await cache.recent_messages(TENANT, "s2", 20)  # now s2 is the one in use: s1 is packed
    assert cache.stats.decoded_entries == 1
    last = await cache.recent_messages(TENANT, "s1", 2)
    assert last == committed[-1]
    assert last[0] is not committed[-1][0]  # decoded again
    assert inner.calls["recent_messages"] == 0


async def test_a_history_too_big_to_pack_at_once_leaves_the_cache_and_reads_from_inner(
    inner: SpyStore,
) -> None:
    cache = CachedStore(inner, 40_000_000, max_decoded_bytes=0)
    big = [f"{i} " + "z" * 100_000 for i in range(20)]  # about 2 MB decoded
    session, messages = with_history(new_session(), *big)
    await cache.create_session(session, messages)
    assert cache.stats.decoded_entries == 0
    assert await history(cache, session) == big  # from inner: the tail was dropped
    assert inner.calls["recent_messages"] == 1
    assert await cache.get_session(TENANT, "s1") == session  # the session itself stays
    assert inner.calls["get_session"] == 0
    session = await commit(cache, session, "small")
    assert [m.text for m in await cache.recent_messages(TENANT, "s1", 1)] == ["small"]
