"""InstrumentedTools: a ToolRunner that counts and times each call by tool and outcome."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from server.metrics.core import Metrics
from server.metrics.labels import OTHER
from server.sessions.model import FunctionDeclaration
from server.sessions.ports import ToolOutcome, ToolRunner


class InstrumentedTools:
    """Wraps `inner` transparently; calls to names it does not serve count as "other".

    A call whose task is cancelled is not counted (the tool neither answered nor failed);
    an exception from `inner`, which the ToolRunner contract rules out, counts as an error.
    """

    def __init__(self, inner: ToolRunner, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def declarations(self) -> Sequence[FunctionDeclaration]:
        return self._inner.declarations()

    def names(self) -> frozenset[str]:
        return self._inner.names()

    async def run(self, name: str, args: Mapping[str, object]) -> ToolOutcome:
        start = time.perf_counter()
        label = name if name in self._inner.names() else OTHER
        try:
            outcome = await self._inner.run(name, args)
        except Exception:
            self._metrics.record_tool_call(label, True, time.perf_counter() - start)
            raise
        self._metrics.record_tool_call(label, outcome.is_error, time.perf_counter() - start)
        return outcome


if TYPE_CHECKING:  # mypy checks that the decorator still implements the port
    _implements: type[ToolRunner] = InstrumentedTools
