"""load_tools: built-ins, module attributes, real entry points, and errors that stop startup."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.tools import BUILTIN_TOOLS, ToolLoadError, load_tools
from tests.tools import plugin_tools, sample_tools

BUILTIN_NAMES = {t.name for t in BUILTIN_TOOLS}

WriteModule = Callable[[str], str]
InstallPlugin = Callable[[dict[str, str]], None]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Writes a uniquely named module on sys.path; forgets it from sys.modules afterwards."""
    names: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"chatd_test_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InstallPlugin:
    """Installs a distribution with "chatd.tools" entry points the way pip would: a dist-info
    directory on sys.path, found by the real importlib.metadata."""

    def install(entry_points: dict[str, str]) -> None:
        site = tmp_path / "site"
        dist_info = site / "chatd_test_plugin-1.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: chatd-test-plugin\nVersion: 1.0\n"
        )
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (dist_info / "entry_points.txt").write_text(f"[chatd.tools]\n{lines}")
        monkeypatch.syspath_prepend(str(site))

    return install


def test_builtins_alone() -> None:
    assert load_tools([], entry_points=False).names() == BUILTIN_NAMES
    assert len(load_tools([], entry_points=False, builtins=False)) == 0


def test_a_modules_decorated_functions_are_its_tools() -> None:
    registry = load_tools(["tests.tools.sample_tools"], entry_points=False, builtins=False)
    # calculate is there because the module re-exports it: every Tool attribute counts.
    assert registry.names() == {"echo", "sample.add", "calculate"}
    assert registry.get("echo") is sample_tools.echo


def test_a_tool_reached_twice_as_the_same_object_is_not_a_duplicate() -> None:
    registry = load_tools(
        ["tests.tools.sample_tools", "tests.tools.sample_tools"], entry_points=False
    )
    assert registry.names() == BUILTIN_NAMES | {"echo", "sample.add"}


def test_two_modules_defining_one_name_are_refused_naming_both(write_module: WriteModule) -> None:
    clash = write_module(
        "from server.tools import tool\n\n"
        "@tool\n"
        "def echo(text: str) -> str:\n"
        '    """Another echo."""\n'
        "    return text\n"
    )
    with pytest.raises(ValueError, match="duplicate tool name 'echo'") as caught:
        load_tools(["tests.tools.sample_tools", clash], entry_points=False)
    assert "module 'tests.tools.sample_tools'" in str(caught.value)
    assert f"module '{clash}'" in str(caught.value)


def test_a_module_that_cannot_be_imported_is_a_load_error_naming_it() -> None:
    with pytest.raises(ToolLoadError, match=r"cannot load tool module 'tests\.tools\.no_such'"):
        load_tools(["tests.tools.no_such"], entry_points=False)


def test_a_refused_definition_inside_a_module_is_a_load_error_naming_it(
    write_module: WriteModule,
) -> None:
    bad = write_module(
        'from server.tools import tool\n\n@tool\ndef f(x: object) -> None:\n    """F."""\n'
    )
    with pytest.raises(ToolLoadError, match=rf"'{bad}': ValueError: .*parameter 'x'"):
        load_tools([bad], entry_points=False)


def test_entry_points_may_name_a_module_a_tool_or_a_list_of_tools(
    install_plugin: InstallPlugin,
) -> None:
    install_plugin(
        {
            "samples": "tests.tools.sample_tools",
            "shout": "tests.tools.plugin_tools:shout",
            "more": "tests.tools.plugin_tools:MORE",
        }
    )
    registry = load_tools([])
    assert {"echo", "sample.add", "shout", "whisper"} | BUILTIN_NAMES <= registry.names()
    assert registry.get("whisper") is plugin_tools.whisper


def test_entry_points_are_skipped_when_disabled(install_plugin: InstallPlugin) -> None:
    install_plugin({"shout": "tests.tools.plugin_tools:shout"})
    assert "shout" not in load_tools([], entry_points=False).names()


def test_an_entry_point_clashing_with_a_builtin_is_refused(install_plugin: InstallPlugin) -> None:
    install_plugin({"calc": "tests.tools.plugin_tools:fake_calculate"})
    with pytest.raises(ValueError, match="duplicate tool name 'calculate'") as caught:
        load_tools([])
    assert "the built-in tools" in str(caught.value)
    assert "entry point 'calc' (tests.tools.plugin_tools:fake_calculate)" in str(caught.value)


def test_an_entry_point_that_fails_to_load_is_a_load_error_naming_it(
    install_plugin: InstallPlugin,
) -> None:
    install_plugin({"gone": "tests.tools.plugin_tools:missing"})
    with pytest.raises(ToolLoadError, match=r"cannot load entry point 'gone' \(.*\): Attribute"):
        load_tools([])


def test_an_entry_point_naming_something_else_is_a_load_error(
    install_plugin: InstallPlugin,
) -> None:
    install_plugin({"text": "tests.tools.sample_tools:NOT_A_TOOL"})
    with pytest.raises(ToolLoadError, match="expected a module, a Tool or an iterable of Tools"):
        load_tools([])
