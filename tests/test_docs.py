"""The README stays true to the code: every RPC of the contract and every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

from markdown_it import MarkdownIt

from chatd.v1 import chat_service_pb2 as pb
from server.config import OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_rpc_of_the_contract_is_in_the_api_overview() -> None:
    # A row may name a pair: | `ExportSession` / `ImportSession` | ...
    cells = re.findall(r"^\| (`\w+`(?: / `\w+`)*) \|", README, re.MULTILINE)
    listed = {name for cell in cells for name in re.findall(r"`(\w+)`", cell)}
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["ChatService"].methods}
    assert methods - listed == set()


def test_every_setting_is_in_the_configuration_reference() -> None:
    missing = [
        env
        for _, flag, envs, _, _ in OPTIONS
        for env in envs[:1]
        if f"`{env}`" not in README or (flag is not None and f"`{flag}`" not in README)
    ]
    assert missing == []


def test_the_rpc_table_renders_as_one_table_of_two_columns() -> None:
    """Rendered as GitHub renders it (CommonMark with tables): one table holds every RPC,
    and no row breaks out of it (a blank line, or a `|` in a cell, would split it)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(README)
    tables = []
    for index, token in enumerate(tokens):
        if token.type == "table_open":
            end = next(i for i in range(index, len(tokens)) if tokens[i].type == "table_close")
            cells = [t.content for t in tokens[index:end] if t.type == "inline"]
            assert token.map is not None
            tables.append((token.map, cells))
    rpc_tables = [(lines, cells) for lines, cells in tables if cells[:2] == ["RPC", "What it does"]]
    assert len(rpc_tables) == 1
    (first, last), cells = rpc_tables[0]
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["ChatService"].methods}
    named = {name for cell in cells[::2] for name in re.findall(r"`(\w+)`", cell)}
    assert methods <= named
    source = README.splitlines()[first:last]
    assert len(source) == len(cells) // 2 + 1  # header, delimiter row, one line per row
    for line in source:
        # GitHub splits a row at every unescaped pipe, inside code spans too.
        assert len(re.findall(r"(?<!\\)\|", line)) == 3, line
