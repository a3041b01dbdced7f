"""Conformance: each life of a session is its own, and quotas hold under concurrency."""

from __future__ import annotations

import asyncio

import pytest

from server.sessions.errors import AlreadyExists, NotFound, ResourceExhausted
from server.sessions.ports import SessionStore

from .builders import T0, TENANT, commit, history, new_session, turn_of, with_history


async def test_a_write_meant_for_a_deleted_life_never_lands_on_the_next(
    store: SessionStore,
) -> None:
    old = new_session(uid="life-1")
    await store.create_session(old)
    await store.delete_session(TENANT, "s1")
    new = new_session(uid="life-2", labels={"life": "2"})
    await store.create_session(new)

    # Both lives are at version 1: only the uid tells the stale write apart.
    stale, messages = turn_of(old, ["stale"])
    with pytest.raises(NotFound):
        await store.commit_turn(stale, messages, old.version)
    with pytest.raises(NotFound):
        await store.clear_history(stale, old.version)

    stored = await store.get_session(TENANT, "s1")
    assert stored.uid == "life-2"
    assert stored.settings.labels == {"life": "2"}
    assert await history(store, stored) == []


async def test_a_delete_meant_for_a_deleted_life_never_deletes_the_next(
    store: SessionStore,
) -> None:
    await store.create_session(new_session(uid="life-1"))
    await store.delete_session(TENANT, "s1", "life-1")
    new, messages = with_history(new_session(uid="life-2"), "kept", "answer")
    await store.create_session(new, messages)

    with pytest.raises(NotFound):
        await store.delete_session(TENANT, "s1", "life-1")
    stored = await store.get_session(TENANT, "s1")
    assert stored.uid == "life-2"
    assert len(await history(store, stored)) == 2
    await store.delete_session(TENANT, "s1", "life-2")
    with pytest.raises(NotFound):
        await store.get_session(TENANT, "s1")


async def test_create_replaces_a_session_expired_by_now_with_its_history(
    store: SessionStore,
) -> None:
    expired, messages = with_history(new_session(expire=T0 + 10, uid="life-1"), "old", "answer")
    await store.create_session(expired, messages)

    fresh = new_session(uid="life-2", created=T0 + 20)
    await store.create_session(fresh, now=T0 + 20)

    stored = await store.get_session(TENANT, "s1")
    assert stored.uid == "life-2"
    assert await history(store, stored) == []
    after = await commit(store, stored, "new")
    assert await history(store, after) == ["new"]


async def test_create_never_replaces_a_live_session(store: SessionStore) -> None:
    await store.create_session(new_session(expire=T0 + 10, uid="life-1"))
    with pytest.raises(AlreadyExists):
        await store.create_session(new_session(uid="life-2"), now=T0 + 5)
    with pytest.raises(AlreadyExists):  # without `now`, nothing counts as expired
        await store.create_session(new_session(uid="life-2"))
    assert (await store.get_session(TENANT, "s1")).uid == "life-1"


async def test_concurrent_creates_never_overshoot_the_quota(store: SessionStore) -> None:
    async def create(i: int) -> str:
        try:
            await store.create_session(new_session(f"s{i}", uid=f"u{i}"), now=T0, max_sessions=5)
        except ResourceExhausted as exc:
            return exc.reason
        return "created"

    outcomes = await asyncio.gather(*(create(i) for i in range(30)))
    assert outcomes.count("created") == 5
    assert outcomes.count("SESSION_QUOTA") == 25
    assert await store.count_sessions(TENANT) == 5
    # Another tenant has a quota of its own.
    await store.create_session(new_session("s0", tenant="other"), now=T0, max_sessions=5)


async def test_quota_leaves_out_expired_sessions_and_an_existing_id_is_already_exists(
    store: SessionStore,
) -> None:
    await store.create_session(new_session("gone", expire=T0 + 1, uid="g"), now=T0)
    await store.create_session(new_session("kept", uid="k"), now=T0)
    with pytest.raises(AlreadyExists):
        await store.create_session(new_session("kept", uid="k2"), now=T0 + 2, max_sessions=2)
    await store.create_session(new_session("third", uid="t"), now=T0 + 2, max_sessions=2)
    with pytest.raises(ResourceExhausted):
        await store.create_session(new_session("fourth", uid="f"), now=T0 + 2, max_sessions=2)


async def test_no_write_brings_back_a_session_expired_by_its_update_time(
    store: SessionStore,
) -> None:
    session = new_session(expire=T0 + 10)
    await store.create_session(session)
    late, messages = turn_of(session, ["too late"], updated=T0 + 10)
    with pytest.raises(NotFound):
        await store.commit_turn(late, messages, session.version)
    with pytest.raises(NotFound):
        await store.clear_history(late, session.version)
    on_time, messages = turn_of(session, ["in time"], updated=T0 + 9)
    await store.commit_turn(on_time, messages, session.version)
    assert await history(store, on_time) == ["in time"]
