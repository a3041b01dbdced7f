"""Packaging: the declared minimums hold the generated code (protobuf's gencode refuses a
runtime older than it, or of another major version, and the grpc stubs an older grpcio);
the lock files match pyproject.toml; the Dockerfile installs the lock and checks health, and
its documented `docker run` lines give settings `chatd serve` accepts."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from server import config
from server.healthcheck import Probe

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


# The lock files (scripts/lock.py) and what installs them.

LOCK_SCRIPT = ROOT / "scripts" / "lock.py"


def lock_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCK_SCRIPT), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_locks_match_pyproject() -> None:
    checked = lock_check(ROOT)
    assert checked.returncode == 0, checked.stderr


def copy_project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "requirements.lock", "requirements-dev.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_a_dependency_added_without_relocking_says_run_make_lock(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace("dependencies = [\n", 'dependencies = [\n  "left-pad>=1",\n')
    )
    checked = lock_check(root)
    assert checked.returncode == 1
    assert "requirements.lock was made from another pyproject.toml" in checked.stderr
    assert "requirements.lock does not pin left-pad: run make lock" in checked.stderr


def test_a_pin_outside_pyprojects_range_is_found(tmp_path: Path) -> None:
    """What the digest cannot see: a lock edited by hand."""
    root = copy_project(tmp_path)
    dev = root / "requirements-dev.lock"
    text, n = re.subn(r"^protobuf==\S+", "protobuf==5.27.0", dev.read_text(), flags=re.M)
    assert n == 1
    dev.write_text(text)
    checked = lock_check(root)
    assert checked.returncode == 1
    assert "requirements-dev.lock pins protobuf==5.27.0, outside 'protobuf>=" in checked.stderr
    assert "requirements.lock pins protobuf==" in checked.stderr  # the two locks disagree
    assert "run make lock" in checked.stderr


def test_every_venv_install_is_constrained_by_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [
        line
        for line in makefile.splitlines()
        if "pip install" in line and ("-e ." in line or "-e '.[dev]'" in line)
    ]
    assert len(installs) == 2, installs
    assert all("-c $(LOCK)" in line for line in installs), installs
    assert "LOCK := requirements-dev.lock" in makefile
    assert re.search(r"^\$\(VENV\)/\.runtime: .*\$\(LOCK\)", makefile, re.M)
    assert re.search(r"^lint: .*lock-check", makefile, re.M)


# The Dockerfile, checked statically: no Docker engine runs where chatd is developed.


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip()))
            pending = ""
    return instructions


def stages() -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def test_the_locked_dependencies_install_in_a_layer_before_the_source() -> None:
    build, _ = stages()
    copies = [i for i in build if i.keyword == "COPY"]
    assert copies[0].arguments == "requirements.lock ./"
    install = next(i for i in build if i.keyword == "RUN" and "requirements.lock" in i.arguments)
    assert "--require-hashes -r requirements.lock" in install.arguments
    assert build.index(install) < build.index(copies[1]), "the source comes after the lock"
    chatd = next(i for i in build if i.keyword == "RUN" and "install --no-deps ." in i.arguments)
    assert "pip check" in chatd.arguments  # the lock held everything chatd needs


def test_every_copied_file_exists_and_reaches_the_build_context() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()
    }
    for instruction in dockerfile():
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from"):
            continue
        *sources, _ = instruction.arguments.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, source


def test_the_healthcheck_runs_chatd_health_within_its_timeout() -> None:
    (check,) = [i for i in dockerfile() if i.keyword == "HEALTHCHECK"]
    options, _, command = check.arguments.partition(" CMD ")
    assert json.loads(command) == ["chatd", "health"]
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout and int(timeout.group(1)) > Probe().timeout  # chatd health answers first


def test_the_images_database_directory_is_made_for_its_user() -> None:
    """chatd refuses a SQLite file whose directory is missing: the image makes it."""
    _, final = stages()
    env = " ".join(i.arguments for i in final if i.keyword == "ENV")
    url = re.search(r"CHATD_DATABASE_URL=sqlite:///(\S+)", env)
    assert url
    directory = str(Path(url.group(1)).parent)
    made = " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert f"mkdir -p {directory}" in made and f"chown chatd:chatd {directory}" in made
    assert [i.arguments for i in final if i.keyword == "ENTRYPOINT"] == ['["chatd", "serve"]']


def test_make_run_makes_the_default_databases_directory() -> None:
    """chatd refuses a SQLite file whose directory is missing; `make run` serves the
    default sqlite:///var/chatd.db from the repository, so it makes ./var first."""
    dry_run = subprocess.run(
        ["make", "-n", "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    serve = next(i for i, line in enumerate(dry_run) if "-m server serve" in line)
    assert any(line.startswith("mkdir -p var") for line in dry_run[:serve]), dry_run


def documented_docker_runs() -> list[str]:
    """Every whole `docker run ... chatd ...` command line the Dockerfile and the README
    show (`docker run -e` alone, or a line ending in `...`, is a fragment, not a command)."""
    runs = []
    for path in (ROOT / "Dockerfile", ROOT / "README.md"):
        for match in re.finditer(r"docker run [^`\n]*\bchatd\b[^`\n]*", path.read_text()):
            line = match.group(0).strip()
            if not line.endswith("..."):
                runs.append(line)
    return runs


def test_every_documented_docker_run_line_has_settings_chatd_serve_accepts() -> None:
    """A `docker run` line as documented starts a server that stays up: the image's
    environment (its ENV lines) plus the line's `-e` settings, and the flags after the image
    name, are settings `chatd serve` accepts. The image listens on 0.0.0.0, so a line
    without API keys (or CHATD_INSECURE_NO_AUTH) would exit at once (status 2)."""
    _, final = stages()
    image_env = dict(
        item.split("=", 1) for i in final if i.keyword == "ENV" for item in shlex.split(i.arguments)
    )
    runs = documented_docker_runs()
    assert len(runs) >= 2, runs  # the Dockerfile's own and the README's
    for run in runs:
        words = shlex.split(run)[2:]
        env = dict(image_env)
        while words[0].startswith("-"):
            option, value = words[0], words[1]
            words = words[2:]
            if option in ("-e", "--env"):
                name, _, setting = value.partition("=")
                env[name] = setting
        assert words[0] == "chatd", run  # the image, then `chatd serve`'s flags
        config.load(words[1:], env)  # raises SettingsError where chatd would exit 2


def test_the_images_listen_address_needs_keys_or_an_explicit_opt_out() -> None:
    """What the documented lines guard against: the image's own settings alone are refused."""
    _, final = stages()
    image_env = dict(
        item.split("=", 1) for i in final if i.keyword == "ENV" for item in shlex.split(i.arguments)
    )
    with pytest.raises(config.SettingsError, match="without API keys"):
        config.load([], image_env)
    config.load([], {**image_env, "CHATD_INSECURE_NO_AUTH": "true"})
