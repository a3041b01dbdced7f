"""TracedTools: a ToolRunner whose every call is an `execute_tool {name}` span.

GenAI semantic conventions v1.37.0, "Execute tool span"
(https://github.com/open-telemetry/semantic-conventions/blob/v1.37.0/docs/gen-ai/gen-ai-spans.md#execute-tool-span):
kind INTERNAL, gen_ai.operation.name "execute_tool", gen_ai.tool.name,
gen_ai.tool.call.id (the model's call id, from server.sessions.tool_calls.CALL_ID),
gen_ai.tool.type "function", and error.type when the tool answered with an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, Status, StatusCode

from server.sessions.model import FunctionDeclaration
from server.sessions.ports import ToolOutcome, ToolRunner
from server.sessions.tool_calls import CALL_ID
from server.tracing.provider import error_type
from server.tracing.setup import Tracing


class TracedTools:
    """Wraps `inner` transparently; the span is current while the tool runs."""

    def __init__(self, inner: ToolRunner, tracing: Tracing) -> None:
        self._inner = inner
        self._tracer = tracing.tracer

    def declarations(self) -> Sequence[FunctionDeclaration]:
        return self._inner.declarations()

    def names(self) -> frozenset[str]:
        return self._inner.names()

    async def run(self, name: str, args: Mapping[str, object]) -> ToolOutcome:
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "function",
        }
        call_id = CALL_ID.get()
        if call_id:
            attributes["gen_ai.tool.call.id"] = call_id
        with self._tracer.start_as_current_span(
            f"execute_tool {name}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            try:
                outcome = await self._inner.run(name, args)
            except Exception as exc:
                span.set_attribute("error.type", error_type(exc))
                raise
            if outcome.is_error:
                span.set_attribute("error.type", "tool_error")
                error = outcome.response.get("error")
                span.set_status(Status(StatusCode.ERROR, str(error)[:200] if error else None))
            return outcome


if TYPE_CHECKING:  # mypy checks that the decorator still implements the port
    _implements: type[ToolRunner] = TracedTools
