"""Per-call context shared by the servicers: who is calling, and log binding."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

import structlog

from server.sessions.model import DEFAULT_TENANT


class Context(Protocol):
    """What the servicers use of a call, whatever carries it: grpc.aio's ServicerContext
    has it, and so does the HTTP edge's context (server/http)."""

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline; None without one."""


# Set per RPC by the interceptor, after authentication.
TENANT: ContextVar[str] = ContextVar("chatd_tenant", default=DEFAULT_TENANT)


def tenant_of(context: Context) -> str:
    """The calling tenant: the owner of the API key (everyone shares one without keys)."""
    return TENANT.get()


def bind_session(request: Any) -> None:
    """Adds the request's session id to this RPC's log line."""
    session_id = getattr(request, "session_id", "")
    if session_id:
        structlog.contextvars.bind_contextvars(session_id=session_id)
