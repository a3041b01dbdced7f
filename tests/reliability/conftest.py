"""Soak tests (the `soak` marker, registered in pyproject.toml) run only with `-m soak`
(`make soak`)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("markexpr", ""):
        return
    skip = pytest.mark.skip(reason="run with make soak")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)
