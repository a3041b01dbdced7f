"""The running chatd's version, as its installed distribution records it."""

from __future__ import annotations

from importlib import metadata


def chatd_version() -> str:
    """The installed chatd distribution's version ("unknown" when run from a bare tree)."""
    try:
        return metadata.version("chatd")
    except metadata.PackageNotFoundError:
        return "unknown"
