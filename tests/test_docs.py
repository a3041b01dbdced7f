"""The documents stay true to the code: every RPC of the contract and every setting is in
the README; every link between the repository's documents resolves, anchors included; every
test a document names exists; and no document cites one that is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from google.genai import types
from markdown_it import MarkdownIt

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2
from server.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
# The repository's own documents: the README, docs/, and the READMEs beside the code.
DOCUMENTS = [
    ROOT / "README.md",
    *DOCS,
    ROOT / "bench" / "README.md",
    ROOT / "client_examples" / "README.md",
    ROOT / "clients" / "python" / "README.md",
    ROOT / "generated" / "ts" / "README.md",
]


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


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped (hyphens and
    underscores kept), spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub does."""
    tokens = MarkdownIt("commonmark").enable("table").parse(path.read_text())
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        slug = _slug(tokens[index + 1].content)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    """The targets of the Markdown links of `path` (code spans and blocks left out)."""
    targets: list[str] = []

    def walk(tokens: list[Any]) -> None:
        for token in tokens:
            if token.type == "link_open":
                targets.append(str(token.attrGet("href")))
            if token.children:
                walk(token.children)

    walk(MarkdownIt("commonmark").enable("table").parse(path.read_text()))
    return targets


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_link_between_documents_resolves(document: Path) -> None:
    """A relative link names a file or directory of the repository, and its anchor, if it has
    one, a heading of that file."""
    broken = []
    for target in _links(document):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto: ...: outside the repository
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        found = linked.exists()
        if not found or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert broken == []


CITED_TEST = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_test_a_document_names_exists(document: Path) -> None:
    missing = []
    for file, name in CITED_TEST.findall(document.read_text()):
        source = ROOT / file
        if not source.exists() or not re.search(
            rf"^(async )?def {name}\(", source.read_text(), re.MULTILINE
        ):
            missing.append(f"{file}::{name}")
    assert missing == []


def test_the_docs_name_their_tests_in_the_form_that_is_checked() -> None:
    """promises.md and gemini-wire.md say which tests hold each statement, as file::name."""
    for name in ("promises.md", "gemini-wire.md"):
        assert len(CITED_TEST.findall((ROOT / "docs" / name).read_text())) >= 30, name


@pytest.mark.parametrize("document", DOCS, ids=_name)
def test_every_path_the_docs_name_exists(document: Path) -> None:
    """`server/...`, `tests/...`, `protos/...` and the like, in code spans, are files or
    directories of the repository."""
    text = document.read_text()
    spans = re.findall(r"`([^`\s]+)`", text)
    paths = [
        span.split("::")[0]
        for span in spans
        if re.match(r"(server|tests|protos|bench|docs|scripts|generated|clients)/", span)
    ]
    assert [path for path in paths if not (ROOT / path).exists()] == []


def test_the_readme_indexes_every_document_of_docs() -> None:
    listed = set(_links(ROOT / "README.md"))
    assert [p.name for p in DOCS if f"docs/{p.name}" not in listed] == []


def test_no_file_cites_a_document_outside_the_repository() -> None:
    """The product, architecture and Gemini notes the project began from live in docs/
    (promises.md, architecture.md, gemini-wire.md): nothing cites the outside files."""
    outside = [name + ".md" for name in ("PRODUCT", "ARCHITECTURE", "GEMINI_WIRE")]
    files = [
        *ROOT.glob("*.md"),
        ROOT / "Makefile",
        ROOT / "Dockerfile",
        *(
            path
            for folder in ("server", "tests", "bench", "docs", "scripts", "client_examples")
            for path in (ROOT / folder).rglob("*")
            if path.suffix in (".py", ".md", ".sh", ".proto", ".toml")
        ),
        *(ROOT / "protos").rglob("*.proto"),
    ]
    citing = [
        _name(path)
        for path in files
        if path.is_file() and any(name in path.read_text() for name in outside)
    ]
    assert citing == []


# Gemini's own numbers of the finish reasons whose numbers chatd's enum does not share:
# google/ai/generativelanguage/v1beta/generative_service.proto, Candidate.FinishReason
# (https://github.com/googleapis/googleapis).
GEMINI_FINISH_NUMBERS = {"OTHER": 5, "LANGUAGE": 6, "IMAGE_PROHIBITED_CONTENT": 14}


def test_finish_reasons_are_geminis_names_and_the_comment_says_the_numbers_differ() -> None:
    """chatd.v1.FinishReason 1-15 carry Gemini's names (google-genai's types.FinishReason),
    mapped by name; their numbers are chatd's own, which the enum's comment says."""
    chatd = {
        value.name.removeprefix("FINISH_REASON_"): value.number
        for value in content_pb2.FinishReason.DESCRIPTOR.values
        if 1 <= value.number <= 15
    }
    assert set(chatd) <= set(types.FinishReason.__members__)
    differing = {
        name: number
        for name, number in GEMINI_FINISH_NUMBERS.items()
        if chatd.get(name, number) != number
        or any(n == number and other != name for other, n in chatd.items())
    }
    assert differing  # the numbers do differ: nothing may convert them by number
    proto = (ROOT / "protos" / "chatd" / "v1" / "content.proto").read_text()
    comment = proto[: proto.index("enum FinishReason {")].rsplit("\n\n", 1)[-1]
    assert "mirror" not in comment
    for name, number in GEMINI_FINISH_NUMBERS.items():
        assert f"{name} is {number}" in comment or f"{number} is {name}" in comment, name
