"""Conformance: request records written with the write they belong to, on every backend."""

from __future__ import annotations

import pytest

from server.sessions.errors import AlreadyExists, Conflict, DuplicateRequest, NotFound
from server.sessions.model import Session
from server.sessions.ports import SessionStore
from server.store import rules

from .builders import T0, TENANT, commit, history, new_session, request_of, turn_of, with_history


async def test_create_with_a_request_stores_both(store: SessionStore) -> None:
    record = request_of("r1", created=T0 + 0.1234567, result='{"session":"s1"}')
    session, messages = with_history(new_session(), "hello")
    await store.create_session(session, messages, record)
    assert await store.get_request(TENANT, "r1") == rules.quantize_request(record)
    assert await history(store, session) == ["hello"]


async def test_commit_with_a_request_stores_both(store: SessionStore) -> None:
    session = new_session()
    await store.create_session(session)
    after, messages = turn_of(session, ["q", "a"])
    await store.commit_turn(after, messages, session.version, request_of("r1"))
    assert await store.get_request(TENANT, "r1") == request_of("r1")
    assert await store.get_session(TENANT, "s1") == after


async def test_a_duplicate_request_on_commit_writes_nothing(store: SessionStore) -> None:
    session = new_session()
    await store.create_session(session)
    after, messages = turn_of(session, ["first"])
    await store.commit_turn(after, messages, session.version, request_of("r1"))
    again, more = turn_of(after, ["second"])
    reused = request_of("r1", result="other", created=T0 + 5)
    with pytest.raises(DuplicateRequest):
        await store.commit_turn(again, more, after.version, reused)
    assert await store.get_session(TENANT, "s1") == after
    assert await history(store, after) == ["first"]
    assert await store.get_request(TENANT, "r1") == request_of("r1")
    # Nothing was half-written: the same turn with a new id goes through.
    await store.commit_turn(again, more, after.version, request_of("r2"))
    assert await history(store, again) == ["first", "second"]


async def test_a_duplicate_request_on_create_writes_nothing(store: SessionStore) -> None:
    await store.create_session(new_session("s1"), (), request_of("r1"))
    session, messages = with_history(new_session("s2"), "never")
    with pytest.raises(DuplicateRequest):
        await store.create_session(session, messages, request_of("r1", result="other"))
    with pytest.raises(NotFound):
        await store.get_session(TENANT, "s2")
    with pytest.raises(NotFound):
        await store.recent_messages(TENANT, "s2")
    assert await store.get_request(TENANT, "r1") == request_of("r1")
    await store.create_session(session, messages)  # the id is still free
    assert await history(store, session) == ["never"]


async def test_a_retried_write_that_applied_is_a_duplicate_not_a_conflict(
    store: SessionStore,
) -> None:
    """The request is checked first, so a retry learns its write already happened."""
    session = new_session()
    await store.create_session(session, (), request_of("create"))
    with pytest.raises(DuplicateRequest):
        await store.create_session(session, (), request_of("create"))
    after, messages = turn_of(session, ["once"])
    await store.commit_turn(after, messages, session.version, request_of("turn"))
    with pytest.raises(DuplicateRequest):
        await store.commit_turn(after, messages, session.version, request_of("turn"))
    assert await history(store, after) == ["once"]


async def test_a_refused_write_does_not_record_its_request(store: SessionStore) -> None:
    session = new_session()
    await store.create_session(session)
    current = await commit(store, session, "first")
    stale, messages = turn_of(session, ["lost"])
    with pytest.raises(Conflict):
        await store.commit_turn(stale, messages, session.version, request_of("r1"))
    with pytest.raises(AlreadyExists):
        await store.create_session(new_session(), (), request_of("r2"))
    with pytest.raises(NotFound):
        await store.commit_turn(*turn_of(new_session("nope"), ["x"]), 1, request_of("r3"))
    for request_id in ("r1", "r2", "r3"):
        assert await store.get_request(TENANT, request_id) is None
    assert await history(store, current) == ["first"]


async def test_request_ids_are_per_tenant(store: SessionStore) -> None:
    for tenant in ("a", "b"):
        record = request_of("same", tenant=tenant, result=tenant)
        await store.create_session(new_session(tenant=tenant), (), record)
    assert (await store.get_request("a", "same")) == request_of("same", tenant="a", result="a")
    assert (await store.get_request("b", "same")) == request_of("same", tenant="b", result="b")
    assert await store.get_request("c", "same") is None


async def test_a_request_of_another_tenant_is_refused(store: SessionStore) -> None:
    with pytest.raises(ValueError, match="tenant"):
        await store.create_session(new_session(), (), request_of("r", tenant="other"))
    with pytest.raises(NotFound):
        await store.get_session(TENANT, "s1")


async def test_unknown_requests_are_none(store: SessionStore) -> None:
    assert await store.get_request(TENANT, "never") is None


async def test_delete_requests_before_forgets_the_oldest_first_up_to_limit(
    store: SessionStore,
) -> None:
    session = new_session()
    await store.create_session(session)
    for i in range(5):
        session = await commit_with_request(store, session, f"r{i}", T0 + i)
    assert await store.delete_requests_before(T0 + 3, 2) == 2
    assert await store.delete_requests_before(T0 + 3, 0) == 0
    assert [await store.get_request(TENANT, f"r{i}") is None for i in range(5)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    # Strictly before: the record created at T0 + 3 stays.
    assert await store.delete_requests_before(T0 + 3, 100) == 1
    assert await store.get_request(TENANT, "r3") is not None
    assert await store.delete_requests_before(T0 + 100, 100) == 2
    assert await store.delete_requests_before(T0 + 100, 100) == 0
    # The sessions the requests wrote are untouched.
    assert await store.get_session(TENANT, "s1") == session


async def commit_with_request(
    store: SessionStore, session: Session, request_id: str, created: float
) -> Session:
    after, messages = turn_of(session, [request_id])
    record = request_of(request_id, created=created)
    await store.commit_turn(after, messages, session.version, record)
    return after


async def test_a_request_record_stored_alone_is_kept_once(store: SessionStore) -> None:
    record = request_of("r1", created=T0 + 0.1234567, result='{"count":0}')
    await store.put_request(record)
    assert await store.get_request(TENANT, "r1") == rules.quantize_request(record)
    with pytest.raises(DuplicateRequest):
        await store.put_request(request_of("r1", result="other"))
    with pytest.raises(DuplicateRequest):
        await store.create_session(new_session(), (), request_of("r1"))
    assert await store.get_request(TENANT, "r1") == rules.quantize_request(record)
