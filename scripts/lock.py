"""The lock files: what CI, `make` and the Dockerfile install, pinned from pyproject.toml.

    python scripts/lock.py          regenerate both (`make lock`; needs uv and PyPI)
    python scripts/lock.py --check  fail, saying "run make lock", when they are stale

- requirements-dev.lock: the runtime and `dev` dependencies, each pinned; `make` installs
  the virtual environment with it as pip constraints (CI runs `make test`).
- requirements.lock: the runtime dependencies alone, pinned to the same versions, with
  hashes; the Dockerfile installs it (`pip install --require-hashes`) in a layer of its own.

Both are resolved by uv (`uv pip compile --universal`: one file for every platform, its
markers kept) for the oldest Python pyproject.toml admits. Each starts with a digest of
the inputs (the dependency lists, requires-python and uv's options), so that `--check`
finds a lock older than pyproject.toml offline, without resolving again (a resolution
today would differ from last week's as soon as anything is released). `--check` also
verifies what the digest cannot: every dependency of pyproject.toml is pinned to a version
its specifier admits, and the runtime lock agrees with the development one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = "requirements.lock"
DEV = "requirements-dev.lock"
DIGEST = "# inputs-sha256: "
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
# Linux on x86-64 and ARM, CPython 3.11: where CI and the image run.
ENVIRONMENT = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def python_floor(project: dict[str, object]) -> str:
    """The oldest Python requires-python admits (">=3.11" gives "3.11")."""
    found = re.fullmatch(r">=\s*(\d+\.\d+)", str(project["requires-python"]).strip())
    if not found:
        raise SystemExit("requires-python must read >=X.Y for scripts/lock.py")
    return found.group(1)


def uv_options(project: dict[str, object]) -> list[str]:
    return ["--universal", "--python-version", python_floor(project), "--no-annotate"]


def inputs_digest(root: Path) -> str:
    """sha256 of what the locks are resolved from: pyproject's dependency lists,
    requires-python, and the options uv resolves them with."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    inputs = {
        "dependencies": project["dependencies"],
        "dev": project["optional-dependencies"]["dev"],
        "requires-python": project["requires-python"],
        "uv": uv_options(project),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def pins(text: str) -> dict[str, Version]:
    """Package name (canonical) -> pinned version, of a requirements file."""
    found = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            found[canonicalize_name(match.group(1))] = Version(match.group(2))
    return found


def problems(root: Path) -> list[str]:
    """Why the locks under `root` do not match its pyproject.toml (empty when they do)."""
    found: list[str] = []
    texts = {}
    for name in (RUNTIME, DEV):
        path = root / name
        if not path.exists():
            return [f"{name} is missing"]
        texts[name] = path.read_text()
        first = texts[name].splitlines()[0] if texts[name] else ""
        if first != DIGEST + inputs_digest(root):
            found.append(f"{name} was made from another pyproject.toml (its digest differs)")
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    runtime, dev = pins(texts[RUNTIME]), pins(texts[DEV])
    wanted = {RUNTIME: project["dependencies"], DEV: [*project["dependencies"]]}
    wanted[DEV] += project["optional-dependencies"]["dev"]
    for name, lines in wanted.items():
        pinned = runtime if name == RUNTIME else dev
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(ENVIRONMENT):
                continue
            version = pinned.get(canonicalize_name(requirement.name))
            if version is None:
                found.append(f"{name} does not pin {requirement.name}")
            elif not requirement.specifier.contains(version, prereleases=True):
                found.append(f"{name} pins {requirement.name}=={version}, outside {line!r}")
    for package, version in runtime.items():
        if dev.get(package) != version:
            found.append(f"{RUNTIME} pins {package}=={version}, {DEV} {dev.get(package)}")
    hashed = texts[RUNTIME].count("--hash=sha256:")
    if hashed < len(runtime):
        found.append(f"{RUNTIME} lacks hashes ({hashed} for {len(runtime)} packages)")
    return found


def compile_locks(root: Path) -> None:
    """Resolves both locks with uv (from PyPI) and stamps them with the inputs' digest."""
    uv = Path(sys.executable).parent / "uv"
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    common = [str(uv), "pip", "compile", "pyproject.toml", *uv_options(project)]
    common += ["--quiet", "--custom-compile-command", "make lock"]
    with tempfile.TemporaryDirectory() as tmp:
        dev, runtime = Path(tmp) / DEV, Path(tmp) / RUNTIME
        subprocess.run([*common, "--extra", "dev", "-o", str(dev)], cwd=root, check=True)
        # The runtime lock takes the development lock's versions: one set of versions.
        subprocess.run(
            [*common, "--generate-hashes", "-c", str(dev), "-o", str(runtime)],
            cwd=root,
            check=True,
        )
        stamp = DIGEST + inputs_digest(root) + "\n"
        for made in (dev, runtime):
            text = made.read_text().replace(str(Path(tmp)) + "/", "")
            (root / made.name).write_text(stamp + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="check, do not regenerate")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project directory")
    args = parser.parse_args()
    if not args.check:
        compile_locks(args.root)
    found = problems(args.root)
    if found:
        print("\n".join(f"{line}: run make lock" for line in found), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
