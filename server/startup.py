"""StartupError: why chatd cannot start, as one line naming the file, the cause and the fix.

Raised by whatever finds the problem and caught once, in `server.__main__`, which logs it
as a single record and exits 1: an operator reads one line instead of a traceback.
"""

from __future__ import annotations


class StartupError(Exception):
    """chatd cannot start: `path` (a file, directory or address) is unusable because of
    `cause`; `fix` says what the operator can do about it."""

    def __init__(self, path: str, cause: str, fix: str) -> None:
        super().__init__(path, cause, fix)
        self.path = path
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.path}: {self.cause}; {self.fix}"
