"""The package's declared minimums hold the generated code: protobuf's gencode refuses a
runtime older than it (or of another major version), and the grpc stubs an older grpcio."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated" / "chatd" / "v1"


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {(r := Requirement(line)).name: r for line in project["dependencies"]}


def test_protobuf_range_admits_exactly_the_runtimes_the_gencode_accepts() -> None:
    versions = set()
    for path in GENERATED.glob("*_pb2.py"):
        found = re.search(
            r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
            r"\s*(\d+),\s*(\d+),\s*(\d+),",
            path.read_text(),
        )
        assert found, path
        versions.add(Version(".".join(found.groups())))
    (gencode,) = versions
    spec = requirements()["protobuf"].specifier
    assert spec.contains(str(gencode)), (spec, gencode)
    below = (
        Version(f"{gencode.major}.{gencode.minor}.{gencode.micro - 1}") if gencode.micro else None
    )
    if below is not None:
        assert not spec.contains(str(below)), "an older runtime is refused by the gencode"
    assert not spec.contains(f"{gencode.major + 1}.0.0"), "another major is refused too"


def test_grpc_minimums_hold_the_generated_stubs() -> None:
    found = re.search(
        r"GRPC_GENERATED_VERSION = '([\d.]+)'",
        (GENERATED / "chat_service_pb2_grpc.py").read_text(),
    )
    assert found
    generated = Version(found.group(1))
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection", "grpcio-status"):
        spec = requirements()[name].specifier
        minimum = min(Version(s.version) for s in spec if s.operator == ">=")
        assert minimum >= generated, (name, minimum, generated)
