"""The eval report: Markdown and PNG plots on disk, with what a reviewer needs in them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sluicegate.eval_report import write_report
from sluicegate.processors.scorecard import (
    CaseOutcome,
    Leaderboard,
    MetricScore,
    build_scorecard,
)

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _runs() -> tuple[dict[str, CaseOutcome], dict[str, CaseOutcome]]:
    rng = np.random.default_rng(0)
    baseline: dict[str, CaseOutcome] = {}
    candidate: dict[str, CaseOutcome] = {}
    for i in range(30):
        exact = float(rng.random() < 0.6)
        judge = float(rng.integers(0, 5)) / 4
        baseline[f"case-{i}"] = CaseOutcome(
            metrics={
                "exact": MetricScore(exact, exact == 1.0),
                "llm judge/quality": MetricScore(judge, judge >= 0.75),
            },
            output=f"answer {i}",
            cost_usd=0.002,
            latency_ms=float(rng.normal(300, 30)),
        )
        flipped = 0.0 if i in (3, 7) else exact
        candidate[f"case-{i}"] = CaseOutcome(
            metrics={
                "exact": MetricScore(flipped, flipped == 1.0),
                "llm judge/quality": MetricScore(judge, judge >= 0.75),
            },
            output=f"answer {i}" if i % 2 else f"new answer {i}",
            cost_usd=0.0015,
            latency_ms=float(rng.normal(250, 30)),
        )
    baseline["case-3"] = CaseOutcome(
        metrics={"exact": MetricScore(1.0, True), "llm judge/quality": MetricScore(1.0, True)}
    )
    candidate["only-new"] = CaseOutcome(metrics={"exact": MetricScore(1.0, True)})
    return baseline, candidate


def test_report_files_exist_and_say_what_matters(tmp_path: Path) -> None:
    baseline, candidate = _runs()
    card = build_scorecard(baseline, candidate)
    assert card.regressed  # the fixture has regressions to list
    rows = [
        {
            "model": m,
            "prompt_ref": "qa@1",
            "metric": "exact",
            "score": s,
            "passed": s == 1.0,
            "cost_usd": c,
            "latency_ms": 200.0,
        }
        for m, s, c in [("gpt-small", 1.0, 0.001), ("gpt-small", 0.0, 0.001), ("big", 1.0, 0.01)]
    ]
    paths = write_report(
        tmp_path / "run-42",
        card,
        title="qa: run-42 vs run-41",
        names=("run-41", "run-42"),
        leaderboard=Leaderboard.from_rows(rows),
    )
    assert paths.markdown.exists() and paths.markdown.parent == tmp_path / "run-42"
    names = sorted(path.name for path in paths.plots)
    assert names == [
        "cost_delta.png",
        "latency_delta.png",
        "scores_exact.png",
        "scores_llm_judge_quality.png",
    ]
    for plot in paths.plots:
        data = plot.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 5_000
    text = paths.markdown.read_text()
    for metric in card.metrics:
        assert metric in text
    for case_id in card.regressed:
        assert f"`{case_id}`" in text
    assert "## Regressed cases" in text and "`only-new`" in text
    for plot in paths.plots:
        assert f"]({plot.name})" in text
    assert "## Leaderboard" in text and "gpt-small" in text and "qa@1" in text
    assert "run-41" in text and "run-42" in text


def test_report_without_shared_metrics_or_leaderboard(tmp_path: Path) -> None:
    card = build_scorecard(
        {"a": CaseOutcome(metrics={"x": MetricScore(1.0, True)})},
        {"b": CaseOutcome(metrics={"x": MetricScore(0.0, False)})},
    )
    paths = write_report(tmp_path, card)
    text = paths.markdown.read_text()
    assert "No metric scored in both runs." in text
    assert "## Leaderboard" not in text
    assert [p.name for p in paths.plots] == ["scores_x.png"]
    assert "Regressed cases\n\nNone." in text
