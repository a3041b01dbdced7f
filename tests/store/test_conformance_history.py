"""Conformance: sessions created with a history, and clearing history, on every backend."""

from __future__ import annotations

import pytest

from server.sessions.errors import AlreadyExists, Conflict, NotFound
from server.sessions.model import Message, Part, Role, Session, Summary, Usage
from server.sessions.ports import SessionStore
from server.store import rules

from .builders import T0, TENANT, commit, history, new_session, text_message, with_history


async def test_create_with_messages_stores_the_initial_history(store: SessionStore) -> None:
    session, messages = with_history(new_session(created=T0 + 0.1234567), "q", "a", "q2")
    await store.create_session(session, messages)
    session = rules.quantize_session(session)
    messages = [rules.quantize_message(m) for m in messages]
    assert await store.get_session(TENANT, "s1") == session
    assert await store.recent_messages(TENANT, "s1") == messages
    assert await store.recent_messages(TENANT, "s1", 2) == messages[1:]
    assert await store.list_messages(TENANT, "s1", 0, 10) == messages[1:]
    # Turns continue after the initial history.
    later = await commit(store, session, "next")
    assert await history(store, later) == ["q", "a", "q2", "next"]
    assert [m.seq for m in await store.recent_messages(TENANT, "s1")] == [0, 1, 2, 3]


async def test_create_with_messages_keeps_gaps_in_their_seqs(store: SessionStore) -> None:
    """An imported history may skip seqs; they are kept as given."""
    session = new_session().evolve(next_seq=10, message_count=2)
    messages = [text_message(3, "three"), text_message(7, "seven")]
    await store.create_session(session, messages)
    assert [m.seq for m in await store.list_messages(TENANT, "s1", -1, 10)] == [3, 7]
    assert [m.seq for m in await store.list_messages(TENANT, "s1", 3, 10)] == [7]


@pytest.mark.parametrize("mangle", ["unordered", "seq-not-below-next-seq"])
async def test_an_initial_history_breaking_the_seq_rules_is_refused_whole(
    store: SessionStore, mangle: str
) -> None:
    session, messages = with_history(new_session(), "a", "b")
    if mangle == "unordered":
        messages.reverse()
    else:
        session = session.evolve(next_seq=1)
    with pytest.raises(ValueError, match="seq"):
        await store.create_session(session, messages)
    with pytest.raises(NotFound):
        await store.get_session(TENANT, "s1")


async def test_create_over_a_taken_id_keeps_the_original_session_and_history(
    store: SessionStore,
) -> None:
    original, messages = with_history(new_session(labels={"v": "1"}), "original")
    await store.create_session(original, messages)
    other, other_messages = with_history(new_session(labels={"v": "2"}), "x", "y")
    with pytest.raises(AlreadyExists):
        await store.create_session(other, other_messages)
    assert await store.get_session(TENANT, "s1") == original
    assert await history(store, original) == ["original"]


def cleared(session: Session) -> Session:
    """The session as clear_history stores it: no messages, seqs not reused."""
    return session.evolve(
        version=session.version + 1, message_count=0, update_time=session.update_time + 1
    )


async def test_clear_history_deletes_every_message_and_replaces_the_session(
    store: SessionStore,
) -> None:
    session = new_session()
    await store.create_session(session)
    for i in range(3):
        session = await commit(store, session, f"q{i}", f"a{i}")
    await store.recent_messages(TENANT, "s1")  # warm any cache
    empty = cleared(session)
    await store.clear_history(empty, session.version)
    assert await store.get_session(TENANT, "s1") == empty
    assert await store.recent_messages(TENANT, "s1") == []
    assert await store.recent_messages(TENANT, "s1", 3) == []
    assert await store.list_messages(TENANT, "s1", -1, 10) == []
    # Seqs continue where they were: a cleared seq never comes back.
    later = await commit(store, empty, "fresh")
    assert [(m.seq, m.text) for m in await store.recent_messages(TENANT, "s1")] == [(6, "fresh")]
    assert await store.get_session(TENANT, "s1") == later


async def test_clear_history_with_a_stale_version_conflicts_and_changes_nothing(
    store: SessionStore,
) -> None:
    session = new_session()
    await store.create_session(session)
    current = await commit(store, session, "kept")
    with pytest.raises(Conflict):
        await store.clear_history(cleared(session), session.version)
    assert await store.get_session(TENANT, "s1") == current
    assert await history(store, current) == ["kept"]


async def test_clear_history_of_a_missing_or_foreign_session_is_not_found(
    store: SessionStore,
) -> None:
    with pytest.raises(NotFound):
        await store.clear_history(cleared(new_session("nope")), 1)
    mine = new_session(tenant="a")
    await store.create_session(mine)
    mine = await commit(store, mine, "mine")
    with pytest.raises(NotFound):
        await store.clear_history(cleared(mine.evolve(tenant="b")), mine.version)
    assert await history(store, mine) == ["mine"]


@pytest.mark.parametrize("mangle", ["version-not-advanced", "next-seq-lowered"])
async def test_clear_history_refuses_a_session_that_would_corrupt_history(
    store: SessionStore, mangle: str
) -> None:
    session = new_session()
    await store.create_session(session)
    current = await commit(store, session, "a", "b")
    empty = cleared(current)
    if mangle == "version-not-advanced":
        empty = empty.evolve(version=current.version)
    else:
        empty = empty.evolve(next_seq=1)
    with pytest.raises(ValueError, match=r"version|seq"):
        await store.clear_history(empty, current.version)
    assert await store.get_session(TENANT, "s1") == current
    assert await history(store, current) == ["a", "b"]


async def test_a_long_initial_history_is_stored_whole_and_in_order(store: SessionStore) -> None:
    """Long histories are encoded in slices and inserted in batches, still in one create."""
    texts = [f"m{i}" for i in range(2500)]
    session, messages = with_history(new_session(), *texts)
    await store.create_session(session, messages)
    assert await history(store, session) == texts
    assert (await store.get_session(TENANT, "s1")).message_count == 2500


async def test_a_summary_message_keeps_its_range(store: SessionStore) -> None:
    """A compaction summary is a message like any other, plus the range it covers."""
    session, messages = with_history(new_session(), "q", "a", "q2")
    summary = Message(
        Role.MODEL,
        (Part(text="summary"),),
        seq=3,
        create_time=T0,
        turn_id="t",
        usage=Usage(prompt_tokens=7, candidates_tokens=2, total_tokens=9),
        model="m",
        summary=Summary(0, 1),
    )
    await store.create_session(session.evolve(next_seq=4, message_count=4), [*messages, summary])
    stored = await store.recent_messages(TENANT, "s1")
    assert stored[-1] == rules.quantize_message(summary)
    assert (await store.list_messages(TENANT, "s1", 2, 10))[-1].summary == Summary(0, 1)
