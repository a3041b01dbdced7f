"""Conformance: creating, reading, isolating and deleting sessions, on every backend."""

from __future__ import annotations

import pytest

from server.sessions.errors import AlreadyExists, NotFound
from server.sessions.model import (
    FunctionCall,
    FunctionResponse,
    GenerationConfig,
    PendingTurn,
    SessionSettings,
    ThinkingConfig,
    Usage,
)
from server.sessions.ports import SessionQuery, SessionStore

from .builders import FULL_SETTINGS, T0, TENANT, commit, history, new_session, turn_of


async def test_created_session_reads_back_equal(store: SessionStore) -> None:
    session = new_session()
    await store.create_session(session)
    assert await store.get_session(TENANT, "s1") == session


async def test_duplicate_create_raises_already_exists_and_keeps_the_original(
    store: SessionStore,
) -> None:
    await store.create_session(new_session(labels={"v": "first"}))
    with pytest.raises(AlreadyExists):
        await store.create_session(new_session(labels={"v": "second"}))
    assert (await store.get_session(TENANT, "s1")).settings.labels == {"v": "first"}


async def test_same_id_in_two_tenants_are_two_sessions(store: SessionStore) -> None:
    await store.create_session(new_session(tenant="a", labels={"who": "a"}))
    await store.create_session(new_session(tenant="b", labels={"who": "b"}))
    assert (await store.get_session("a", "s1")).settings.labels == {"who": "a"}
    assert (await store.get_session("b", "s1")).settings.labels == {"who": "b"}


async def test_missing_session_is_not_found_for_every_method(store: SessionStore) -> None:
    with pytest.raises(NotFound):
        await store.get_session(TENANT, "nope")
    with pytest.raises(NotFound):
        await store.recent_messages(TENANT, "nope")
    with pytest.raises(NotFound):
        await store.recent_messages(TENANT, "nope", 0)
    with pytest.raises(NotFound):
        await store.list_messages(TENANT, "nope", -1, 10)
    with pytest.raises(NotFound):
        await store.delete_session(TENANT, "nope")
    after, messages = turn_of(new_session("nope"), ["x"])
    with pytest.raises(NotFound):
        await store.commit_turn(after, messages, 1)


async def test_other_tenant_sees_not_found_everywhere_and_changes_nothing(
    store: SessionStore,
) -> None:
    """A session id known in tenant A behaves as missing for tenant B, for every method."""
    mine = new_session(tenant="a")
    await store.create_session(mine)
    mine = await commit(store, mine, "hello")
    with pytest.raises(NotFound):
        await store.get_session("b", "s1")
    with pytest.raises(NotFound):
        await store.recent_messages("b", "s1", 5)
    with pytest.raises(NotFound):
        await store.list_messages("b", "s1", -1, 5)
    with pytest.raises(NotFound):
        await store.delete_session("b", "s1")
    theirs, messages = turn_of(mine.evolve(tenant="b"), ["intruder"])
    with pytest.raises(NotFound):
        await store.commit_turn(theirs, messages, mine.version)
    assert await store.list_sessions("b", SessionQuery(limit=10)) == []
    assert await store.get_session("a", "s1") == mine
    assert await history(store, mine) == ["hello"]


async def test_delete_removes_the_session_and_its_messages(store: SessionStore) -> None:
    session = new_session()
    await store.create_session(session)
    await commit(store, session, "one", "two")
    await store.delete_session(TENANT, "s1")
    with pytest.raises(NotFound):
        await store.get_session(TENANT, "s1")
    with pytest.raises(NotFound):
        await store.recent_messages(TENANT, "s1")
    assert await store.list_sessions(TENANT, SessionQuery(limit=10)) == []
    # A new session under the same id starts with an empty history.
    await store.create_session(session)
    assert await store.recent_messages(TENANT, "s1") == []
    assert await store.list_messages(TENANT, "s1", -1, 10) == []


async def test_delete_leaves_other_sessions_alone(store: SessionStore) -> None:
    keep = new_session("keep")
    await store.create_session(keep)
    await store.create_session(new_session("drop"))
    keep = await commit(store, keep, "kept")
    await store.delete_session(TENANT, "drop")
    assert await store.get_session(TENANT, "keep") == keep
    assert await history(store, keep) == ["kept"]


@pytest.mark.parametrize(
    "settings",
    [
        SessionSettings(),
        FULL_SETTINGS,
        SessionSettings(generation_config=GenerationConfig(thinking=ThinkingConfig())),
        SessionSettings(generation_config=GenerationConfig(stop_sequences=("END",), top_k=40)),
    ],
    ids=["defaults", "every-field-zero-vs-none", "empty-thinking", "some-fields"],
)
async def test_settings_round_trip_losslessly(
    store: SessionStore, settings: SessionSettings
) -> None:
    """Every settings field survives storage, including 0 versus None (inherit)."""
    session = new_session(settings=settings).evolve(
        usage=Usage(1, 2, 3, 4, 5, 6),
        pending=PendingTurn(
            turn_id="t1",
            first_seq=0,
            rounds=1,
            calls=(FunctionCall("c1", "lookup", {"q": "x"}), FunctionCall("c2", "bare")),
            answered=(FunctionResponse("c1", "lookup", {"result": [1, 2.5, "x"]}),),
        ),
        message_count=0,
    )
    await store.create_session(session)
    stored = await store.get_session(TENANT, "s1")
    assert stored == session
    assert stored.settings.generation_config == settings.generation_config


async def test_times_are_kept_to_the_microsecond(store: SessionStore) -> None:
    """Backends store integer microseconds; every backend returns the same rounded value."""
    await store.create_session(new_session(created=T0 + 0.1234567))
    stored = await store.get_session(TENANT, "s1")
    assert stored.create_time == pytest.approx(T0 + 0.123457, abs=1e-9)
    assert stored.create_time == round((T0 + 0.1234567) * 1e6) / 1e6


async def test_count_sessions_counts_one_tenant(store: SessionStore) -> None:
    """The per-tenant session quota counts only that tenant's sessions."""
    assert await store.count_sessions(TENANT) == 0
    for sid in ("a", "b", "c"):
        await store.create_session(new_session(sid))
    await store.create_session(new_session("a", tenant="other"))
    assert await store.count_sessions(TENANT) == 3
    assert await store.count_sessions("other") == 1
    await store.delete_session(TENANT, "b")
    assert await store.count_sessions(TENANT) == 2
