"""The statistics that decide whether a candidate beats its baseline, and the A/B split.

* :func:`bootstrap_mean_difference` — percentile-bootstrap interval for mean(candidate) -
  mean(baseline), *paired* (the same cases in both runs: resample per-case differences, which
  removes the case-difficulty variance) or *unpaired* (two independent samples, e.g. live
  A/B traffic). Seeded through a ``numpy.random.Generator``, so a scorecard is reproducible.
* :func:`two_proportion_ztest` — pass rates: pooled z-test, two-sided p-value, the difference,
  Cohen's h, and a Newcombe (Wilson-score hybrid; default) or Wald interval. Newcombe keeps its
  coverage near 0 % and 100 % pass rates, where evals live and Wald collapses.
* :func:`mann_whitney` — scores that are not normal (judge scores on 1-5, similarities bunched
  near 1): scipy's Mann-Whitney U with the rank-biserial correlation as effect size.
* :func:`assign_variant` — a deterministic weighted split by SHA-256 of ``salt``+``key``: the
  same user gets the same variant in every process and after every restart (Python's
  ``hash`` is salted per process, so it cannot do this).
* :func:`required_sample_size` — the fixed horizon of a two-proportion test. Decide *n* before
  the experiment and look once: testing after every batch and stopping at the first p < alpha
  ("peeking") gives many chances to cross the line by noise, so the real false-positive rate
  is far above alpha (docs/evals.md has the numbers and the rule).

Direction everywhere: positive = the candidate is higher.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from sluicegate.errors import SluicegateError

__all__ = [
    "ConfidenceInterval",
    "MannWhitneyResult",
    "ProportionTest",
    "StatsInputError",
    "assign_variant",
    "bootstrap_mean_difference",
    "cohens_h",
    "mann_whitney",
    "required_sample_size",
    "two_proportion_ztest",
    "wilson_interval",
]

ArrayLike = Sequence[float] | np.ndarray
Seed = np.random.Generator | int | None


class StatsInputError(SluicegateError, ValueError):
    """Input a test cannot use (empty, non-finite, mismatched, out of range); ``argument``
    names the culprit."""

    def __init__(self, message: str, *, argument: str) -> None:
        super().__init__(message)
        self.argument = argument


@dataclass(frozen=True, slots=True)
class ConfidenceInterval:
    """A point estimate and its interval at ``level`` (0.95 = 95 %)."""

    estimate: float
    low: float
    high: float
    level: float

    def excludes_zero(self) -> bool:
        """Whether the interval says the difference is real at this level."""
        return self.low > 0 or self.high < 0


def _sample(values: ArrayLike, argument: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise StatsInputError(f"{argument} must be a non-empty 1-d sample", argument=argument)
    if not np.all(np.isfinite(array)):
        raise StatsInputError(f"{argument} holds NaN or infinity", argument=argument)
    return array


def _level(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise StatsInputError("confidence must be in (0, 1)", argument="confidence")
    return confidence


# --- bootstrap --------------------------------------------------------------------------------


def bootstrap_mean_difference(
    baseline: ArrayLike,
    candidate: ArrayLike,
    *,
    paired: bool,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    rng: Seed = None,
) -> ConfidenceInterval:
    """Percentile bootstrap interval for mean(candidate) - mean(baseline).

    Paired: ``baseline[i]`` and ``candidate[i]`` are the same case; the per-case differences are
    resampled. Unpaired: each sample is resampled on its own. ``rng`` is a Generator or a seed.
    """
    base = _sample(baseline, "baseline")
    cand = _sample(candidate, "candidate")
    level = _level(confidence)
    if n_resamples < 1:
        raise StatsInputError("n_resamples must be positive", argument="n_resamples")
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if paired:
        if base.size != cand.size:
            raise StatsInputError("paired samples differ in length", argument="candidate")
        diffs = cand - base
        means = diffs[generator.integers(0, diffs.size, (n_resamples, diffs.size))].mean(axis=1)
    else:
        cand_means = cand[generator.integers(0, cand.size, (n_resamples, cand.size))].mean(axis=1)
        base_means = base[generator.integers(0, base.size, (n_resamples, base.size))].mean(axis=1)
        means = cand_means - base_means
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return ConfidenceInterval(float(cand.mean() - base.mean()), float(low), float(high), level)


# --- proportions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """Pass rates of baseline (``rate_a``) and candidate (``rate_b``) compared."""

    rate_a: float
    rate_b: float
    n_a: int
    n_b: int
    difference: float
    """rate_b - rate_a."""
    z: float
    p_value: float
    """Two-sided, pooled-variance z-test."""
    cohens_h: float
    interval: ConfidenceInterval
    """Of the difference: Newcombe's hybrid score interval, or Wald."""


def _count(successes: int, n: int, side: str) -> None:
    if n < 1 or not 0 <= successes <= n:
        raise StatsInputError(f"need 0 <= successes <= n and n >= 1 for {side}", argument=side)


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of one proportion (the building block of Newcombe's)."""
    _count(successes, n, "n")
    z = float(stats.norm.ppf(0.5 + _level(confidence) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def cohens_h(rate_a: float, rate_b: float) -> float:
    """Cohen's h = 2·asin√p_b - 2·asin√p_a: 0.2 small, 0.5 medium, 0.8 large."""
    return 2 * math.asin(math.sqrt(rate_b)) - 2 * math.asin(math.sqrt(rate_a))


def two_proportion_ztest(
    successes_a: int,
    n_a: int,
    successes_b: int,
    n_b: int,
    *,
    confidence: float = 0.95,
    interval: Literal["newcombe", "wald"] = "newcombe",
) -> ProportionTest:
    """Baseline ``a`` against candidate ``b``. When both rates are 0 or both 1 there is no
    variance and no evidence: z = 0, p = 1."""
    _count(successes_a, n_a, "a")
    _count(successes_b, n_b, "b")
    level = _level(confidence)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = 0.0 if se == 0 else (p_b - p_a) / se
    p_value = float(2 * stats.norm.sf(abs(z)))
    diff = p_b - p_a
    if interval == "wald":
        crit = float(stats.norm.ppf(0.5 + level / 2))
        half = crit * math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
        low, high = diff - half, diff + half
    else:
        lo_a, hi_a = wilson_interval(successes_a, n_a, confidence=level)
        lo_b, hi_b = wilson_interval(successes_b, n_b, confidence=level)
        low = diff - math.sqrt((p_b - lo_b) ** 2 + (hi_a - p_a) ** 2)
        high = diff + math.sqrt((hi_b - p_b) ** 2 + (p_a - lo_a) ** 2)
    return ProportionTest(
        rate_a=p_a,
        rate_b=p_b,
        n_a=n_a,
        n_b=n_b,
        difference=diff,
        z=z,
        p_value=min(1.0, p_value),
        cohens_h=cohens_h(p_a, p_b),
        interval=ConfidenceInterval(diff, max(-1.0, low), min(1.0, high), level),
    )


# --- Mann-Whitney -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MannWhitneyResult:
    """``u`` is the candidate's U statistic; ``rank_biserial`` = 2U/(n_a·n_b) - 1, in [-1, 1],
    positive when candidate scores tend to be higher (the share of pairs it wins minus the
    share it loses)."""

    u: float
    p_value: float
    rank_biserial: float
    n_a: int
    n_b: int


def mann_whitney(
    baseline: ArrayLike,
    candidate: ArrayLike,
    *,
    alternative: Literal["two-sided", "less", "greater"] = "two-sided",
) -> MannWhitneyResult:
    """Mann-Whitney U of candidate against baseline (``greater``: candidate higher)."""
    base = _sample(baseline, "baseline")
    cand = _sample(candidate, "candidate")
    n_a, n_b = base.size, cand.size
    if np.ptp(np.concatenate([base, cand])) == 0:  # all tied: no ordering, no evidence
        return MannWhitneyResult(n_a * n_b / 2, 1.0, 0.0, n_a, n_b)
    result = stats.mannwhitneyu(cand, base, alternative=alternative)
    u = float(result.statistic)
    return MannWhitneyResult(u, float(result.pvalue), 2 * u / (n_a * n_b) - 1, n_a, n_b)


# --- A/B assignment and sample size -----------------------------------------------------------


def assign_variant(key: str, variants: Mapping[str, float], salt: str) -> str:
    """The variant for ``key``, with probability proportional to its weight (weights need not
    sum to 1; zero weight = never). Variants are taken in name order so the answer does not
    depend on how the mapping was built; changing ``salt`` reshuffles everyone (a new
    experiment), changing a weight moves only the keys at the boundaries it shifts."""
    if not variants:
        raise StatsInputError("no variants", argument="variants")
    names = sorted(variants)
    weights = [float(variants[name]) for name in names]
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise StatsInputError("weights must be finite and >= 0", argument="variants")
    total = sum(weights)
    if total <= 0:
        raise StatsInputError("weights sum to zero", argument="variants")
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    point = (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53) * total  # [0, total)
    cumulative = 0.0
    for name, weight in zip(names, weights, strict=True):
        cumulative += weight
        if point < cumulative:
            return name
    # float rounding can leave the running sum a hair under the total: the last live variant
    return [name for name, weight in zip(names, weights, strict=True) if weight > 0][-1]


def required_sample_size(
    baseline_rate: float,
    minimum_detectable_effect: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    two_sided: bool = True,
) -> int:
    """Cases per arm for a two-proportion z-test to detect an absolute change of
    ``minimum_detectable_effect`` from ``baseline_rate`` with the given power:

        n = (z_alpha * sqrt(2 pbar (1 - pbar)) + z_beta * sqrt(p1 q1 + p2 q2))^2 / delta^2

    with pbar = (p1 + p2) / 2, q = 1 - p, delta = p2 - p1

    (Fleiss' normal approximation, without continuity correction), rounded up."""
    p1 = baseline_rate
    p2 = baseline_rate + minimum_detectable_effect
    if not 0 < p1 < 1:
        raise StatsInputError("baseline_rate must be in (0, 1)", argument="baseline_rate")
    if minimum_detectable_effect == 0 or not 0 < p2 < 1:
        raise StatsInputError(
            "minimum_detectable_effect must be non-zero and keep the rate in (0, 1)",
            argument="minimum_detectable_effect",
        )
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise StatsInputError("alpha and power must be in (0, 1)", argument="alpha")
    z_alpha = float(stats.norm.ppf(1 - alpha / 2 if two_sided else 1 - alpha))
    z_beta = float(stats.norm.ppf(power))
    p_bar = (p1 + p2) / 2
    root = z_alpha * math.sqrt(2 * p_bar * (1 - p_bar)) + z_beta * math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2)
    )
    return math.ceil(root**2 / minimum_detectable_effect**2)
