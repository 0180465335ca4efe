"""The eval statistics against known values and seeded simulations of known distributions."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from sluicegate.errors import SluicegateError
from sluicegate.processors.eval_stats import (
    StatsInputError,
    assign_variant,
    bootstrap_mean_difference,
    cohens_h,
    mann_whitney,
    required_sample_size,
    two_proportion_ztest,
    wilson_interval,
)

pytestmark = pytest.mark.unit


# --- two proportions --------------------------------------------------------------------------


def test_ztest_matches_the_hand_computation_and_the_chi_square_test() -> None:
    result = two_proportion_ztest(40, 100, 55, 100)
    pooled = 95 / 200
    z = 0.15 / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert result.z == pytest.approx(z)
    assert result.p_value == pytest.approx(0.033672, abs=1e-6)
    chi2, p, _, _ = stats.chi2_contingency([[40, 60], [55, 45]], correction=False)
    assert result.z**2 == pytest.approx(chi2)
    assert result.p_value == pytest.approx(p)
    assert result.difference == pytest.approx(0.15)


def test_newcombe_interval_matches_newcombe_1998_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II: 56/70 - 48/80, method 10.
    interval = two_proportion_ztest(48, 80, 56, 70).interval
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.0524, 0.3339)


def test_wald_interval_and_cohens_h() -> None:
    result = two_proportion_ztest(50, 100, 60, 100, interval="wald")
    half = 1.959964 * math.sqrt(0.25 / 100 + 0.24 / 100)
    assert result.interval.low == pytest.approx(0.1 - half, abs=1e-6)
    assert result.interval.high == pytest.approx(0.1 + half, abs=1e-6)
    assert result.cohens_h == pytest.approx(0.201358, abs=1e-6)
    assert cohens_h(0.6, 0.5) == pytest.approx(-0.201358, abs=1e-6)


def test_no_variance_means_no_evidence() -> None:
    for successes in (0, 30):
        result = two_proportion_ztest(successes, 30, successes, 30)
        assert (result.z, result.p_value) == (0.0, 1.0)
    assert two_proportion_ztest(0, 30, 30, 30).p_value < 1e-10


def test_wilson_interval_known_value() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)


def test_newcombe_covers_the_true_difference_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    trials = 600
    for a, b in zip(rng.binomial(40, 0.7, trials), rng.binomial(40, 0.8, trials), strict=True):
        interval = two_proportion_ztest(int(a), 40, int(b), 40).interval
        covered += interval.low <= 0.1 <= interval.high
    assert 0.92 <= covered / trials <= 0.98


@pytest.mark.parametrize(
    ("args", "argument"),
    [((5, 0, 1, 1), "a"), ((2, 1, 1, 1), "a"), ((1, 1, -1, 1), "b")],
)
def test_ztest_refuses_impossible_counts(args: tuple[int, int, int, int], argument: str) -> None:
    with pytest.raises(StatsInputError) as caught:
        two_proportion_ztest(*args)
    assert caught.value.argument == argument
    assert isinstance(caught.value, SluicegateError)


# --- Mann-Whitney -----------------------------------------------------------------------------


def test_mann_whitney_detects_a_shift_and_its_direction() -> None:
    rng = np.random.default_rng(1)
    baseline = rng.normal(0.0, 1.0, 60)
    candidate = rng.normal(1.0, 1.0, 60)
    result = mann_whitney(baseline, candidate)
    assert result.p_value < 1e-4
    assert result.rank_biserial > 0.3
    reverse = mann_whitney(candidate, baseline)
    assert reverse.rank_biserial == pytest.approx(-result.rank_biserial)
    assert mann_whitney(baseline, candidate, alternative="greater").p_value < 1e-4


def test_mann_whitney_rank_biserial_extremes_and_ties() -> None:
    assert mann_whitney([1, 2, 3], [4, 5, 6]).rank_biserial == 1.0
    assert mann_whitney([4, 5, 6], [1, 2, 3]).rank_biserial == -1.0
    tied = mann_whitney([3, 3, 3], [3, 3])
    assert (tied.p_value, tied.rank_biserial) == (1.0, 0.0)


def test_mann_whitney_false_positive_rate_is_about_alpha_and_p_is_uniform() -> None:
    rng = np.random.default_rng(2)
    p_values = np.array(
        [mann_whitney(rng.normal(size=30), rng.normal(size=30)).p_value for _ in range(500)]
    )
    assert 0.025 <= np.mean(p_values < 0.05) <= 0.08
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


# --- bootstrap --------------------------------------------------------------------------------


def test_paired_bootstrap_covers_the_true_difference_about_95_percent() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    trials = 300
    for _ in range(trials):
        difficulty = rng.normal(0.0, 2.0, 40)  # case difficulty, shared by both runs
        baseline = difficulty + rng.normal(0.0, 0.5, 40)
        candidate = difficulty + 0.3 + rng.normal(0.0, 0.5, 40)
        ci = bootstrap_mean_difference(baseline, candidate, paired=True, n_resamples=800, rng=rng)
        covered += ci.low <= 0.3 <= ci.high
    assert 0.9 <= covered / trials <= 0.985


def test_unpaired_bootstrap_covers_the_true_difference_about_95_percent() -> None:
    rng = np.random.default_rng(4)
    covered = 0
    trials = 300
    for _ in range(trials):
        baseline = rng.exponential(1.0, 50)  # skewed, like latencies
        candidate = rng.exponential(1.5, 60)
        ci = bootstrap_mean_difference(baseline, candidate, paired=False, n_resamples=800, rng=rng)
        covered += ci.low <= 0.5 <= ci.high
    assert 0.9 <= covered / trials <= 0.985


def test_pairing_narrows_the_interval_when_cases_vary() -> None:
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0, 3, 50)
    baseline, candidate = difficulty, difficulty + 0.2 + rng.normal(0, 0.1, 50)
    paired = bootstrap_mean_difference(baseline, candidate, paired=True, rng=1)
    unpaired = bootstrap_mean_difference(baseline, candidate, paired=False, rng=1)
    assert paired.excludes_zero() and not unpaired.excludes_zero()
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 5


def test_bootstrap_is_reproducible_with_a_seed_and_validates_input() -> None:
    first = bootstrap_mean_difference([1, 2, 3, 4], [2, 2, 5, 4], paired=True, rng=9)
    again = bootstrap_mean_difference([1, 2, 3, 4], [2, 2, 5, 4], paired=True, rng=9)
    assert first == again
    assert first.estimate == pytest.approx(0.75)
    with pytest.raises(StatsInputError, match="differ in length"):
        bootstrap_mean_difference([1, 2], [1], paired=True)
    with pytest.raises(StatsInputError):
        bootstrap_mean_difference([], [1], paired=False)
    with pytest.raises(StatsInputError):
        bootstrap_mean_difference([1.0, math.nan], [1, 2], paired=False)


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20),
)
def test_the_interval_always_brackets_plausible_differences(a: list[float], b: list[float]) -> None:
    ci = bootstrap_mean_difference(a, b, paired=False, n_resamples=200, rng=0)
    span = max(b) - min(a) + 1e-6, min(b) - max(a) - 1e-6
    assert span[1] <= ci.low <= ci.high <= span[0]


# --- A/B assignment ---------------------------------------------------------------------------


def test_assignment_is_stable_across_runs() -> None:
    # Fixed expectations: sha256 does not change between processes, Python's hash() does.
    keys = ["user-1", "user-2", "user-3", "user-4", "user-5", "user-6"]
    variants = {"control": 1, "treatment": 1}
    assigned = [assign_variant(k, variants, "exp-1") for k in keys]
    assert assigned == ["treatment", "treatment", "control", "treatment", "control", "control"]


def test_assignment_follows_the_weights_over_10k_keys() -> None:
    variants = {"a": 0.2, "b": 0.3, "c": 0.5}
    counts = Counter(assign_variant(f"key-{i}", variants, "s") for i in range(10_000))
    for name, weight in variants.items():
        assert abs(counts[name] / 10_000 - weight) < 0.02
    unnormalised = Counter(assign_variant(f"key-{i}", {"x": 3, "y": 1}, "s") for i in range(10_000))
    assert abs(unnormalised["x"] / 10_000 - 0.75) < 0.02


def test_assignment_ignores_mapping_order_and_zero_weights() -> None:
    one, two = {"a": 1.0, "b": 2.0, "off": 0.0}, {"off": 0.0, "b": 2.0, "a": 1.0}
    picks = [assign_variant(str(i), one, "s") for i in range(2000)]
    assert picks == [assign_variant(str(i), two, "s") for i in range(2000)]
    assert "off" not in picks


def test_a_new_salt_reshuffles() -> None:
    variants = {"a": 1, "b": 1}
    first = [assign_variant(str(i), variants, "exp-1") for i in range(1000)]
    second = [assign_variant(str(i), variants, "exp-2") for i in range(1000)]
    agreement = np.mean([x == y for x, y in zip(first, second, strict=True)])
    assert 0.4 < agreement < 0.6


@pytest.mark.parametrize("variants", [{}, {"a": 0.0}, {"a": -1.0, "b": 2.0}, {"a": math.inf}])
def test_assignment_refuses_unusable_weights(variants: dict[str, float]) -> None:
    with pytest.raises(StatsInputError):
        assign_variant("k", variants, "s")


# --- sample size and peeking ------------------------------------------------------------------


def test_required_sample_size_textbook_value() -> None:
    # 50% -> 60%, alpha 0.05 two-sided, power 0.8: 388 per arm (Fleiss, no continuity correction)
    assert required_sample_size(0.5, 0.1) == 388
    assert required_sample_size(0.5, -0.1) == 388
    assert required_sample_size(0.5, 0.1, two_sided=False) < 388
    assert required_sample_size(0.5, 0.05) > 4 * 388 - 100  # half the effect: ~4x the cases


def test_required_sample_size_gives_the_promised_power() -> None:
    n = required_sample_size(0.7, 0.08, alpha=0.05, power=0.8)
    rng = np.random.default_rng(6)
    a = rng.binomial(n, 0.7, 5000)
    b = rng.binomial(n, 0.78, 5000)
    pooled = (a + b) / (2 * n)
    z = (b - a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    power = np.mean(2 * stats.norm.sf(np.abs(z)) < 0.05)
    assert 0.77 <= power <= 0.83


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        ((0.0, 0.1), "baseline_rate"),
        ((0.5, 0.0), "minimum_detectable_effect"),
        ((0.95, 0.1), "minimum_detectable_effect"),
    ],
)
def test_required_sample_size_refuses_impossible_designs(
    args: tuple[float, float], argument: str
) -> None:
    with pytest.raises(StatsInputError) as caught:
        required_sample_size(*args)
    assert caught.value.argument == argument


def test_peeking_inflates_the_false_positive_rate() -> None:
    """The claim in docs/evals.md: an A/A test checked after every batch and stopped at the
    first p < 0.05 declares a winner far more often than 5 %."""
    rng = np.random.default_rng(8)
    trials, looks, batch = 4000, 10, 50
    a = rng.binomial(batch, 0.5, (trials, looks)).cumsum(axis=1)
    b = rng.binomial(batch, 0.5, (trials, looks)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)
    pooled = (a + b) / (2 * n)
    z = (b - a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    significant = 2 * stats.norm.sf(np.abs(z)) < 0.05
    fixed_horizon = significant[:, -1].mean()
    peeking = significant.any(axis=1).mean()
    assert 0.035 <= fixed_horizon <= 0.065
    assert peeking > 0.15
