"""Scorecards: per-case classification, per-metric aggregates, cost/latency, the leaderboard."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.processors.scorecard import (
    CaseOutcome,
    Leaderboard,
    LeaderboardEntry,
    MetricScore,
    build_scorecard,
    runs_from_rows,
)

pytestmark = pytest.mark.unit


def _outcome(
    scores: dict[str, tuple[float, bool]],
    output: str | None = "out",
    cost: float = 0.001,
    latency: float | None = 100.0,
) -> CaseOutcome:
    return CaseOutcome(
        metrics={m: MetricScore(s, p) for m, (s, p) in scores.items()},
        output=output,
        cost_usd=cost,
        latency_ms=latency,
    )


BASELINE = {
    "same": _outcome({"exact": (1.0, True), "judge": (0.75, True)}),
    "better": _outcome({"exact": (0.0, False), "judge": (0.5, False)}, output="a"),
    "worse": _outcome({"exact": (1.0, True), "judge": (1.0, True)}, output="b"),
    "mixed": _outcome({"exact": (0.0, False), "judge": (1.0, True)}),
    "gone": _outcome({"exact": (1.0, True)}),
}
CANDIDATE = {
    "same": _outcome({"exact": (1.0, True), "judge": (0.75, True)}, cost=0.002, latency=150.0),
    "better": _outcome({"exact": (1.0, True), "judge": (0.75, True)}, output="a2"),
    "worse": _outcome({"exact": (0.0, False), "judge": (1.0, True)}, output="b"),
    "mixed": _outcome({"exact": (1.0, True), "judge": (0.5, False)}),
    "new": _outcome({"exact": (0.0, False)}),
}


def test_cases_are_classified() -> None:
    card = build_scorecard(BASELINE, CANDIDATE)
    status = {case.case_id: case.status for case in card.cases}
    assert status == {
        "same": "unchanged",
        "better": "improved",
        "worse": "regressed",
        "mixed": "regressed",  # a mixed case must be looked at: it is listed as a regression
        "gone": "only_baseline",
        "new": "only_candidate",
    }
    assert card.regressed == ["mixed", "worse"]
    assert card.improved == ["better"]
    mixed = next(case for case in card.cases if case.case_id == "mixed")
    assert mixed.regressed_metrics == ("judge",) and mixed.improved_metrics == ("exact",)
    assert mixed.score_deltas == {"exact": 1.0, "judge": -0.5}


def test_output_changes_and_per_case_cost_latency() -> None:
    card = build_scorecard(BASELINE, CANDIDATE)
    by_id = {case.case_id: case for case in card.cases}
    assert by_id["better"].output_changed is True
    assert by_id["worse"].output_changed is False
    assert by_id["gone"].output_changed is None
    assert by_id["same"].cost_delta == pytest.approx(0.001)
    assert by_id["same"].latency_delta == pytest.approx(50.0)
    missing = build_scorecard(
        {"a": _outcome({"m": (1, True)}, output=None, latency=None)},
        {"a": _outcome({"m": (1, True)})},
    )
    assert missing.cases[0].output_changed is None and missing.cases[0].latency_delta is None
    assert missing.latency is None  # the baseline recorded no latency at all


def test_metric_aggregates_use_the_cases_both_runs_scored() -> None:
    card = build_scorecard(BASELINE, CANDIDATE)
    exact = card.metrics["exact"]
    assert exact.n == 4  # gone and new are left out
    assert exact.baseline_mean == pytest.approx(0.5)
    assert exact.candidate_mean == pytest.approx(0.75)
    assert exact.delta.estimate == pytest.approx(0.25)
    assert exact.delta.low <= 0.25 <= exact.delta.high
    assert (exact.baseline_pass_rate, exact.candidate_pass_rate) == (0.5, 0.75)
    assert exact.pass_test.difference == pytest.approx(0.25)
    assert set(card.metrics) == {"exact", "judge"}
    assert len(card.baseline_scores["exact"]) == 5  # histograms see every case
    assert build_scorecard(BASELINE, CANDIDATE) == card  # seeded: reproducible


def test_cost_and_latency_distributions() -> None:
    rng = np.random.default_rng(0)
    baseline = {
        f"c{i}": _outcome({"m": (1, True)}, cost=0.01, latency=float(rng.normal(100, 10)))
        for i in range(200)
    }
    candidate = {
        f"c{i}": _outcome({"m": (1, True)}, cost=0.005, latency=baseline[f"c{i}"].latency_ms + 20)
        for i in range(200)
    }
    card = build_scorecard(baseline, candidate)
    assert card.cost is not None and card.latency is not None
    assert card.cost.mean_delta == pytest.approx(-0.005)
    assert card.latency.mean_delta == pytest.approx(20.0)
    assert card.latency.p50_delta == pytest.approx(20.0)
    assert card.latency.p95_delta == pytest.approx(20.0)
    assert card.latency.baseline_p95 > card.latency.baseline_p50
    assert len(card.latency.per_case) == 200


def test_a_real_improvement_shows_in_the_interval() -> None:
    rng = np.random.default_rng(1)
    difficulty = rng.uniform(0, 0.7, 100)
    baseline = {f"c{i}": _outcome({"s": (float(d), d > 0.35)}) for i, d in enumerate(difficulty)}
    candidate = {
        f"c{i}": _outcome({"s": (float(d + 0.2), d + 0.2 > 0.35)}) for i, d in enumerate(difficulty)
    }
    summary = build_scorecard(baseline, candidate).metrics["s"]
    assert summary.delta.excludes_zero()
    assert summary.delta.estimate == pytest.approx(0.2)
    assert summary.pass_test.p_value < 0.01


@given(
    st.dictionaries(
        st.sampled_from([f"c{i}" for i in range(8)]),
        st.tuples(st.floats(0, 1), st.booleans()),
        min_size=1,
    )
)
def test_a_run_compared_with_itself_is_unchanged(scores: dict[str, tuple[float, bool]]) -> None:
    run = {case_id: _outcome({"m": value}) for case_id, value in scores.items()}
    card = build_scorecard(run, run, n_resamples=100)
    assert {case.status for case in card.cases} == {"unchanged"}
    assert card.metrics["m"].delta.estimate == 0.0
    assert card.metrics["m"].pass_test.p_value == pytest.approx(1.0)


def test_runs_from_result_rows() -> None:
    rows = [
        {
            "case_id": "a",
            "metric": "exact",
            "score": 1.0,
            "passed": True,
            "output": "x",
            "cost_usd": 0.01,
            "latency_ms": 12.0,
        },
        {
            "case_id": "a",
            "metric": "judge",
            "score": 0.5,
            "passed": False,
            "output": "x",
            "cost_usd": 0.01,
            "latency_ms": 12.0,
        },
        {"case_id": "b", "metric": "exact", "score": 0.0, "passed": False, "latency_ms": None},
    ]
    run = runs_from_rows(rows)
    assert run["a"].metrics == {"exact": MetricScore(1.0, True), "judge": MetricScore(0.5, False)}
    assert (run["a"].output, run["a"].cost_usd, run["a"].latency_ms) == ("x", 0.01, 12.0)
    assert (run["b"].output, run["b"].cost_usd, run["b"].latency_ms) == (None, 0.0, None)


def _rows(model: str, prompt: str | None, scores: list[float], cost: float) -> list[dict]:
    return [
        {
            "model": model,
            "prompt_ref": prompt,
            "metric": "judge",
            "score": s,
            "passed": s >= 0.75,
            "cost_usd": cost,
            "latency_ms": 100.0 + 10 * i,
        }
        for i, s in enumerate(scores)
    ]


def test_leaderboard_sorts_by_score_then_cost() -> None:
    rows = (
        _rows("small", "qa@1", [0.5, 1.0], 0.001)
        + _rows("large", "qa@1", [1.0, 0.5], 0.01)  # same mean, dearer: below small
        + _rows("medium", "qa@2", [1.0, 1.0, 0.75], 0.005)
        + [
            {
                "model": "small",
                "prompt_ref": "qa@1",
                "metric": "exact",
                "score": 1.0,
                "passed": True,
                "cost_usd": 0.001,
                "latency_ms": None,
            }
        ]
    )
    board = Leaderboard.from_rows(rows, metric="judge")
    assert [(e.model, e.prompt_ref) for e in board.entries] == [
        ("medium", "qa@2"),
        ("small", "qa@1"),
        ("large", "qa@1"),
    ]
    top = board.entries[0]
    assert top.mean_score == pytest.approx(11 / 12)
    assert top.pass_rate == 1.0 and top.n == 3
    assert top.cost_per_request == pytest.approx(0.005)
    assert top.p50_latency_ms == pytest.approx(110.0)
    assert top.p95_latency_ms == pytest.approx(119.0)
    everything = Leaderboard.from_rows(rows)
    assert [e.metric for e in everything.entries] == ["exact", "judge", "judge", "judge"]
    assert everything.for_metric("exact")[0].p50_latency_ms is None


def test_leaderboard_from_aggregated_entries() -> None:
    entries = [
        LeaderboardEntry("b", None, "m", 0.9, 0.9, 0.02, 100.0, 200.0, 50),
        LeaderboardEntry("a", None, "m", 0.9, 0.9, 0.01, 100.0, 200.0, 50),
        LeaderboardEntry("c", None, "m", 0.95, 0.9, 0.05, 100.0, 200.0, 50),
    ]
    assert [e.model for e in Leaderboard.from_entries(entries).entries] == ["c", "a", "b"]
