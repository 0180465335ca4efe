"""The soak's memory check (bench/soak/memory.py): slopes, restarts, and the verdict."""

from __future__ import annotations

import os

import pytest

from bench.soak.memory import Sample, judge, render, slope_per_hour, tree_rss_mib

pytestmark = pytest.mark.unit


def series(role: str, values: list[float], *, every_s: float = 10.0, start: int = 1):
    return [Sample(role, start, i * every_s, v) for i, v in enumerate(values)]


def test_the_slope_is_in_mib_per_hour() -> None:
    points = [(t, 100 + t / 36) for t in range(0, 361, 10)]  # +1 MiB every 36 s
    assert slope_per_hour(points) == pytest.approx(100.0)
    assert slope_per_hour([(0, 1.0), (10, 2.0)]) is None


def test_warm_up_that_flattens_is_bounded_and_a_steady_climb_is_not() -> None:
    warm = [200 + min(i, 30) * 2 for i in range(180)]  # +60 MiB in 5 min, then flat
    leak = [200 + i * 0.2 for i in range(180)]  # +0.2 MiB per 10 s: 72 MiB/h
    verdicts = judge(
        series("worker", warm) + series("bridge-a", leak),
        warmup_s=120,
        max_slope_mib_per_hour=20,
    )
    assert verdicts["worker"]["bounded"] is True
    assert verdicts["worker"]["late_slope_mib_per_hour"] == pytest.approx(0.0, abs=0.1)
    assert verdicts["bridge-a"]["bounded"] is False
    assert verdicts["bridge-a"]["late_slope_mib_per_hour"] == pytest.approx(72.0, abs=0.5)
    assert "**no**" in render(verdicts, 20)


def test_a_restarted_process_is_judged_on_its_new_series_only() -> None:
    before = series("inference", [100 + i for i in range(50)])  # climbing, then killed
    after = [Sample("inference", 2, 600 + i * 10, 150.0) for i in range(60)]
    verdict = judge(before + after, warmup_s=0, max_slope_mib_per_hour=20, min_span_s=60)
    verdict = verdict["inference"]
    assert verdict["samples"] == 60 and verdict["bounded"] is True


def test_a_process_not_judged_says_why() -> None:
    climbing = series("broker", [300 + i for i in range(60)])
    verdict = judge(climbing, warmup_s=0, max_slope_mib_per_hour=20, not_judged={"broker": "JVM"})
    assert verdict["broker"]["bounded"] is None and verdict["broker"]["note"] == "JVM"
    assert "not judged: JVM" in render(verdict, 20)


def test_too_few_samples_are_no_verdict() -> None:
    assert (
        judge(series("bridge-b", [1, 2]), warmup_s=0, max_slope_mib_per_hour=20)["bridge-b"][
            "bounded"
        ]
        is None
    )


def test_rss_of_this_process_is_read_from_proc() -> None:
    assert tree_rss_mib(os.getpid()) > 10
    assert tree_rss_mib(2**22 + 7) == 0  # no such process
