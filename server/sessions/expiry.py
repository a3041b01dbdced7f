"""Expired sessions are gone: reads treat them as missing until the sweeper deletes them."""

from __future__ import annotations

from server.sessions.errors import session_not_found
from server.sessions.model import Session
from server.sessions.ports import SessionStore


async def live_session(store: SessionStore, tenant: str, session_id: str, now: float) -> Session:
    """The session, or NotFound if it does not exist or has expired."""
    session = await store.get_session(tenant, session_id)
    expire_time = session.expire_time
    if expire_time is not None and expire_time <= now:
        raise session_not_found(session_id)
    return session
