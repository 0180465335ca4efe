"""What the benchmarks write down besides numbers: the machine, the versions, and the generated
sections of docs/benchmarks.md (between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`
markers, so the hand-written reading around them survives a re-run)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
RESULTS = REPO_ROOT / "bench" / "results"

DOC_HEADER = """# Benchmarks

Numbers printed by `bench/`, never asserted. The sections between the `bench:` markers are
written by the scripts (`python -m bench.serde --docs`, `python -m bench.bridge_overhead`);
everything else is written by hand.
"""


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.MULTILINE)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else "unknown",
        "ram_gib": round(int(mem_kb.group(1)) / 1024**2, 1) if mem_kb else None,
        "kernel": platform.release(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }


def _run(argv: list[str], cwd: Path = REPO_ROOT) -> str | None:
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_rev() -> str:
    rev = _run(["git", "rev-parse", "--short=12", "HEAD"])
    if rev is None:
        return "no commit yet (working tree)"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return f"{rev}{' + uncommitted changes' if dirty else ''}"


def kafka_version() -> str:
    pom = (REPO_ROOT / "infra" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    return found.group(1) if found else "unknown"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "sluicegate": git_rev(),
        "kafka": kafka_version(),
        "faust-streaming": package_version("faust-streaming"),
        "confluent-kafka": package_version("confluent-kafka"),
        "aiohttp": package_version("aiohttp"),
        "fastavro": package_version("fastavro"),
    }
    go = _run(["go", "env", "GOVERSION"])
    if go:
        found["go (load generator)"] = go
    return {**found, **(extra or {})}


def describe(machine_info: dict[str, Any], versions_info: dict[str, str]) -> str:
    lines = [
        f"- machine: {machine_info['nproc']} cores ({machine_info['cpu_model']}), "
        f"{machine_info['ram_gib']} GiB RAM, Linux {machine_info['kernel']}; "
        f"load average before the run {' '.join(machine_info['loadavg_before'])}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions_info.items()),
    ]
    return "\n".join(lines)


def replace_section(name: str, body: str, path: Path = DOCS) -> None:
    """Put `body` between the markers of section `name`, appending the section if it is new."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else DOC_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; `align` has one of `l`/`r` per column (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)
