"""Memory of the soak's processes: RSS sampled on an interval, and whether it stays bounded.

A leak shows as RSS that keeps climbing at steady load; warm-up (imports, caches filling,
allocator arenas) shows as a rise that flattens. So the verdict is read from the least-squares
slope of the *second half* of a process's samples (after `warmup_s`), in MiB per hour: at or
below `max_slope_mib_per_hour` it is bounded. The slope over the whole run is reported beside
it. A series shorter than `min_span_s` after warm-up (a chaos run of minutes) gets no verdict: a
slope over a few minutes is noise. A process restarted by the chaos loop starts a new series;
only its last one is judged. RSS comes from /proc (Linux), for a process and all its descendants.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class Sample:
    role: str
    start: int  # which start of the role (the chaos loop restarts processes)
    at_s: float  # seconds since the load began
    rss_mib: float


def _children(pid: int) -> list[int]:
    found = []
    for task in (PROC / str(pid) / "task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_rss_mib(pid: int) -> float:
    """RSS of `pid` and every descendant, in MiB (0 for a process that is gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _rss_kib(current)
        todo += _children(current)
    return total / 1024


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB/hour; None under 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    slope_per_s = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return slope_per_s * 3600


def judge(
    samples: Iterable[Sample],
    *,
    warmup_s: float,
    max_slope_mib_per_hour: float,
    not_judged: Mapping[str, str] | None = None,
    min_span_s: float = 600.0,
) -> dict[str, dict[str, Any]]:
    """Per role: RSS at the start and end of its last series, the slopes, and `bounded`
    (None for the roles of `not_judged`, whose values say why)."""
    not_judged = not_judged or {}
    series: dict[str, list[Sample]] = {}
    for sample in samples:
        last = series.get(sample.role)
        if last and sample.start != last[-1].start:
            series[sample.role] = []  # restarted: judge the new process only
        series.setdefault(sample.role, []).append(sample)
    verdicts = {}
    for role, points in series.items():
        settled = [(s.at_s, s.rss_mib) for s in points if s.at_s - points[0].at_s >= warmup_s]
        late = settled[len(settled) // 2 :]
        overall = slope_per_hour([(s.at_s, s.rss_mib) for s in points])
        span = settled[-1][0] - settled[0][0] if settled else 0.0
        tail = slope_per_hour(late) if span >= min_span_s else None
        verdicts[role] = {
            "samples": len(points),
            "rss_first_mib": round(points[0].rss_mib, 1),
            "rss_last_mib": round(points[-1].rss_mib, 1),
            "rss_max_mib": round(max(s.rss_mib for s in points), 1),
            "slope_mib_per_hour": None if overall is None else round(overall, 1),
            "late_slope_mib_per_hour": None if tail is None else round(tail, 1),
            "bounded": None
            if tail is None or role in not_judged
            else tail <= max_slope_mib_per_hour,
            "note": not_judged.get(
                role, f"under {min_span_s / 60:g} min after warm-up" if tail is None else ""
            ),
        }
    return verdicts


def render(verdicts: dict[str, dict[str, Any]], max_slope_mib_per_hour: float) -> str:
    lines = [
        f"| process | samples | RSS first / last / max MiB | slope MiB/h (all) | slope MiB/h "
        f"(second half) | bounded (≤ {max_slope_mib_per_hour:g} MiB/h) |",
        "|---|---:|---|---:|---:|---|",
    ]
    for role, v in sorted(verdicts.items()):
        bounded = {True: "yes", False: "**no**", None: f"not judged: {v['note']}"}[v["bounded"]]
        lines.append(
            f"| {role} | {v['samples']} | {v['rss_first_mib']} / {v['rss_last_mib']} / "
            f"{v['rss_max_mib']} | {v['slope_mib_per_hour']} | {v['late_slope_mib_per_hour']} "
            f"| {bounded} |"
        )
    return "\n".join(lines)


def alive(pid: int | None) -> bool:
    return pid is not None and os.path.exists(PROC / str(pid))
