"""Conformance: reply records and their events, written alone or with a turn, leases,
retention, and going with their session, on every backend."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.sessions.errors import Conflict, DuplicateRequest
from server.sessions.model import Session
from server.sessions.ports import (
    ReplyError,
    ReplyEvents,
    ReplyRecord,
    ReplyState,
    ReplyWrite,
    SessionStore,
)
from server.store import rules

from .builders import T0, TENANT, commit, history, new_session, request_of, turn_of
from .conftest import Backend

LOST = ReplyError("UNAVAILABLE", "the replica running it stopped", "REPLY_LOST")
FINAL_STATES = [s for s in ReplyState if s is not ReplyState.RUNNING]


def reply_of(
    reply_id: str = "r1",
    *,
    session_id: str = "s1",
    tenant: str = TENANT,
    state: ReplyState = ReplyState.RUNNING,
    created: float = T0,
    updated: float | None = None,
    last_seq: int = 0,
    owner: str = "replica-a",
    lease: float | None = T0 + 30,
    error: ReplyError | None = None,
) -> ReplyRecord:
    return ReplyRecord(
        tenant=tenant,
        session_id=session_id,
        reply_id=reply_id,
        turn_id=f"turn-{reply_id}",
        request_id=f"req-{reply_id}",
        background=False,
        state=state,
        create_time=created,
        update_time=created if updated is None else updated,
        last_seq=last_seq,
        owner=owner,
        lease_expire_time=lease,
        error=error,
    )


def chunk(first: int, last: int) -> ReplyEvents:
    """Events first..last, with a payload that says which they are (and a NUL byte)."""
    return ReplyEvents(first, last, f"events {first}-{last}\x00".encode() + bytes([first % 256]))


def write(record: ReplyRecord, first: int | None = None, last: int | None = None) -> ReplyWrite:
    """The record with events first..last (its last_seq set to `last`), or without events."""
    if first is None or last is None:
        return ReplyWrite(record)
    return ReplyWrite(replace(record, last_seq=last), chunk(first, last))


async def put(store: SessionStore, record: ReplyRecord, first: int, last: int) -> ReplyRecord:
    """Stores the record with events first..last; returns the record as written."""
    written = write(record, first, last)
    assert await store.put_reply(written)
    return written.record


async def seqs(
    store: SessionStore, reply_id: str, after: int = 0, tenant: str = TENANT
) -> list[tuple[int, int]]:
    return [(c.first_seq, c.last_seq) for c in await store.reply_events(tenant, reply_id, after)]


async def ids(
    store: SessionStore,
    session_id: str = "s1",
    *,
    limit: int = 100,
    before: tuple[float, str] | None = None,
) -> list[str]:
    return [r.reply_id for r in await store.list_replies(TENANT, session_id, limit, before)]


async def started(store: SessionStore, session_id: str = "s1") -> Session:
    session = new_session(session_id)
    await store.create_session(session)
    return session


async def test_a_reply_record_round_trips_every_field(store: SessionStore) -> None:
    full = ReplyRecord(
        tenant=TENANT,
        session_id="s1",
        reply_id="r-full",
        turn_id="turn-9",
        request_id="req-9",
        background=True,
        state=ReplyState.FAILED,
        create_time=T0 + 0.1234567,
        update_time=T0 + 2.0000004,
        last_seq=0,
        owner="replica-b",
        lease_expire_time=T0 + 30.9999996,
        error=ReplyError("UNAVAILABLE", "upstream gone ünïcödé 🚀", "MODEL_UNAVAILABLE"),
    )
    bare = reply_of("r-bare", lease=None, owner="")
    no_reason = reply_of("r-no-reason", state=ReplyState.CANCELLED, error=ReplyError("X", ""))
    for record in (full, bare, no_reason):
        assert await store.put_reply(ReplyWrite(record))
        assert await store.get_reply(TENANT, record.reply_id) == rules.quantize_reply(record)
    stored = await store.get_reply(TENANT, "r-full")
    assert stored is not None and stored.create_time == rules.quantize_time(T0 + 0.1234567)
    assert stored.lease_expire_time == rules.quantize_time(T0 + 30.9999996)
    assert await store.get_reply(TENANT, "never") is None


async def test_events_are_appended_and_read_back_after_a_seq(store: SessionStore) -> None:
    record = await put(store, reply_of(), 1, 3)
    record = await put(store, record, 4, 4)
    record = await put(store, record, 5, 9)
    assert (await store.get_reply(TENANT, "r1")) == record
    assert record.last_seq == 9
    assert await seqs(store, "r1") == [(1, 3), (4, 4), (5, 9)]
    # A chunk that begins at or before after_seq but holds later events is returned.
    assert await seqs(store, "r1", after=2) == [(1, 3), (4, 4), (5, 9)]
    assert await seqs(store, "r1", after=3) == [(4, 4), (5, 9)]
    assert await seqs(store, "r1", after=4) == [(5, 9)]
    assert await seqs(store, "r1", after=8) == [(5, 9)]
    assert await seqs(store, "r1", after=9) == []
    assert await store.reply_events(TENANT, "r1", 3) == [chunk(4, 4), chunk(5, 9)]
    assert await store.reply_events(TENANT, "never", 0) == []


async def test_a_record_update_without_events_keeps_them(store: SessionStore) -> None:
    record = await put(store, reply_of(), 1, 2)
    renewed = replace(record, lease_expire_time=T0 + 60, update_time=T0 + 1)
    assert await store.put_reply(ReplyWrite(renewed))
    assert await store.get_reply(TENANT, "r1") == renewed
    assert await store.reply_events(TENANT, "r1", 0) == [chunk(1, 2)]


@pytest.mark.parametrize("final", FINAL_STATES, ids=lambda s: s.value)
async def test_put_reply_is_refused_after_a_final_state(
    store: SessionStore, final: ReplyState
) -> None:
    record = await put(store, reply_of(), 1, 2)
    ended = replace(record, state=final, owner="", lease_expire_time=None, update_time=T0 + 5)
    ended = await put(store, ended, 3, 4)
    late = replace(record, update_time=T0 + 6)
    assert not await store.put_reply(write(late, 5, 6))
    assert not await store.put_reply(ReplyWrite(replace(ended, state=ReplyState.RUNNING)))
    assert not await store.put_reply(ReplyWrite(replace(ended, owner="replica-z")))
    assert await store.get_reply(TENANT, "r1") == ended
    assert await seqs(store, "r1") == [(1, 2), (3, 4)]


async def test_put_reply_refuses_events_that_do_not_continue_the_stored_ones(
    store: SessionStore,
) -> None:
    record = await put(store, reply_of(), 1, 3)
    for first, last in ((5, 6), (3, 4), (1, 4)):
        with pytest.raises(ValueError, match="continue"):
            await store.put_reply(write(replace(record, update_time=T0 + 9), first, last))
    # A record without events must carry the stored last_seq.
    with pytest.raises(ValueError, match="continue"):
        await store.put_reply(ReplyWrite(replace(record, last_seq=7)))
    assert await store.get_reply(TENANT, "r1") == record
    assert await seqs(store, "r1") == [(1, 3)]


async def test_a_write_whose_events_and_record_disagree_is_refused(store: SessionStore) -> None:
    record = reply_of()
    with pytest.raises(ValueError, match="last_seq"):
        await store.put_reply(ReplyWrite(replace(record, last_seq=2), chunk(1, 3)))
    with pytest.raises(ValueError, match="first"):
        await store.put_reply(ReplyWrite(replace(record, last_seq=2), chunk(3, 2)))
    assert await store.get_reply(TENANT, "r1") is None


async def test_commit_turn_with_a_reply_stores_both(store: SessionStore) -> None:
    session = await started(store)
    record = await put(store, reply_of(), 1, 2)
    after, messages = turn_of(session, ["q", "a"])
    done = replace(record, state=ReplyState.COMPLETED, owner="", lease_expire_time=None)
    reply = write(replace(done, update_time=T0 + 1.0000001), 3, 5)
    await store.commit_turn(after, messages, session.version, reply=reply)
    assert await store.get_session(TENANT, "s1") == after
    assert await history(store, after) == ["q", "a"]
    assert await store.get_reply(TENANT, "r1") == rules.quantize_reply(reply.record)
    assert await store.reply_events(TENANT, "r1", 0) == [chunk(1, 2), chunk(3, 5)]


async def test_commit_turn_stores_a_new_reply_with_its_request(store: SessionStore) -> None:
    """The reply is written with the request record too (each statement variant)."""
    session = await started(store)
    after, messages = turn_of(session, ["q", "a"])
    reply = write(reply_of(state=ReplyState.COMPLETED, lease=None), 1, 1)
    await store.commit_turn(after, messages, session.version, request_of("q1"), reply)
    assert await store.get_request(TENANT, "q1") == request_of("q1")
    assert await store.get_reply(TENANT, "r1") == reply.record
    again, more = turn_of(after, ["x"])
    paused = reply_of("r2", state=ReplyState.AWAITING_TOOL_RESULTS, lease=None)
    await store.commit_turn(again, more, after.version, reply=ReplyWrite(paused))
    assert await store.get_reply(TENANT, "r2") == paused
    assert await store.reply_events(TENANT, "r2", 0) == []


async def test_a_conflicting_commit_writes_neither_the_turn_nor_its_reply(
    store: SessionStore,
) -> None:
    session = await started(store)
    current = await commit(store, session, "first")
    running = await put(store, reply_of(), 1, 2)
    stale, messages = turn_of(session, ["lost"])
    done = write(replace(running, state=ReplyState.COMPLETED), 3, 4)
    with pytest.raises(Conflict):
        await store.commit_turn(stale, messages, session.version, reply=done)
    fresh = write(reply_of("r-new", state=ReplyState.COMPLETED), 1, 1)
    with pytest.raises(Conflict):
        await store.commit_turn(stale, messages, session.version, reply=fresh)
    assert await store.get_session(TENANT, "s1") == current
    assert await history(store, current) == ["first"]
    assert await store.get_reply(TENANT, "r1") == running
    assert await seqs(store, "r1") == [(1, 2)]
    assert await store.get_reply(TENANT, "r-new") is None
    assert await store.reply_events(TENANT, "r-new", 0) == []


async def test_a_turn_reply_must_belong_to_the_turn_session(store: SessionStore) -> None:
    session = await started(store)
    after, messages = turn_of(session, ["q"])
    for wrong in (reply_of(session_id="s2"), reply_of(tenant="other")):
        with pytest.raises(ValueError, match="session"):
            await store.commit_turn(after, messages, session.version, reply=ReplyWrite(wrong))
    assert await store.get_session(TENANT, "s1") == session


async def test_commit_turn_overwrites_a_reply_declared_failed(store: SessionStore) -> None:
    """The turn's stored outcome is the truth, even over a reply another replica failed."""
    session = await started(store)
    record = await put(store, reply_of(lease=T0 + 1), 1, 2)
    assert await store.fail_stale_replies(T0 + 5, LOST, 10) == 1
    failed = await store.get_reply(TENANT, "r1")
    assert failed is not None and failed.state is ReplyState.FAILED
    after, messages = turn_of(session, ["q", "a"])
    done = replace(record, state=ReplyState.COMPLETED, owner="", lease_expire_time=None)
    reply = write(replace(done, update_time=T0 + 6), 3, 4)
    await store.commit_turn(after, messages, session.version, reply=reply)
    assert await store.get_reply(TENANT, "r1") == reply.record
    assert await seqs(store, "r1") == [(1, 2), (3, 4)]


async def test_a_turn_events_replace_a_chunk_stored_under_the_same_first_seq(
    store: SessionStore,
) -> None:
    """A put whose outcome its writer never learned does not make the turn fail."""
    session = await started(store)
    record = await put(store, reply_of(), 1, 2)
    await put(store, record, 3, 3)
    after, messages = turn_of(session, ["q"])
    done = replace(record, state=ReplyState.COMPLETED)
    await store.commit_turn(after, messages, session.version, reply=write(done, 3, 5))
    assert await store.reply_events(TENANT, "r1", 0) == [chunk(1, 2), chunk(3, 5)]


async def test_list_replies_is_newest_first_in_pages(store: SessionStore) -> None:
    # Two share a create_time: reply_id breaks the tie, descending.
    times = {"a": T0 + 1, "b": T0 + 3, "c": T0 + 2, "d": T0 + 3, "e": T0 + 0.5}
    for reply_id, created in times.items():
        assert await store.put_reply(ReplyWrite(reply_of(reply_id, created=created)))
    assert await store.put_reply(ReplyWrite(reply_of("other", session_id="s2")))
    assert await ids(store) == ["d", "b", "c", "a", "e"]
    assert await ids(store, limit=2) == ["d", "b"]
    assert await ids(store, limit=2, before=(T0 + 3, "b")) == ["c", "a"]
    assert await ids(store, limit=2, before=(T0 + 3, "c")) == ["b", "c"]
    assert await ids(store, limit=2, before=(T0 + 0.5, "e")) == []
    assert await ids(store, limit=0) == []
    assert await ids(store, "s2") == ["other"]
    assert await ids(store, "nope") == []
    listed = await store.list_replies(TENANT, "s1", 1)
    assert listed == [await store.get_reply(TENANT, "d")]


async def test_replies_of_one_tenant_are_invisible_to_another(store: SessionStore) -> None:
    await put(store, reply_of("same", tenant="a"), 1, 1)
    await put(store, reply_of("same", tenant="b", owner="replica-b"), 1, 2)
    a, b = await store.get_reply("a", "same"), await store.get_reply("b", "same")
    assert a is not None and a.tenant == "a" and a.last_seq == 1
    assert b is not None and b.tenant == "b" and b.last_seq == 2
    assert await store.get_reply(TENANT, "same") is None
    assert await seqs(store, "same", tenant="a") == [(1, 1)]
    assert await seqs(store, "same", tenant=TENANT) == []
    assert [r.tenant for r in await store.list_replies("b", "s1", 10)] == ["b"]
    assert await store.list_replies(TENANT, "s1", 10) == []


async def test_renew_replies_extends_only_the_owner_running_replies(store: SessionStore) -> None:
    mine = [reply_of("r1"), reply_of("r2", lease=None)]
    ended = reply_of("r3", state=ReplyState.COMPLETED, lease=T0 + 30)
    theirs = reply_of("r4", owner="replica-b")
    for record in (*mine, ended, theirs):
        assert await store.put_reply(ReplyWrite(record))
    assert await store.renew_replies("replica-a", T0 + 90.0000004) == 2
    for record in mine:
        renewed = await store.get_reply(TENANT, record.reply_id)
        assert renewed == replace(record, lease_expire_time=rules.quantize_time(T0 + 90.0000004))
    assert await store.get_reply(TENANT, "r3") == ended
    assert await store.get_reply(TENANT, "r4") == theirs
    assert await store.renew_replies("replica-gone", T0 + 90) == 0


async def test_fail_stale_replies_honours_now_limit_and_null_leases(store: SessionStore) -> None:
    leases = {"r1": T0 + 1, "r2": T0 + 2, "r3": T0 + 2.000001, "r4": None}
    for reply_id, lease in leases.items():
        await put(store, reply_of(reply_id, lease=lease), 1, 2)
    ended = reply_of("r5", state=ReplyState.COMPLETED, lease=T0)
    assert await store.put_reply(ReplyWrite(ended))
    assert await store.fail_stale_replies(T0 + 2, LOST, 0) == 0
    # Longest expired first.
    assert await store.fail_stale_replies(T0 + 2, LOST, 1) == 1
    assert (await state_of(store, "r1"), await state_of(store, "r2")) == ("failed", "running")
    # At or before now: r2's lease ends exactly then; r3's a microsecond later.
    assert await store.fail_stale_replies(T0 + 2, LOST, 10) == 1
    assert await store.fail_stale_replies(T0 + 2, LOST, 10) == 0
    assert [await state_of(store, r) for r in ("r2", "r3", "r4")] == [
        "failed",
        "running",
        "running",
    ]
    failed = await store.get_reply(TENANT, "r2")
    expected = replace(
        reply_of("r2", lease=None, owner=""),
        state=ReplyState.FAILED,
        update_time=T0 + 2,
        last_seq=2,
        error=LOST,
    )
    assert failed == expected
    assert await seqs(store, "r2") == [(1, 2)]
    assert await store.get_reply(TENANT, "r5") == ended
    # The owner, still running it somewhere, learns it lost the reply.
    assert not await store.put_reply(write(reply_of("r2", lease=T0 + 40), 3, 3))
    # A running reply with no lease never goes stale.
    assert await store.fail_stale_replies(T0 + 1_000_000, LOST, 10) == 1
    assert await state_of(store, "r4") == "running"


async def state_of(store: SessionStore, reply_id: str) -> str:
    record = await store.get_reply(TENANT, reply_id)
    assert record is not None
    return record.state.value


async def test_delete_replies_before_forgets_old_ended_replies(store: SessionStore) -> None:
    done = ReplyState.COMPLETED
    await put(store, reply_of("old-1", state=done, updated=T0 + 1), 1, 2)
    await put(store, reply_of("old-2", state=ReplyState.FAILED, updated=T0 + 2), 1, 1)
    await put(store, reply_of("running", updated=T0 + 1), 1, 1)
    await put(store, reply_of("edge", state=ReplyState.CANCELLED, updated=T0 + 5), 1, 1)
    await put(store, reply_of("recent", state=done, updated=T0 + 10), 1, 1)
    assert await store.delete_replies_before(T0 + 5, 0) == 0
    assert await store.delete_replies_before(T0 + 5, 1) == 1  # the oldest first
    assert await store.get_reply(TENANT, "old-1") is None
    assert await store.get_reply(TENANT, "old-2") is not None
    assert await store.delete_replies_before(T0 + 5, 10) == 1
    assert await store.delete_replies_before(T0 + 5, 10) == 0
    for gone in ("old-1", "old-2"):
        assert await store.get_reply(TENANT, gone) is None
        assert await store.reply_events(TENANT, gone, 0) == []
    # Running ones stay whatever their age; strictly before: updated at T0 + 5 stays.
    assert sorted(await ids(store)) == ["edge", "recent", "running"]
    assert await seqs(store, "running") == [(1, 1)]
    # The id is free again, its events with it.
    await put(store, reply_of("old-1"), 1, 1)
    assert await seqs(store, "old-1") == [(1, 1)]


async def test_deleting_a_session_deletes_its_replies_and_their_events(
    store: SessionStore,
) -> None:
    session = await started(store)
    await started(store, "s2")
    await put(store, reply_of("r1"), 1, 2)
    await put(store, reply_of("r2", state=ReplyState.COMPLETED), 1, 1)
    await put(store, reply_of("r3", session_id="s2"), 1, 1)
    await store.delete_session(TENANT, session.session_id)
    for gone in ("r1", "r2"):
        assert await store.get_reply(TENANT, gone) is None
        assert await store.reply_events(TENANT, gone, 0) == []
    assert await ids(store) == []
    assert await ids(store, "s2") == ["r3"]
    assert await seqs(store, "r3") == [(1, 1)]
    # Nothing of them is left to collide with: the ids start over.
    await put(store, reply_of("r1"), 1, 1)
    assert await seqs(store, "r1") == [(1, 1)]


async def test_expiry_deletes_the_session_replies_and_their_events(store: SessionStore) -> None:
    await store.create_session(new_session("short", expire=T0 + 5))
    await store.create_session(new_session("long", expire=T0 + 500))
    await put(store, reply_of("r1", session_id="short"), 1, 2)
    await put(store, reply_of("r2", session_id="long"), 1, 1)
    assert await store.delete_expired(T0 + 10, 10) == 1
    assert await store.get_reply(TENANT, "r1") is None
    assert await store.reply_events(TENANT, "r1", 0) == []
    assert await ids(store, "short") == []
    assert await ids(store, "long") == ["r2"]


async def test_an_expired_session_replaced_by_a_create_takes_its_replies_along(
    store: SessionStore,
) -> None:
    await store.create_session(new_session(expire=T0 + 5))
    await put(store, reply_of("r1"), 1, 2)
    await store.create_session(new_session(uid="life-2"), now=T0 + 10)
    assert await store.get_reply(TENANT, "r1") is None
    assert await store.reply_events(TENANT, "r1", 0) == []
    assert await ids(store) == []


async def test_clearing_history_keeps_the_replies(store: SessionStore) -> None:
    session = await started(store)
    after = await commit(store, session, "q", "a")
    record = await put(store, reply_of(state=ReplyState.COMPLETED), 1, 2)
    cleared = after.evolve(version=after.version + 1, message_count=0)
    await store.clear_history(cleared, after.version)
    assert await history(store, cleared) == []
    assert await store.get_reply(TENANT, "r1") == record
    assert await seqs(store, "r1") == [(1, 2)]


async def test_replies_survive_a_reopen(store: SessionStore, backend: Backend) -> None:
    if not backend.persistent:
        pytest.skip("the backend keeps nothing across a reopen")
    session = await started(store)
    record = await put(store, reply_of("r1", error=LOST, state=ReplyState.CANCELLED), 1, 3)
    after, messages = turn_of(session, ["q"])
    turn_reply = write(reply_of("r2", state=ReplyState.COMPLETED, lease=None), 1, 2)
    await store.commit_turn(after, messages, session.version, reply=turn_reply)
    await store.close()
    reopened = await backend.open()
    try:
        assert await reopened.get_reply(TENANT, "r1") == record
        assert await reopened.get_reply(TENANT, "r2") == turn_reply.record
        assert await reopened.reply_events(TENANT, "r1", 0) == [chunk(1, 3)]
        assert await reopened.reply_events(TENANT, "r2", 0) == [chunk(1, 2)]
        assert [r.reply_id for r in await reopened.list_replies(TENANT, "s1", 10)] == ["r2", "r1"]
    finally:
        await reopened.close()


async def test_a_long_turn_stores_its_reply_too(store: SessionStore) -> None:
    """Past PostgreSQL's one-statement turn (more than a batch of messages)."""
    session = await started(store)
    after, messages = turn_of(session, [f"m{i}" for i in range(1100)])
    reply = write(reply_of(state=ReplyState.COMPLETED, lease=None), 1, 3)
    await store.commit_turn(after, messages, session.version, reply=reply)
    assert len(await store.recent_messages(TENANT, "s1")) == 1100
    assert await store.get_reply(TENANT, "r1") == reply.record
    assert await store.reply_events(TENANT, "r1", 0) == [chunk(1, 3)]
    stale, more = turn_of(session, [f"x{i}" for i in range(1100)])
    lost = write(reply_of("r2", state=ReplyState.COMPLETED), 1, 1)
    with pytest.raises(Conflict):
        await store.commit_turn(stale, more, session.version, reply=lost)
    assert await store.get_reply(TENANT, "r2") is None


async def test_a_duplicate_request_on_a_commit_with_a_reply_writes_neither(
    store: SessionStore,
) -> None:
    session = await started(store)
    after, messages = turn_of(session, ["q"])
    first = write(reply_of(state=ReplyState.COMPLETED), 1, 1)
    await store.commit_turn(after, messages, session.version, request_of("q1"), first)
    again, more = turn_of(after, ["retry"])
    second = write(reply_of("r2", state=ReplyState.COMPLETED), 1, 1)
    with pytest.raises(DuplicateRequest):
        await store.commit_turn(again, more, after.version, request_of("q1"), second)
    assert await store.get_reply(TENANT, "r2") is None
    assert await store.reply_events(TENANT, "r2", 0) == []
    assert await store.get_reply(TENANT, "r1") == first.record
    assert await history(store, after) == ["q"]


async def test_fail_stale_replies_by_a_far_horizon_stamps_them_at_now(store: SessionStore) -> None:
    """A process that starts alone fails every running reply, whatever its lease (a far
    `expired_by`): they are marked failed at `now`, a time a client can read back."""
    await put(store, reply_of("r1", lease=T0 + 3600), 1, 1)
    await put(store, reply_of("r2", lease=T0 + 1), 1, 2)
    assert await store.fail_stale_replies(T0 + 2, LOST, 10, expired_by=1e12) == 2
    for reply_id, last_seq in (("r1", 1), ("r2", 2)):
        failed = await store.get_reply(TENANT, reply_id)
        assert failed == replace(
            reply_of(reply_id, lease=None, owner=""),
            state=ReplyState.FAILED,
            update_time=T0 + 2,
            last_seq=last_seq,
            error=LOST,
        )


async def test_a_turn_events_from_event_1_replace_a_stored_chunk_from_event_1(
    store: SessionStore,
) -> None:
    """A put of the first events whose outcome its writer never learned, then the turn
    stores the whole reply."""
    session = await started(store)
    await put(store, reply_of(), 1, 2)
    after, messages = turn_of(session, ["q"])
    done = write(reply_of(state=ReplyState.COMPLETED, lease=None), 1, 4)
    await store.commit_turn(after, messages, session.version, reply=done)
    assert await store.reply_events(TENANT, "r1", 0) == [chunk(1, 4)]
    assert await store.reply_events(TENANT, "r1", 3) == [chunk(1, 4)]
    assert await store.reply_events(TENANT, "r1", 4) == []
    assert await store.get_reply(TENANT, "r1") == done.record


async def test_events_stored_by_turns_and_puts_read_back_in_order(store: SessionStore) -> None:
    """A turn may store a running reply; puts continue it and a later turn ends it."""
    session = await started(store)
    after, messages = turn_of(session, ["q"])
    running = write(reply_of(), 1, 2)
    await store.commit_turn(after, messages, session.version, reply=running)
    record = await put(store, running.record, 3, 4)
    again, more = turn_of(after, ["a"])
    done = write(replace(record, state=ReplyState.COMPLETED), 5, 6)
    await store.commit_turn(again, more, after.version, reply=done)
    assert await store.get_reply(TENANT, "r1") == done.record
    assert await seqs(store, "r1") == [(1, 2), (3, 4), (5, 6)]
    assert await seqs(store, "r1", after=2) == [(3, 4), (5, 6)]
    assert await store.reply_events(TENANT, "r1", 5) == [chunk(5, 6)]
    # A turn without events keeps them all.
    last, none = turn_of(again, [])
    await store.commit_turn(last, none, again.version, reply=ReplyWrite(done.record))
    assert await seqs(store, "r1") == [(1, 2), (3, 4), (5, 6)]


async def test_a_put_of_events_from_event_1_replaces_those_a_turn_stored(
    store: SessionStore,
) -> None:
    session = await started(store)
    after, messages = turn_of(session, ["q"])
    await store.commit_turn(after, messages, session.version, reply=write(reply_of(), 1, 3))
    again, more = turn_of(after, ["a"])
    restarted = ReplyWrite(reply_of(last_seq=0))
    await store.commit_turn(again, more, after.version, reply=restarted)
    await put(store, reply_of(), 1, 2)
    assert await store.reply_events(TENANT, "r1", 0) == [chunk(1, 2)]
