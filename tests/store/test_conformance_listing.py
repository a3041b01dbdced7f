"""Conformance: keyset pagination and label filtering of list_sessions, on every backend."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.sessions.model import Session
from server.sessions.ports import SessionCursor, SessionOrder, SessionQuery, SessionStore

from .builders import T0, TENANT, commit, new_session

ORDERS = [
    pytest.param(order, desc, id=f"{order.value}-{'desc' if desc else 'asc'}")
    for order in SessionOrder
    for desc in (False, True)
]


def sort_time(session: Session, order: SessionOrder) -> float:
    return session.create_time if order is SessionOrder.CREATE_TIME else session.update_time


def cursor_of(session: Session, order: SessionOrder) -> SessionCursor:
    return SessionCursor(sort_time(session, order), session.session_id)


async def walk(
    store: SessionStore, order: SessionOrder, desc: bool, limit: int, **labels: str
) -> list[str]:
    """Every session id, page by page, following the cursor of each page's last session."""
    ids: list[str] = []
    after: SessionCursor | None = None
    while True:
        query = SessionQuery(limit=limit, order=order, descending=desc, after=after, labels=labels)
        page = await store.list_sessions(TENANT, query)
        assert len(page) <= limit
        ids += [s.session_id for s in page]
        if len(page) < limit:
            return ids
        after = cursor_of(page[-1], order)


@pytest.mark.parametrize(("order", "desc"), ORDERS)
async def test_pages_follow_time_then_id_with_ties_broken_by_id(
    store: SessionStore, order: SessionOrder, desc: bool
) -> None:
    """Equal timestamps page correctly: each session appears exactly once, in key order."""
    created = {"b": T0, "a": T0, "c": T0 + 1, "d": T0 - 1, "e": T0 + 1, "f": T0, "g": T0 - 1}
    updated = {"a": T0 + 5, "b": T0 + 5, "c": T0 + 2, "d": T0 + 9, "e": T0 + 5, "f": T0 + 2}
    sessions = {}
    for sid, when in created.items():
        sessions[sid] = new_session(sid, created=when)
        await store.create_session(sessions[sid])
    for sid, when in updated.items():
        sessions[sid] = await commit(store, sessions[sid], "hi", updated=when)
    expected = sorted(sessions, key=lambda s: (sort_time(sessions[s], order), s), reverse=desc)
    for limit in (1, 2, 3, 100):
        assert await walk(store, order, desc, limit) == expected


BETWEEN_PAGES = {
    # direction: (sessions inserted after page one as (id, created), the rest expected)
    "asc": (
        [("s2a", T0 + 2), ("s1z", T0 + 2), ("late", T0 + 10), ("early", T0 - 10)],
        ["s2a", "s3", "s4", "s5", "late"],
    ),
    "desc": (
        [("s2z", T0 + 3), ("s3a", T0 + 3), ("late", T0 + 10), ("early", T0 - 10)],
        ["s2z", "s2", "s1", "s0", "early"],
    ),
}


@pytest.mark.parametrize("direction", ["asc", "desc"])
async def test_sessions_inserted_between_pages_appear_only_beyond_the_cursor(
    store: SessionStore, direction: str
) -> None:
    """Keyset pages neither repeat nor skip rows when others are inserted meanwhile.

    Inserted rows show up on later pages exactly when their (time, id) lies beyond the
    cursor, including rows with the cursor's own timestamp.
    """
    for i in range(6):
        await store.create_session(new_session(f"s{i}", created=T0 + i))
    desc = direction == "desc"
    query = SessionQuery(limit=3, order=SessionOrder.CREATE_TIME, descending=desc)
    first = await store.list_sessions(TENANT, query)
    inserted, expected_rest = BETWEEN_PAGES[direction]
    for sid, when in inserted:
        await store.create_session(new_session(sid, created=when))
    rest = await walk_from(store, query, cursor_of(first[-1], SessionOrder.CREATE_TIME))
    assert [s.session_id for s in first] == (["s5", "s4", "s3"] if desc else ["s0", "s1", "s2"])
    assert rest == expected_rest


async def walk_from(store: SessionStore, query: SessionQuery, after: SessionCursor) -> list[str]:
    ids: list[str] = []
    while page := await store.list_sessions(TENANT, replace(query, after=after)):
        ids += [s.session_id for s in page]
        after = cursor_of(page[-1], query.order)
    return ids


async def test_limit_caps_the_page_and_zero_returns_nothing(store: SessionStore) -> None:
    for i in range(5):
        await store.create_session(new_session(f"s{i}", created=T0 + i))
    assert len(await store.list_sessions(TENANT, SessionQuery(limit=2))) == 2
    assert await store.list_sessions(TENANT, SessionQuery(limit=0)) == []
    newest_first = await store.list_sessions(TENANT, SessionQuery(limit=10))
    assert [s.session_id for s in newest_first] == ["s4", "s3", "s2", "s1", "s0"]


ODD_KEYS = ["a.b", 'q"uote', "$", "$.labels", "sp ace", "[0]", "ünï", "'", "\\", "", "a"]


async def test_label_filter_matches_exact_key_and_value_for_odd_keys(
    store: SessionStore,
) -> None:
    """Keys with dots, quotes, '$' or brackets are compared as plain strings."""
    for i, key in enumerate(ODD_KEYS):
        await store.create_session(new_session(f"odd{i}", labels={key: f"v{i}"}))
    for i, key in enumerate(ODD_KEYS):
        query = SessionQuery(limit=100, labels={key: f"v{i}"})
        assert [s.session_id for s in await store.list_sessions(TENANT, query)] == [f"odd{i}"]
        wrong_value = SessionQuery(limit=100, labels={key: f"v{i}x"})
        assert await store.list_sessions(TENANT, wrong_value) == []


async def test_label_filter_requires_every_label_and_pages(store: SessionStore) -> None:
    labels = [
        {"env": "prod", "team": "a"},
        {"env": "prod"},
        {"env": "dev", "team": "a"},
        {"env": "prod", "team": "a", "extra": "x"},
        {},
        {"env": "prod", "team": "a"},
    ]
    for i, label in enumerate(labels):
        await store.create_session(new_session(f"s{i}", created=T0 + i, labels=label))
    assert await walk(store, SessionOrder.CREATE_TIME, False, 2, env="prod", team="a") == [
        "s0",
        "s3",
        "s5",
    ]
    assert await walk(store, SessionOrder.CREATE_TIME, True, 1, env="prod") == [
        "s5",
        "s3",
        "s1",
        "s0",
    ]
    assert await walk(store, SessionOrder.CREATE_TIME, False, 10, team="b") == []
    # Tenant scoping applies to filtered listings too.
    other = SessionQuery(limit=10, labels={"env": "prod"})
    assert await store.list_sessions("another-tenant", other) == []


async def test_the_largest_filter_and_cursor_the_api_allows_work(store: SessionStore) -> None:
    """ListSessions admits up to 64 filter terms (keys of 63 characters, values of 256 with
    quotes, backslashes and non-ASCII) and page-token cursors up to the year 5000 with
    128-character ids: every backend answers such a query instead of failing."""
    labels = {f"k{i:02d}" + "x" * 60: ('v"\\é' + f"{i:02d}") * 42 for i in range(64)}
    assert all(len(k) == 63 and len(v) <= 256 for k, v in labels.items())
    await store.create_session(new_session("all", labels=labels))
    await store.create_session(new_session("some", labels=dict(list(labels.items())[:63])))
    query = SessionQuery(limit=10, labels=labels)
    assert [s.session_id for s in await store.list_sessions(TENANT, query)] == ["all"]
    for order in SessionOrder:
        for desc in (False, True):
            far = SessionCursor(0.0 if desc else 1e11, "z" * 128)
            query = SessionQuery(limit=10, order=order, descending=desc, after=far, labels=labels)
            assert await store.list_sessions(TENANT, query) == []
