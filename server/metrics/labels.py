"""BoundedLabel: keeps one label's set of values small, folding the excess into "other"."""

from __future__ import annotations

from collections.abc import Iterable

OTHER = "other"


class BoundedLabel:
    """The values one label may take: those admitted so far, at most `limit` of them.

    A value that is not admitted is reported as OTHER, so a caller-chosen string (a model
    name set by a client, an unexpected error reason) can never grow the series count.
    """

    def __init__(self, limit: int, initial: Iterable[str] = ()) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._values: set[str] = set()
        for value in initial:
            self.admit(value)

    def get(self, value: str) -> str:
        """`value` if admitted, else OTHER."""
        return value if value in self._values else OTHER

    def admit(self, value: str) -> str:
        """Admits `value` while there is room; then the same as get()."""
        if value not in self._values and len(self._values) < self._limit:
            self._values.add(value)
        return self.get(value)
