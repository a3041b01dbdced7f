"""Conformance: committing turns and reading history back, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from server.sessions.errors import Conflict
from server.sessions.model import (
    FinishReason,
    Message,
    Part,
    Role,
    SessionSettings,
    Usage,
)
from server.sessions.ports import SessionStore

from .builders import EVERY_PART_KIND, TENANT, commit, history, new_session, turn_of
from .conftest import Backend


async def test_commit_turn_appends_messages_and_replaces_the_session(
    store: SessionStore,
) -> None:
    session = new_session()
    await store.create_session(session)
    after, messages = turn_of(session, ["question", "answer"])
    after = after.evolve(usage=Usage(prompt_tokens=3, total_tokens=7))
    await store.commit_turn(after, messages, session.version)
    assert await store.get_session(TENANT, "s1") == after
    assert await store.recent_messages(TENANT, "s1") == messages
    later = await commit(store, after, "again")
    assert await history(store, later) == ["question", "answer", "again"]
    assert (await store.get_session(TENANT, "s1")).version == after.version + 1


async def test_commit_turn_without_messages_only_updates_the_session(
    store: SessionStore,
) -> None:
    session = new_session()
    await store.create_session(session)
    renamed = session.evolve(version=2, settings=SessionSettings(display_name="renamed"))
    await store.commit_turn(renamed, [], expected_version=1)
    assert await store.get_session(TENANT, "s1") == renamed
    assert await store.recent_messages(TENANT, "s1") == []


async def test_stale_version_raises_conflict_and_writes_nothing(store: SessionStore) -> None:
    session = new_session()
    await store.create_session(session)
    current = await commit(store, session, "first")
    # A second writer that read version 1 too.
    stale, messages = turn_of(session, ["lost update"])
    with pytest.raises(Conflict):
        await store.commit_turn(stale, messages, session.version)
    assert await store.get_session(TENANT, "s1") == current
    assert await history(store, current) == ["first"]


@pytest.mark.parametrize(
    "mangle",
    ["reused-seq", "unordered-seqs", "next-seq-too-low", "version-not-advanced"],
)
async def test_turns_that_would_corrupt_history_are_rejected(
    store: SessionStore, mangle: str
) -> None:
    """A caller bug (reusing seqs, not bumping the version) is a ValueError, not data loss."""
    session = new_session()
    await store.create_session(session)
    current = await commit(store, session, "a", "b")
    after, messages = turn_of(current, ["c", "d"])
    if mangle == "reused-seq":
        messages = [Message(m.role, m.parts, seq=m.seq - 2) for m in messages]
    elif mangle == "unordered-seqs":
        messages.reverse()
    elif mangle == "next-seq-too-low":
        after = after.evolve(next_seq=messages[-1].seq)
    else:
        after = after.evolve(version=current.version)
    with pytest.raises(ValueError, match=r"seq|version"):
        await store.commit_turn(after, messages, current.version)
    assert await store.get_session(TENANT, "s1") == current
    assert await history(store, current) == ["a", "b"]


async def test_200_concurrent_turns_on_different_sessions_are_all_durable(
    store: SessionStore, backend: Backend
) -> None:
    sessions = [new_session(f"s{i:03}") for i in range(200)]
    await asyncio.gather(*(store.create_session(s) for s in sessions))
    turns = [turn_of(s, [f"q{s.session_id}", f"a{s.session_id}"]) for s in sessions]
    await asyncio.gather(
        *(store.commit_turn(after, msgs, 1) for after, msgs in turns),
    )
    reader = store
    if backend.persistent:
        await store.close()
        reader = await backend.open()
    try:
        for after, msgs in turns:
            assert await reader.get_session(TENANT, after.session_id) == after
            assert await reader.recent_messages(TENANT, after.session_id) == msgs
    finally:
        if reader is not store:
            await reader.close()


async def test_recent_messages_returns_the_last_limit_oldest_first(store: SessionStore) -> None:
    session = new_session()
    await store.create_session(session)
    for i in range(5):
        session = await commit(store, session, f"m{i * 2}", f"m{i * 2 + 1}")
    every = [f"m{i}" for i in range(10)]

    async def texts(limit: int | None) -> list[str]:
        return [m.text for m in await store.recent_messages(TENANT, "s1", limit)]

    assert await texts(None) == every
    assert await texts(3) == every[-3:]
    assert await texts(1) == every[-1:]
    assert await texts(10) == every
    assert await texts(1000) == every
    assert await texts(0) == []
    assert [m.seq for m in await store.recent_messages(TENANT, "s1", 4)] == [6, 7, 8, 9]


async def test_list_messages_pages_through_history_by_seq(store: SessionStore) -> None:
    session = new_session()
    await store.create_session(session)
    for i in range(7):
        session = await commit(store, session, f"m{i}")
    pages: list[list[int]] = []
    after = -1
    while page := await store.list_messages(TENANT, "s1", after, 3):
        pages.append([m.seq for m in page])
        after = page[-1].seq
    assert pages == [[0, 1, 2], [3, 4, 5], [6]]
    assert [m.seq for m in await store.list_messages(TENANT, "s1", 4, 100)] == [5, 6]
    assert await store.list_messages(TENANT, "s1", 6, 10) == []
    assert await store.list_messages(TENANT, "s1", -1, 0) == []


@pytest.mark.parametrize(
    "message",
    [
        EVERY_PART_KIND,
        Message(Role.USER, (Part(text="bare"),), usage=Usage()),
        Message(Role.USER, (), finish_reason=FinishReason.UNSPECIFIED),
    ],
    ids=["every-part-kind", "zero-usage-not-none", "no-parts-unspecified-finish"],
)
async def test_messages_round_trip_losslessly(store: SessionStore, message: Message) -> None:
    """Bytes stay exact, usage None differs from zero usage, every part kind survives."""
    session = new_session()
    await store.create_session(session)
    after = session.evolve(version=2, next_seq=1, message_count=1)
    await store.commit_turn(after, [message], 1)
    assert await store.recent_messages(TENANT, "s1") == [message]
    assert await store.list_messages(TENANT, "s1", -1, 10) == [message]
