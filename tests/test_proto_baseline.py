"""The committed baseline of the released contract (protos/baseline/chatd.v1.binpb), which
`make lint` runs `buf breaking` against: today's protos keep to it, and an edit that breaks
the wire is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
BUF = Path(sys.executable).parent / "buf"
BASELINE = ROOT / "protos" / "baseline" / "chatd.v1.binpb"


def breaking(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(BASELINE)],
        cwd=workspace,
        capture_output=True,
        text=True,
    )


def copy_of_the_contract(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos" / "chatd", tmp_path / "protos" / "chatd")
    return tmp_path


def test_the_protos_keep_to_the_baseline() -> None:
    result = breaking(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_baseline_holds_every_proto_file_and_its_options() -> None:
    image = descriptor_pb2.FileDescriptorSet.FromString(BASELINE.read_bytes())
    ours = {f.name: f for f in image.file if f.name.startswith("chatd/")}
    protos = {p.relative_to(ROOT / "protos").as_posix() for p in (ROOT / "protos").rglob("*.proto")}
    # Files added since the release are not in it; none it has may be gone.
    assert ours and set(ours) <= protos
    for f in ours.values():
        assert f.options.go_package == "github.com/chatd/chatd/generated/go/chatd/v1;chatdv1"
        assert f.options.java_package == "dev.chatd.v1"
        assert f.options.java_multiple_files


def test_a_renumbered_field_is_caught(tmp_path: Path) -> None:
    workspace = copy_of_the_contract(tmp_path)
    assert breaking(workspace).returncode == 0
    session = workspace / "protos" / "chatd" / "v1" / "session.proto"
    text = session.read_text()
    declared = "message Tool {\n  string name = 1;\n  string description = 2;"
    assert declared in text
    session.write_text(
        text.replace(declared, declared.replace("description = 2", "description = 5"))
    )
    result = breaking(workspace)
    assert result.returncode != 0
    assert 'field "2" with name "description" on message "Tool"' in result.stdout, result.stdout
