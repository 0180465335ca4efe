"""A live A/B test of prompt variants, judged: each variant against the first one (the control).

The experiment (`prompts.experiments`) splits live traffic by a stable hash; every answer
records the version it was rendered from (`prompt_ref`). Per arm this compares what live
traffic can tell without labels:

- **latency** and **cost** per answer: Mann-Whitney U (no normality assumed; latencies are
  skewed) with the rank-biserial effect size, and a bootstrap interval of the mean difference;
- **pass rate** where answers were scored (an eval or a judge over live request ids, or any
  boolean outcome the caller supplies): two-proportion z-test with the difference, its
  Newcombe interval and Cohen's h.

Stop rule (docs/evals.md): decide at the sample size fixed in advance (`required_sample_size`),
not at the first p < 0.05 while peeking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sluicegate.processors.eval_stats import (
    ConfidenceInterval,
    MannWhitneyResult,
    ProportionTest,
    bootstrap_mean_difference,
    mann_whitney,
    two_proportion_ztest,
)


@dataclass(frozen=True, slots=True)
class ArmSamples:
    """What live traffic recorded for one variant (`prompt_ref`)."""

    prompt_ref: str
    latency_ms: Sequence[float] = ()
    cost_usd: Sequence[float] = ()
    passed: Sequence[bool] = ()


@dataclass(frozen=True, slots=True)
class Comparison:
    """One metric of one arm against the control."""

    metric: str
    control: str
    variant: str
    n_control: int
    n_variant: int
    control_mean: float
    variant_mean: float
    difference: ConfidenceInterval | None = None  # mean (variant - control), bootstrap
    ranks: MannWhitneyResult | None = None
    proportions: ProportionTest | None = None

    @property
    def p_value(self) -> float:
        if self.proportions is not None:
            return self.proportions.p_value
        return self.ranks.p_value if self.ranks is not None else 1.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def compare_arms(
    arms: Mapping[str, ArmSamples], *, min_samples: int = 2, seed: int = 0
) -> list[Comparison]:
    """Every arm after the first against the first, on every metric both have samples of."""
    refs = list(arms)
    if len(refs) < 2:
        return []
    control = arms[refs[0]]
    comparisons: list[Comparison] = []
    for ref in refs[1:]:
        arm = arms[ref]
        for metric in ("latency_ms", "cost_usd"):
            base, cand = list(getattr(control, metric)), list(getattr(arm, metric))
            if len(base) < min_samples or len(cand) < min_samples:
                continue
            comparisons.append(
                Comparison(
                    metric,
                    control.prompt_ref,
                    arm.prompt_ref,
                    len(base),
                    len(cand),
                    _mean(base),
                    _mean(cand),
                    difference=bootstrap_mean_difference(base, cand, paired=False, rng=seed),
                    ranks=mann_whitney(base, cand),
                )
            )
        if len(control.passed) >= min_samples and len(arm.passed) >= min_samples:
            base_passed, cand_passed = sum(control.passed), sum(arm.passed)
            comparisons.append(
                Comparison(
                    "pass_rate",
                    control.prompt_ref,
                    arm.prompt_ref,
                    len(control.passed),
                    len(arm.passed),
                    base_passed / len(control.passed),
                    cand_passed / len(arm.passed),
                    proportions=two_proportion_ztest(
                        base_passed, len(control.passed), cand_passed, len(arm.passed)
                    ),
                )
            )
    return comparisons
