"""An eval run's report: one Markdown file and its PNG plots in a directory.

What a reviewer needs to accept or refuse a candidate, in the order they need it: per-metric
means with the paired interval and the pass-rate test, cost and latency deltas, the regressed
cases (each metric that fell and whether the answer changed), the improved ones, the cases
only one run has, then the leaderboard if given. Plots: per metric the score histograms of both
runs overlaid, and the per-case cost and latency deltas.

matplotlib is used without pyplot (a ``Figure`` on an Agg canvas): no global figure state, no
display needed, safe from a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sluicegate.processors.scorecard import (
    CaseDiff,
    CaseStatus,
    DistributionDelta,
    Leaderboard,
    MetricSummary,
    Scorecard,
)

__all__ = ["ReportPaths", "write_report"]

_BINS = 20
_STATUSES: tuple[CaseStatus, ...] = (
    "regressed",
    "improved",
    "unchanged",
    "only_baseline",
    "only_candidate",
)


@dataclass(frozen=True, slots=True)
class ReportPaths:
    """Where the report went: the Markdown file and every plot it links."""

    markdown: Path
    plots: tuple[Path, ...]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "metric"


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path


def _score_histogram(
    metric: str,
    baseline: Sequence[float],
    candidate: Sequence[float],
    names: tuple[str, str],
    path: Path,
) -> Path:
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    bins = [i / _BINS for i in range(_BINS + 1)]  # scores live in [0, 1]
    axes.hist(baseline, bins=bins, alpha=0.55, label=f"{names[0]} (n={len(baseline)})")
    axes.hist(candidate, bins=bins, alpha=0.55, label=f"{names[1]} (n={len(candidate)})")
    axes.set_title(f"{metric}: score distribution")
    axes.set_xlabel("score")
    axes.set_ylabel("cases")
    axes.legend()
    return _save(figure, path)


def _delta_plot(title: str, unit: str, deltas: Sequence[float], path: Path) -> Path:
    figure = Figure(figsize=(6, 3.5))
    hist, box = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    hist.hist(deltas, bins=min(_BINS, max(1, len(deltas))), color="tab:purple", alpha=0.75)
    hist.axvline(0, color="black", linewidth=0.8)
    hist.set_title(f"{title} per case (candidate - baseline)")
    hist.set_xlabel(unit)
    hist.set_ylabel("cases")
    box.boxplot(deltas)
    box.axhline(0, color="black", linewidth=0.8)
    box.set_xticks([])
    return _save(figure, path)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}f}"


def _metrics_table(metrics: Sequence[MetricSummary], names: tuple[str, str]) -> list[str]:
    lines = [
        f"| metric | n | {names[0]} mean | {names[1]} mean | delta | 95% CI (paired bootstrap) "
        f"| {names[0]} pass | {names[1]} pass | pass-rate p | Cohen's h |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for summary in metrics:
        ci = summary.delta
        lines.append(
            f"| {summary.metric} | {summary.n} | {summary.baseline_mean:.3f} "
            f"| {summary.candidate_mean:.3f} | {_signed(ci.estimate)} "
            f"| [{ci.low:+.3f}, {ci.high:+.3f}]{' *' if ci.excludes_zero() else ''} "
            f"| {summary.baseline_pass_rate:.1%} | {summary.candidate_pass_rate:.1%} "
            f"| {summary.pass_test.p_value:.3g} | {summary.pass_test.cohens_h:+.2f} |"
        )
    return lines


def _distribution_rows(label: str, dist: DistributionDelta | None, digits: int) -> list[str]:
    if dist is None:
        return [f"| {label} | - | - | - | - | - | - |"]
    return [
        f"| {label} | {_fmt(dist.baseline_mean, digits)} | {_fmt(dist.candidate_mean, digits)} "
        f"| {_signed(dist.mean_delta, digits)} | {_signed(dist.p50_delta, digits)} "
        f"| {_signed(dist.p95_delta, digits)} | {len(dist.per_case)} |"
    ]


def _case_lines(cases: Sequence[CaseDiff], *, regressed: bool) -> list[str]:
    if not cases:
        return ["None."]
    lines = ["| case | metrics | score deltas | output changed |", "|---|---|---|---|"]
    for case in cases:
        metrics = case.regressed_metrics if regressed else case.improved_metrics
        deltas = ", ".join(f"{m} {_signed(d)}" for m, d in case.score_deltas.items())
        changed = {True: "yes", False: "no", None: "-"}[case.output_changed]
        lines.append(f"| `{case.case_id}` | {', '.join(metrics)} | {deltas} | {changed} |")
    return lines


def _leaderboard_lines(board: Leaderboard) -> list[str]:
    lines = [
        "| rank | model | prompt | metric | mean score | pass rate | cost/request (USD) "
        "| p50 ms | p95 ms | n |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    rank, previous = 0, None
    for entry in board.entries:
        rank = rank + 1 if entry.metric == previous else 1
        previous = entry.metric
        lines.append(
            f"| {rank} | {entry.model} | {entry.prompt_ref or '-'} | {entry.metric} "
            f"| {entry.mean_score:.3f} | {entry.pass_rate:.1%} | {entry.cost_per_request:.6f} "
            f"| {_fmt(entry.p50_latency_ms, 0)} | {_fmt(entry.p95_latency_ms, 0)} | {entry.n} |"
        )
    return lines


def write_report(
    directory: str | Path,
    scorecard: Scorecard,
    *,
    title: str = "Eval report",
    names: tuple[str, str] = ("baseline", "candidate"),
    leaderboard: Leaderboard | None = None,
) -> ReportPaths:
    """Write ``report.md`` and its plots into ``directory`` (created if needed) and return
    their paths. ``names`` label the two runs (e.g. their run ids)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    lines = [f"# {title}", "", f"Baseline: `{names[0]}` — candidate: `{names[1]}`.", ""]
    counts = {status: len(scorecard.with_status(status)) for status in _STATUSES}
    lines += [", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items()), ""]

    lines += ["## Scores", ""]
    metrics = list(scorecard.metrics.values())
    lines += _metrics_table(metrics, names) if metrics else ["No metric scored in both runs."]
    lines += ["", "`*`: the interval excludes 0.", ""]
    for metric in sorted(scorecard.baseline_scores.keys() | scorecard.candidate_scores.keys()):
        path = out / f"scores_{_slug(metric)}.png"
        plots.append(
            _score_histogram(
                metric,
                scorecard.baseline_scores.get(metric, []),
                scorecard.candidate_scores.get(metric, []),
                names,
                path,
            )
        )
        lines += [f"![{metric} score distribution]({path.name})", ""]

    lines += ["## Cost and latency", ""]
    lines += [
        f"| | {names[0]} mean | {names[1]} mean | mean delta | p50 delta | p95 delta | cases |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += _distribution_rows("cost (USD)", scorecard.cost, 6)
    lines += _distribution_rows("latency (ms)", scorecard.latency, 1)
    lines.append("")
    for label, unit, dist, stem in (
        ("cost", "USD", scorecard.cost, "cost_delta"),
        ("latency", "ms", scorecard.latency, "latency_delta"),
    ):
        if dist is not None and dist.per_case:
            path = _delta_plot(label, unit, list(dist.per_case.values()), out / f"{stem}.png")
            plots.append(path)
            lines += [f"![{label} delta per case]({path.name})", ""]

    lines += ["## Regressed cases", ""]
    lines += _case_lines(scorecard.with_status("regressed"), regressed=True)
    lines += ["", "## Improved cases", ""]
    lines += _case_lines(scorecard.with_status("improved"), regressed=False)
    lines.append("")
    for only_status, heading in zip(_STATUSES[3:], names, strict=True):
        only = scorecard.with_status(only_status)
        if only:
            ids = ", ".join(f"`{case.case_id}`" for case in only)
            lines += [f"## Only in {heading}", "", ids, ""]

    if leaderboard is not None:
        lines += ["## Leaderboard", ""]
        lines += _leaderboard_lines(leaderboard) if leaderboard.entries else ["No entries."]
        lines.append("")

    markdown = out / "report.md"
    markdown.write_text("\n".join(lines), encoding="utf-8")
    return ReportPaths(markdown=markdown, plots=tuple(plots))
