from __future__ import annotations

import numpy as np
import pytest

from sluicegate.processors.ab_report import ArmSamples, compare_arms

pytestmark = pytest.mark.unit


def arm(ref: str, latency: np.ndarray, passed: list[bool]) -> ArmSamples:
    return ArmSamples(ref, latency_ms=list(latency), cost_usd=[0.001] * len(latency), passed=passed)


def test_a_slower_variant_is_detected_with_its_effect_size_and_interval() -> None:
    rng = np.random.default_rng(7)
    control = arm("p@1", rng.lognormal(5.0, 0.3, 200), [True] * 180 + [False] * 20)
    slower = arm("p@2", rng.lognormal(5.3, 0.3, 200), [True] * 150 + [False] * 50)
    by_metric = {c.metric: c for c in compare_arms({"p@1": control, "p@2": slower})}
    latency = by_metric["latency_ms"]
    assert latency.ranks is not None and latency.ranks.p_value < 1e-6
    assert latency.ranks.rank_biserial > 0.3  # the variant is slower in most pairs
    assert latency.difference is not None and latency.difference.low > 0
    passed = by_metric["pass_rate"]
    assert passed.proportions is not None and passed.proportions.p_value < 0.001
    assert passed.variant_mean == pytest.approx(0.75) and passed.control_mean == pytest.approx(0.9)
    cost = by_metric["cost_usd"]
    assert cost.ranks is not None and cost.ranks.p_value == 1.0  # identical costs: no evidence


def test_arms_from_one_distribution_rarely_differ() -> None:
    rng = np.random.default_rng(11)
    false_alarms = 0
    for _ in range(200):
        a = arm("p@1", rng.lognormal(5.0, 0.3, 60), [True] * 60)
        b = arm("p@2", rng.lognormal(5.0, 0.3, 60), [True] * 60)
        latency = next(c for c in compare_arms({"p@1": a, "p@2": b}) if c.metric == "latency_ms")
        false_alarms += latency.p_value < 0.05
    assert false_alarms <= 20  # about 5% of 200, with room for sampling noise


def test_too_few_answers_compare_nothing() -> None:
    lonely = {"p@1": arm("p@1", np.array([1.0]), [True])}
    assert compare_arms(lonely) == []
    thin = {"p@1": lonely["p@1"], "p@2": arm("p@2", np.array([2.0]), [False])}
    assert compare_arms(thin) == []
