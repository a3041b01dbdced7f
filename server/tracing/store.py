"""TracedStore: a SessionStore whose every operation (one transaction each) is a span.

Database client spans after the semantic conventions v1.37.0
(https://github.com/open-telemetry/semantic-conventions/blob/v1.37.0/docs/database/database-spans.md):
kind CLIENT, db.system.name ("sqlite", "postgresql", or "other_sql" for the in-memory
store) and the older db.system, and db.operation.name, the store port's method
("commit_turn", "get_session"...). A store method is one transaction of several
statements over several tables, so it has no single target (collection); the span is
named after the operation, which says more in a trace than the convention's fallback
(db.system.name alone). Failures are recorded as the span's error status and exception
event by the SDK; NotFound and the other answers of the store contract are errors to the
span as well. It wraps the database's store beneath the session cache
(server.store.open_store's `wrap`), so cache hits, which are no transaction, have no span.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from server.sessions.ports import (
    SessionStore,
)
from server.sessions.store_wrapper import StoreWrapper
from server.tracing.setup import Tracing


class TracedStore(StoreWrapper):
    """Wraps `inner` transparently; each operation is a span named after it."""

    def __init__(self, inner: SessionStore, tracing: Tracing, db_system: str) -> None:
        super().__init__(inner)
        self._tracer = tracing.tracer
        self._system = db_system

    def _around(self, operation: str) -> AbstractContextManager[object]:
        # Store work with no trace around it (the sweeper's) would be a root trace per
        # sweep: it is not traced.
        if not trace.get_current_span().get_span_context().is_valid:
            return nullcontext()
        return self._tracer.start_as_current_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": self._system,
                "db.system": self._system,
                "db.operation.name": operation,
            },
        )


if TYPE_CHECKING:  # mypy checks that the decorator still implements the port
    _implements: type[SessionStore] = TracedStore
