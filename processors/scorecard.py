"""Scorecards: two eval runs of the same dataset compared, and the leaderboard across runs.

:func:`build_scorecard` takes the per-case results of a baseline and a candidate run and says

* per case: ``improved``, ``regressed``, ``unchanged``, or present in only one run, with every
  metric's score delta and whether the answer text changed. A case is *regressed* when any
  metric lost its pass or its score dropped, even if another metric improved: a mixed case is
  one a reviewer must look at, so it is not allowed to hide among the improvements;
* per metric: means over the cases both runs scored, the delta with a *paired* bootstrap
  interval (same cases, so case difficulty cancels out), and the pass rates with a
  two-proportion z-test. The z-test treats the runs as independent samples, which is
  conservative for paired cases (it ignores the positive correlation between runs);
* cost and latency: mean, p50 and p95 for each run and their deltas, plus the per-case deltas
  the report plots.

:class:`Leaderboard` ranks (model, prompt) combinations on one metric from plain result rows
(what an analytics query returns): mean score first, then cheaper first.

Input is plain data (:class:`CaseOutcome`, or rows through :func:`runs_from_rows`); nothing here
reads a topic or a table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sluicegate.processors.eval_stats import (
    ConfidenceInterval,
    ProportionTest,
    bootstrap_mean_difference,
    two_proportion_ztest,
)

__all__ = [
    "CaseDiff",
    "CaseOutcome",
    "CaseStatus",
    "DistributionDelta",
    "Leaderboard",
    "LeaderboardEntry",
    "MetricScore",
    "MetricSummary",
    "Scorecard",
    "build_scorecard",
    "runs_from_rows",
]

CaseStatus = Literal["improved", "regressed", "unchanged", "only_baseline", "only_candidate"]


@dataclass(frozen=True, slots=True)
class MetricScore:
    """One metric's verdict on one case."""

    score: float
    passed: bool


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """What a run did on one case."""

    metrics: Mapping[str, MetricScore]
    output: str | None = None
    cost_usd: float = 0.0
    latency_ms: float | None = None


Run = Mapping[str, CaseOutcome]
"""case_id → outcome."""


@dataclass(frozen=True, slots=True)
class CaseDiff:
    """One case compared across the two runs (deltas are candidate - baseline)."""

    case_id: str
    status: CaseStatus
    score_deltas: Mapping[str, float] = field(default_factory=dict)
    regressed_metrics: tuple[str, ...] = ()
    improved_metrics: tuple[str, ...] = ()
    output_changed: bool | None = None
    """None when the case is in one run only or either output was not recorded."""
    cost_delta: float | None = None
    latency_delta: float | None = None


@dataclass(frozen=True, slots=True)
class MetricSummary:
    """A metric over the cases both runs scored."""

    metric: str
    n: int
    baseline_mean: float
    candidate_mean: float
    delta: ConfidenceInterval
    """Paired bootstrap interval of candidate - baseline mean score."""
    baseline_pass_rate: float
    candidate_pass_rate: float
    pass_test: ProportionTest


@dataclass(frozen=True, slots=True)
class DistributionDelta:
    """Cost or latency of the two runs: mean, p50, p95 each, and the per-case deltas."""

    baseline_mean: float
    candidate_mean: float
    baseline_p50: float
    candidate_p50: float
    baseline_p95: float
    candidate_p95: float
    per_case: Mapping[str, float]

    @property
    def mean_delta(self) -> float:
        return self.candidate_mean - self.baseline_mean

    @property
    def p50_delta(self) -> float:
        return self.candidate_p50 - self.baseline_p50

    @property
    def p95_delta(self) -> float:
        return self.candidate_p95 - self.baseline_p95


@dataclass(frozen=True, slots=True)
class Scorecard:
    """The comparison of a candidate run with its baseline."""

    cases: Sequence[CaseDiff]
    metrics: Mapping[str, MetricSummary]
    cost: DistributionDelta | None
    latency: DistributionDelta | None
    baseline_scores: Mapping[str, Sequence[float]]
    """Every baseline score per metric (the report's histograms), paired or not."""
    candidate_scores: Mapping[str, Sequence[float]]

    def with_status(self, status: CaseStatus) -> list[CaseDiff]:
        return [case for case in self.cases if case.status == status]

    @property
    def regressed(self) -> list[str]:
        return [case.case_id for case in self.with_status("regressed")]

    @property
    def improved(self) -> list[str]:
        return [case.case_id for case in self.with_status("improved")]


def _diff_case(case_id: str, base: CaseOutcome, cand: CaseOutcome, tolerance: float) -> CaseDiff:
    deltas: dict[str, float] = {}
    regressed: list[str] = []
    improved: list[str] = []
    for metric in sorted(base.metrics.keys() & cand.metrics.keys()):
        before, after = base.metrics[metric], cand.metrics[metric]
        delta = after.score - before.score
        deltas[metric] = delta
        if (before.passed and not after.passed) or delta < -tolerance:
            regressed.append(metric)
        elif (after.passed and not before.passed) or delta > tolerance:
            improved.append(metric)
    status: CaseStatus = "regressed" if regressed else "improved" if improved else "unchanged"
    changed = None if base.output is None or cand.output is None else base.output != cand.output
    latency = (
        None
        if base.latency_ms is None or cand.latency_ms is None
        else cand.latency_ms - base.latency_ms
    )
    return CaseDiff(
        case_id=case_id,
        status=status,
        score_deltas=deltas,
        regressed_metrics=tuple(regressed),
        improved_metrics=tuple(improved),
        output_changed=changed,
        cost_delta=cand.cost_usd - base.cost_usd,
        latency_delta=latency,
    )


def _summary(
    metric: str, pairs: list[tuple[MetricScore, MetricScore]], n_resamples: int, seed: int
) -> MetricSummary:
    base = np.array([b.score for b, _ in pairs])
    cand = np.array([c.score for _, c in pairs])
    base_pass = sum(b.passed for b, _ in pairs)
    cand_pass = sum(c.passed for _, c in pairs)
    n = len(pairs)
    return MetricSummary(
        metric=metric,
        n=n,
        baseline_mean=float(base.mean()),
        candidate_mean=float(cand.mean()),
        delta=bootstrap_mean_difference(base, cand, paired=True, n_resamples=n_resamples, rng=seed),
        baseline_pass_rate=base_pass / n,
        candidate_pass_rate=cand_pass / n,
        pass_test=two_proportion_ztest(base_pass, n, cand_pass, n),
    )


def _distribution(
    baseline: Mapping[str, float], candidate: Mapping[str, float]
) -> DistributionDelta | None:
    if not baseline or not candidate:
        return None
    base = np.array(list(baseline.values()))
    cand = np.array(list(candidate.values()))
    b50, b95 = np.percentile(base, [50, 95])
    c50, c95 = np.percentile(cand, [50, 95])
    return DistributionDelta(
        baseline_mean=float(base.mean()),
        candidate_mean=float(cand.mean()),
        baseline_p50=float(b50),
        candidate_p50=float(c50),
        baseline_p95=float(b95),
        candidate_p95=float(c95),
        per_case={k: candidate[k] - baseline[k] for k in baseline.keys() & candidate.keys()},
    )


def build_scorecard(
    baseline: Run,
    candidate: Run,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    tolerance: float = 1e-9,
) -> Scorecard:
    """Compare ``candidate`` with ``baseline`` (case_id → :class:`CaseOutcome`). A score change
    within ``tolerance`` is unchanged; ``seed`` makes the bootstrap intervals reproducible."""
    cases: list[CaseDiff] = []
    pairs: dict[str, list[tuple[MetricScore, MetricScore]]] = defaultdict(list)
    for case_id in sorted(baseline.keys() | candidate.keys()):
        if case_id not in candidate:
            cases.append(CaseDiff(case_id, "only_baseline"))
            continue
        if case_id not in baseline:
            cases.append(CaseDiff(case_id, "only_candidate"))
            continue
        base, cand = baseline[case_id], candidate[case_id]
        cases.append(_diff_case(case_id, base, cand, tolerance))
        for metric in base.metrics.keys() & cand.metrics.keys():
            pairs[metric].append((base.metrics[metric], cand.metrics[metric]))
    return Scorecard(
        cases=cases,
        metrics={m: _summary(m, pairs[m], n_resamples, seed) for m in sorted(pairs)},
        cost=_distribution(
            {k: v.cost_usd for k, v in baseline.items()},
            {k: v.cost_usd for k, v in candidate.items()},
        ),
        latency=_distribution(
            {k: v.latency_ms for k, v in baseline.items() if v.latency_ms is not None},
            {k: v.latency_ms for k, v in candidate.items() if v.latency_ms is not None},
        ),
        baseline_scores=_scores(baseline),
        candidate_scores=_scores(candidate),
    )


def _scores(run: Run) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = defaultdict(list)
    for case_id in sorted(run):
        for metric, result in run[case_id].metrics.items():
            scores[metric].append(result.score)
    return dict(scores)


def runs_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, CaseOutcome]:
    """A run from result rows shaped like ``EvalCaseResult`` (one per case and metric:
    ``case_id``, ``metric``, ``score``, ``passed``, optional ``output``, ``cost_usd``,
    ``latency_ms``); the case-level fields are taken from the case's first row."""
    metrics: dict[str, dict[str, MetricScore]] = defaultdict(dict)
    first: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        case_id = str(row["case_id"])
        metrics[case_id][str(row["metric"])] = MetricScore(float(row["score"]), bool(row["passed"]))
        first.setdefault(case_id, row)
    return {
        case_id: CaseOutcome(
            metrics=metrics[case_id],
            output=row.get("output"),
            cost_usd=float(row.get("cost_usd") or 0.0),
            latency_ms=None if row.get("latency_ms") is None else float(row["latency_ms"]),
        )
        for case_id, row in first.items()
    }


# --- leaderboard ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaderboardEntry:
    """One (model, prompt) combination on one metric."""

    model: str
    prompt_ref: str | None
    metric: str
    mean_score: float
    pass_rate: float
    cost_per_request: float
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    n: int


@dataclass(frozen=True, slots=True)
class Leaderboard:
    """Entries ranked per metric by mean score (high first), then cost per request (low
    first), then name, so equal rows keep a stable order."""

    entries: Sequence[LeaderboardEntry]

    @classmethod
    def from_entries(cls, entries: Iterable[LeaderboardEntry]) -> Leaderboard:
        """Rank entries already aggregated elsewhere (e.g. by an analytics query)."""
        ranked = sorted(
            entries,
            key=lambda e: (
                e.metric,
                -e.mean_score,
                e.cost_per_request,
                e.model,
                e.prompt_ref or "",
            ),
        )
        return cls(entries=tuple(ranked))

    @classmethod
    def from_rows(
        cls, rows: Iterable[Mapping[str, Any]], *, metric: str | None = None
    ) -> Leaderboard:
        """Aggregate per-case result rows (``model``, ``prompt_ref``, ``metric``, ``score``,
        ``passed``, ``cost_usd``, ``latency_ms``) per (model, prompt_ref, metric); only
        ``metric`` when given."""
        groups: dict[tuple[str, str | None, str], list[Mapping[str, Any]]] = defaultdict(list)
        for row in rows:
            if metric is not None and row["metric"] != metric:
                continue
            groups[(str(row["model"]), row.get("prompt_ref"), str(row["metric"]))].append(row)
        entries = []
        for (model, prompt_ref, name), group in groups.items():
            latencies = [float(r["latency_ms"]) for r in group if r.get("latency_ms") is not None]
            p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (None, None)
            entries.append(
                LeaderboardEntry(
                    model=model,
                    prompt_ref=prompt_ref,
                    metric=name,
                    mean_score=float(np.mean([float(r["score"]) for r in group])),
                    pass_rate=sum(bool(r["passed"]) for r in group) / len(group),
                    cost_per_request=float(np.mean([float(r.get("cost_usd") or 0) for r in group])),
                    p50_latency_ms=None if p50 is None else float(p50),
                    p95_latency_ms=None if p95 is None else float(p95),
                    n=len(group),
                )
            )
        return cls.from_entries(entries)

    def for_metric(self, metric: str) -> list[LeaderboardEntry]:
        return [entry for entry in self.entries if entry.metric == metric]
