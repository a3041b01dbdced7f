"""The SELECT of one page of a tenant's sessions, built alike for both SQL backends.

Both list with the same conditions, order and parameters; what differs is passed in:
how a bound parameter is written ('?' or '$n'), how one label is matched (SQLite reads
the settings JSON, PostgreSQL its jsonb labels column), and a fixed condition rows must
meet besides (SQLite's staged sessions are left out).
"""

from __future__ import annotations

from collections.abc import Callable

from server.sessions.ports import SessionOrder, SessionQuery
from server.store import rules
from server.store.rows import SESSION_COLUMNS


def session_page(
    tenant: str,
    query: SessionQuery,
    *,
    placeholder: Callable[[int], str],
    label_matches: str,
    visible: str | None = None,
) -> tuple[str, list[object]]:
    """The SELECT of `query`'s page (SESSION_COLUMNS rows) and its parameters, in order.

    placeholder(n) writes the n-th bound parameter (from 1); label_matches is the
    condition that one label is present with a value, with `{key}` and `{value}` where
    their placeholders go; `visible`, when given, is a condition every listed row meets.
    Only fixed SQL text is chosen here; every value is a bound parameter.
    """
    column = "create_time" if query.order is SessionOrder.CREATE_TIME else "update_time"
    op, direction = ("<", "DESC") if query.descending else (">", "ASC")
    params: list[object] = []

    def bind(value: object) -> str:
        params.append(value)
        return placeholder(len(params))

    where = [f"tenant = {bind(tenant)}"]
    if visible is not None:
        where.append(visible)
    if (after := query.after) is not None:
        time = bind(rules.to_micros(after.time))
        where.append(f"({column}, session_id) {op} ({time}, {bind(after.session_id)})")
    for key, value in query.labels.items():
        key_at = bind(key)
        where.append(label_matches.format(key=key_at, value=bind(value)))
    if query.alive_at is not None:
        alive_at = bind(rules.to_micros(query.alive_at))
        where.append(f"(expire_time IS NULL OR expire_time > {alive_at})")
    statement = (
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)}"
        f" ORDER BY {column} {direction}, session_id {direction} LIMIT {bind(query.limit)}"
    )
    return statement, params
