"""Checks against docs/promises.md's targets, the stdout table, machine info, the JSON results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.procs import ROOT, event_loop_name


@dataclass(frozen=True)
class Check:
    """One measured number, what it is compared with, and whether the target holds."""

    scenario: str
    metric: str
    chatd: float
    reference: float | None
    compared: float
    kind: str  # "ratio", "diff", "value"
    target: str
    passed: bool | None  # None: reported, not a target

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "info"}[self.passed]


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("inf")


def at_least(scenario: str, metric: str, value: float, reference: float, bound: float) -> Check:
    ratio = _ratio(value, reference)
    return Check(scenario, metric, value, reference, ratio, "ratio", f">= {bound}x", ratio >= bound)


def at_most(scenario: str, metric: str, value: float, reference: float, bound: float) -> Check:
    ratio = _ratio(value, reference)
    return Check(scenario, metric, value, reference, ratio, "ratio", f"<= {bound}x", ratio <= bound)


def within(scenario: str, metric: str, value: float, reference: float, bound: float) -> Check:
    diff = value - reference
    return Check(scenario, metric, value, reference, diff, "diff", f"<= +{bound}", diff <= bound)


def below(scenario: str, metric: str, value: float, limit: float) -> Check:
    return Check(scenario, metric, value, limit, value, "value", f"<= {limit:.4g}", value <= limit)


def equal(scenario: str, metric: str, value: float, reference: float) -> Check:
    passed = value == reference
    return Check(scenario, metric, value, reference, value, "value", f"= {reference:g}", passed)


def info(scenario: str, metric: str, value: float, reference: float | None = None) -> Check:
    compared = _ratio(value, reference) if reference is not None else value
    kind = "ratio" if reference is not None else "value"
    return Check(scenario, metric, value, reference, compared, kind, "", None)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _compared(check: Check) -> str:
    if check.kind == "ratio":
        return f"{check.compared:.2f}x"
    if check.kind == "diff":
        return f"{check.compared:+.2f}"
    return "-"


def table(checks: list[Check]) -> str:
    """A fixed-width table: scenario, metric, chatd, reference, ratio/difference, target."""
    header = ("scenario", "metric", "chatd", "reference", "compared", "target", "result")
    rows = [header] + [
        (
            c.scenario,
            c.metric,
            _num(c.chatd),
            _num(c.reference),
            _compared(c),
            c.target,
            c.verdict,
        )
        for c in checks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown(checks: list[Check]) -> str:
    """The same table in Markdown, for bench/README.md."""
    lines = [
        "| scenario | metric | chatd | reference | compared | target | result |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for c in checks:
        cells = (c.scenario, c.metric, _num(c.chatd), _num(c.reference), _compared(c))
        lines.append("| " + " | ".join((*cells, c.target, c.verdict)) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[:3]
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": load,
        "event_loop": event_loop_name(),
        **_git(),
    }


def _git() -> dict[str, Any]:
    """The commit measured and the files changed on top of it (read-only git commands)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {
        "git_commit": git("rev-parse", "HEAD").strip(),
        "git_changed": [p for p in changed if not p.startswith("bench/")],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: Path, payload: dict[str, Any], checks: list[Check]) -> None:
    """Writes the results atomically (a .tmp file renamed over `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        **payload,
        "checks": [{**asdict(c), "result": c.verdict} for c in checks],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def main() -> None:
    """Prints the checks of a results file (default: the latest) as a Markdown table."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "latest.json"
    data = json.loads(path.read_text())
    fields = set(Check.__dataclass_fields__)
    checks = [Check(**{k: v for k, v in c.items() if k in fields}) for c in data["checks"]]
    print(f"`{data['command']}` ({data['machine']['date']}, {data['total_seconds']:.0f} s)\n")
    print(markdown(checks))


if __name__ == "__main__":
    main()
