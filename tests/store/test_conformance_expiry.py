"""Conformance: expiry by ttl or fixed time, delete_expired and alive_at, on every backend."""

from __future__ import annotations

import pytest

from server.sessions.errors import NotFound
from server.sessions.model import Session
from server.sessions.ports import SessionOrder, SessionQuery, SessionStore

from .builders import T0, TENANT, commit, history, new_session


async def create_all(store: SessionStore, *sessions: Session) -> None:
    for session in sessions:
        await store.create_session(session)
        await commit(store, session, f"in {session.session_id}", updated=session.update_time)


async def alive_ids(store: SessionStore, at: float | None, **labels: str) -> list[str]:
    query = SessionQuery(limit=100, descending=False, alive_at=at, labels=labels)
    return [s.session_id for s in await store.list_sessions(TENANT, query)]


async def test_delete_expired_removes_sessions_whose_expiry_is_due(store: SessionStore) -> None:
    await create_all(
        store,
        new_session("ttl-10", ttl=10),  # due at T0 + 10 exactly
        new_session("fixed-5", expire=T0 + 5),
        new_session("forever"),
        new_session("ttl-100", ttl=100),
        new_session("fixed-later", expire=T0 + 10.000001),
    )
    for sid in ("ttl-10", "fixed-5"):  # warm any cache
        assert await history(store, await store.get_session(TENANT, sid)) == [f"in {sid}"]
    assert await store.delete_expired(T0 + 10, 100) == 2
    for sid in ("ttl-10", "fixed-5"):
        with pytest.raises(NotFound):
            await store.get_session(TENANT, sid)
        with pytest.raises(NotFound):
            await store.recent_messages(TENANT, sid)
    assert await alive_ids(store, None) == ["fixed-later", "forever", "ttl-100"]
    assert await store.delete_expired(T0 + 10, 100) == 0
    # Their messages went with them: the ids start over empty.
    await store.create_session(new_session("ttl-10"))
    assert await store.recent_messages(TENANT, "ttl-10") == []


async def test_ttl_counts_from_the_last_update(store: SessionStore) -> None:
    session = new_session(ttl=10)
    await store.create_session(session)
    session = await commit(store, session, "keeps it alive", updated=T0 + 8)
    assert session.expire_time == T0 + 18
    assert await store.delete_expired(T0 + 12, 10) == 0
    assert await alive_ids(store, T0 + 12) == ["s1"]
    assert await alive_ids(store, T0 + 18) == []
    assert await store.delete_expired(T0 + 18, 10) == 1


async def test_the_stored_expiry_is_the_derived_one_not_the_settings_field(
    store: SessionStore,
) -> None:
    """With both set, ttl decides (Session.expire_time), not settings.expire_time."""
    both = new_session("both", ttl=100, expire=T0 + 1)
    await store.create_session(both)
    assert both.expire_time == T0 + 100
    assert await store.delete_expired(T0 + 50, 10) == 0
    assert await alive_ids(store, T0 + 50) == ["both"]
    assert await store.delete_expired(T0 + 100, 10) == 1


async def test_delete_expired_takes_at_most_limit_soonest_first(store: SessionStore) -> None:
    # Expiries out of id order, in two tenants.
    expiries = {"e": 1, "a": 2, "d": 3, "b": 4, "c": 5}
    for sid, offset in expiries.items():
        tenant = TENANT if offset % 2 else "other"
        await store.create_session(new_session(sid, tenant=tenant, expire=T0 + offset))
    await store.create_session(new_session("alive", expire=T0 + 100))
    assert await store.delete_expired(T0 + 10, 0) == 0
    assert await store.delete_expired(T0 + 10, 2) == 2  # e, then a of the other tenant
    assert await alive_ids(store, None) == ["alive", "c", "d"]
    with pytest.raises(NotFound):
        await store.get_session("other", "a")
    assert (await store.get_session("other", "b")).session_id == "b"
    assert await store.delete_expired(T0 + 10, 2) == 2  # d, b
    assert await store.delete_expired(T0 + 10, 2) == 1
    assert await store.delete_expired(T0 + 10, 2) == 0
    assert await alive_ids(store, None) == ["alive"]
    with pytest.raises(NotFound):
        await store.get_session("other", "b")


async def test_alive_at_leaves_out_sessions_expired_by_then(store: SessionStore) -> None:
    await create_all(
        store,
        new_session("a-forever", created=T0, labels={"k": "v"}),
        new_session("b-ttl", created=T0 + 1, ttl=10, labels={"k": "v"}),  # due T0 + 11
        new_session("c-fixed", created=T0 + 2, expire=T0 + 5),
        new_session("d-fixed", created=T0 + 3, expire=T0 + 20, labels={"k": "v"}),
    )
    assert await alive_ids(store, None) == ["a-forever", "b-ttl", "c-fixed", "d-fixed"]
    assert await alive_ids(store, T0 + 4.999999) == ["a-forever", "b-ttl", "c-fixed", "d-fixed"]
    assert await alive_ids(store, T0 + 5) == ["a-forever", "b-ttl", "d-fixed"]
    assert await alive_ids(store, T0 + 11) == ["a-forever", "d-fixed"]
    assert await alive_ids(store, T0 + 11, k="v") == ["a-forever", "d-fixed"]
    assert await alive_ids(store, T0 + 1000) == ["a-forever"]
    # Combined with a cursor and paging by update time.
    query = SessionQuery(limit=1, order=SessionOrder.UPDATE_TIME, alive_at=T0 + 11)
    first = await store.list_sessions(TENANT, query)
    assert [s.session_id for s in first] == ["d-fixed"]
