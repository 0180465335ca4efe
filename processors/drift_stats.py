"""The statistics drift detection is made of: PSI, two-sample Kolmogorov-Smirnov, cosine distance
of centroids, and an exponentially weighted mean and variance for per-sample z-scores.

Pure numpy (no scipy: the distributions needed are a short series each). Every function takes
plain arrays and returns plain floats, so the window logic in `drift.py` stays apart from the
numbers and each number can be checked against known values on its own.

Inputs are validated: an empty sample, a non-finite value, mismatched or zero vectors raise
`DriftInputError` (a `ValueError` under `SluicegateError`, with the offending `argument`
named). The monitor never lets such input reach these functions (it drops non-finite samples
and skips windows below `min_samples`), so the error means a caller bug, not bad traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

from sluicegate.errors import SluicegateError

ArrayLike = Sequence[float] | np.ndarray

PSI_EPSILON = 1e-4
"""Floor of a bin's share in PSI, so an empty bin gives a large but finite term (ln(share/1e-4)
instead of ln(share/0)); the conventional value in credit-risk PSI tooling."""


class DriftInputError(SluicegateError, ValueError):
    """Input drift detection cannot use (empty, non-finite, mismatched, zero vector, a sample
    with neither or both of a value and a vector); `argument` names the culprit."""

    def __init__(self, message: str, *, argument: str) -> None:
        super().__init__(message)
        self.argument = argument


def _finite_1d(values: ArrayLike, argument: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise DriftInputError(f"{argument} must be one-dimensional", argument=argument)
    if array.size == 0:
        raise DriftInputError(f"{argument} is empty", argument=argument)
    if not np.all(np.isfinite(array)):
        raise DriftInputError(f"{argument} holds NaN or infinity", argument=argument)
    return array


# --- PSI ----------------------------------------------------------------------------------------


def quantile_edges(reference: ArrayLike, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles 1/bins … (bins-1)/bins, deduplicated.

    The outer bins are open-ended (below the first edge, at or above the last), so a current
    window reaching outside the reference's range still lands in a bin instead of being lost.
    Quantile bins give every bin about the same reference share, which keeps PSI's terms
    comparable; on discrete data (token counts, 0/1 scores) equal quantiles collapse into one
    edge, so fewer bins come out: `len(edges) + 1` of them, at least one.
    """
    if bins < 2:
        raise DriftInputError("bins must be at least 2", argument="bins")
    sample = _finite_1d(reference, "reference")
    quantiles = np.arange(1, bins) / bins
    return np.unique(np.quantile(sample, quantiles))


def bin_counts(samples: ArrayLike, edges: np.ndarray) -> np.ndarray:
    """How many samples fall in each of the `len(edges) + 1` bins; bin i is [edge i-1, edge i)."""
    array = _finite_1d(samples, "samples")
    return np.bincount(np.searchsorted(edges, array, side="right"), minlength=len(edges) + 1)


def psi(
    reference_counts: ArrayLike,
    current_counts: ArrayLike,
    epsilon: float = PSI_EPSILON,
    *,
    pseudo_count: float = 0.0,
) -> float:
    """Population stability index Σ (q - p)·ln(q / p) over shared bins.

    `p` and `q` are the bins' shares of the reference and the current counts, after adding
    `pseudo_count` to every bin, each floored at `epsilon`. Symmetric in its arguments, 0 for
    identical shares; by convention < 0.1 is stable, 0.1-0.2 a moderate shift, ≥ 0.2
    significant. PSI grows with sampling noise on small samples (see `psi_noise_floor`), which
    the conventional levels ignore.

    A pseudo-count of 0.5 (Jeffreys' prior) tames the empty bins of small windows: with the bare
    floor, one empty bin of a 10% reference share adds 0.1·ln(0.1/1e-4) ≈ 0.69 on its own, and
    at 50 samples a side 5.5% of windows of unchanged traffic passed the 0.999 noise floor;
    with 0.5, none of 4000 did (`tests/processors/test_drift_stats.py`).
    """
    ref = _finite_1d(reference_counts, "reference_counts")
    cur = _finite_1d(current_counts, "current_counts")
    if ref.shape != cur.shape:
        raise DriftInputError("counts must have the same bins", argument="current_counts")
    if np.any(ref < 0) or np.any(cur < 0):
        raise DriftInputError("counts must not be negative", argument="current_counts")
    if ref.sum() == 0 or cur.sum() == 0:
        argument = "reference_counts" if ref.sum() == 0 else "current_counts"
        raise DriftInputError(f"{argument} are all zero", argument=argument)
    if pseudo_count < 0:
        raise DriftInputError("pseudo_count must not be negative", argument="pseudo_count")
    ref = ref + pseudo_count
    cur = cur + pseudo_count
    p = np.maximum(ref / ref.sum(), epsilon)
    q = np.maximum(cur / cur.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def chi2_quantile(probability: float, dof: int) -> float:
    """The chi-square quantile: exact for 1 and 2 degrees of freedom, Wilson-Hilferty above.

    Wilson-Hilferty's cube-root normal approximation overstates the exact 0.999 quantile by
    under 2% from 3 degrees of freedom on (0.7% at 9): plenty for a noise floor, and on the
    conservative side.
    """
    if not 0 < probability < 1:
        raise DriftInputError("probability must be in (0, 1)", argument="probability")
    if dof < 1:
        raise DriftInputError("dof must be at least 1", argument="dof")
    if dof == 1:
        return NormalDist().inv_cdf((1 + probability) / 2) ** 2
    if dof == 2:
        return -2.0 * math.log1p(-probability)
    z = NormalDist().inv_cdf(probability)
    h = 2.0 / (9.0 * dof)
    return dof * (1.0 - h + z * math.sqrt(h)) ** 3


def psi_noise_floor(bins: int, n: int, m: int, alpha: float) -> float:
    """The PSI that sampling noise alone exceeds with probability `alpha`.

    With no shift, PSI of an n-sample reference and an m-sample window over `bins` bins is
    approximately (1/n + 1/m)·χ²(bins - 1) (Yurdakul 2018). At 50 samples a side and 10 bins
    its 0.999 quantile is ≈ 1.1, far above the conventional 0.2: a bare 0.2 threshold would
    fire on most small windows. At 1000 a side it is ≈ 0.06, below 0.2, and the convention rules.
    """
    if n < 1 or m < 1:
        raise DriftInputError("sample sizes must be positive", argument="n" if n < 1 else "m")
    if bins < 2:
        return 0.0  # one bin: PSI is identically 0
    return (1.0 / n + 1.0 / m) * chi2_quantile(1.0 - alpha, bins - 1)


# --- Kolmogorov-Smirnov -------------------------------------------------------------------------


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution K (the limit of √n·D).

    Two series of the same function, each used where it converges in a few terms:
    Q(λ) = 2 Σ_{j≥1} (-1)^(j-1) e^(-2 j² λ²) for λ ≥ 1, and for λ < 1 the theta-function form
    1 - √(2π)/λ Σ_{j≥1} e^(-(2j-1)² π² / (8 λ²)), since the alternating series converges
    slowly (and cancels badly) for small λ.
    """
    if lam <= 0.0:
        return 1.0
    if lam < 1.0:
        scale = math.pi**2 / (8.0 * lam * lam)
        total = sum(math.exp(-((2 * j - 1) ** 2) * scale) for j in range(1, 8))
        return max(0.0, min(1.0, 1.0 - math.sqrt(2.0 * math.pi) / lam * total))
    total = 0.0
    for j in range(1, 101):
        term = math.exp(-2.0 * j * j * lam * lam)
        total += term if j % 2 else -term
        if term < 1e-16 * total:
            break
    return max(0.0, min(1.0, 2.0 * total))


@lru_cache(maxsize=64)
def kolmogorov_isf(alpha: float) -> float:
    """The λ with P(K > λ) = alpha (1.358 for 0.05, 1.949 for 0.001), by bisection."""
    if not 0 < alpha < 1:
        raise DriftInputError("alpha must be in (0, 1)", argument="alpha")
    low, high = 0.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        if kolmogorov_sf(mid) > alpha:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _ks_scale(n: int, m: int) -> float:
    """λ = scale·D: Stephens' small-sample correction (√nₑ + 0.12 + 0.11/√nₑ) of the asymptotic
    √nₑ, nₑ = n·m/(n + m), which keeps the asymptotic p-value accurate down to nₑ ≈ 4."""
    root = math.sqrt(n * m / (n + m))
    return root + 0.12 + 0.11 / root


def ks_two_sample(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Two-sample KS: D = sup |F_a - F_b| and its asymptotic p-value.

    On data with ties (token counts, 0/1 scores) the p-value is conservative: it overstates
    the probability of D, so ties cost power, never false alarms.
    """
    x = np.sort(_finite_1d(a, "a"))
    y = np.sort(_finite_1d(b, "b"))
    points = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, points, side="right") / x.size
    cdf_y = np.searchsorted(y, points, side="right") / y.size
    d = float(np.max(np.abs(cdf_x - cdf_y)))
    return d, kolmogorov_sf(_ks_scale(x.size, y.size) * d)


def ks_critical(n: int, m: int, alpha: float) -> float:
    """The D at which `ks_two_sample` of an n- and an m-sample gives p-value `alpha`."""
    return kolmogorov_isf(alpha) / _ks_scale(n, m)


# --- vectors ------------------------------------------------------------------------------------


def cosine_distance(u: ArrayLike, v: ArrayLike) -> float:
    """1 - cos(u, v), in [0, 2]; scale-free, so centroids may be passed as plain sums."""
    a = _finite_1d(u, "u")
    b = _finite_1d(v, "v")
    if a.shape != b.shape:
        raise DriftInputError("vectors must have the same dimension", argument="v")
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        culprit = "u" if not a.any() else "v"
        raise DriftInputError("a zero vector has no direction", argument=culprit)
    return float(min(2.0, max(0.0, 1.0 - float(a @ b) / norms)))


@dataclass(frozen=True, slots=True, eq=False)
class VectorMoments:
    """All a window keeps of its vectors: O(dimension), whatever the traffic.

    `total` = Σx, `sq` = Σ|x|², and over consecutive pairs `pair_sq` = Σ (xₜ·xₜ₋₁)² with
    `pairs` of them; the last two estimate tr(M²), M = E[x xᵀ], which sets the noise of the
    centroid distance (see `centroid_shift`).
    """

    count: int
    total: np.ndarray
    sq: float
    pair_sq: float
    pairs: int


@dataclass(frozen=True, slots=True)
class CentroidShift:
    """The debiased cosine distance of two population centroids and its standard error."""

    distance: float
    std_error: float


def centroid_shift(reference: VectorMoments, current: VectorMoments) -> CentroidShift | None:
    """How far apart the mean directions of two vector populations are, corrected for noise.

    The plain cosine distance of two sample centroids is dominated by sampling noise: on
    all-MiniLM-L6-v2 embeddings of a varied prompt mix (|μ|² ≈ 0.08) two windows of the *same*
    traffic are ≈ 0.18 apart at 50 prompts each and ≈ 0.011 at 1000, so no fixed threshold
    fits both. Here the squared norms are estimated without each sample's product with itself
    (as in an unbiased MMD): |μ|² ≈ (|Σx|² - Σ|x|²)/(n(n-1)), and μ_r·μ_c ≈ Σx_r·Σx_c/(nm).
    Their cosine is centred on 0 distance when nothing moved, at any window size, and converges
    to the populations' own distance when something did.

    Its standard error with no shift, to first order, is
    √(tr(Σ²)·(1/(nm) + (1/n² + 1/m²)/2)) / |μ|², with tr(Σ²) ≤ tr(M²) - |μ|⁴ estimated from
    consecutive pairs of both windows (independent draws in a stationary stream). None when
    the distance is undefined: fewer than 2 vectors a side, or no common direction (|μ|² ≤ 0).
    """
    n, m = reference.count, current.count
    if n < 2 or m < 2:
        return None
    if reference.total.shape != current.total.shape:
        raise DriftInputError("vectors must have the same dimension", argument="current")
    ref_sq = (float(reference.total @ reference.total) - reference.sq) / (n * (n - 1))
    cur_sq = (float(current.total @ current.total) - current.sq) / (m * (m - 1))
    both = reference.total + current.total
    pooled_sq = (float(both @ both) - reference.sq - current.sq) / ((n + m) * (n + m - 1))
    if ref_sq <= 0.0 or cur_sq <= 0.0 or pooled_sq <= 0.0:
        return None
    cross = float(reference.total @ current.total) / (n * m)
    distance = 1.0 - cross / math.sqrt(ref_sq * cur_sq)
    pairs = reference.pairs + current.pairs
    if pairs:
        tr_m2 = (reference.pair_sq + current.pair_sq) / pairs
        tr_s2 = max(tr_m2 - pooled_sq * pooled_sq, 0.0)
    else:  # one vector a window apart from the first: bound tr(Σ²) by tr(Σ)²
        tr_s2 = max((reference.sq + current.sq) / (n + m) - pooled_sq, 0.0) ** 2
    noise = tr_s2 * (1.0 / (n * m) + 0.5 * (1.0 / (n * n) + 1.0 / (m * m)))
    return CentroidShift(distance=distance, std_error=math.sqrt(noise) / pooled_sq)


# --- EWMA ---------------------------------------------------------------------------------------


class Ewma:
    """Exponentially weighted mean and variance, and the z-score of each new value against them.

    * The first samples are averaged equally (weight max(alpha, 1/n)), so at the end of the
      warm-up the state is the exact mean and variance of what was seen, not an average still
      dominated by the first value (a plain EWMA started at x₀ with variance 0 holds only
      1 - (1 - alpha)ⁿ of the variance after n values, and throws false alarms right after
      the warm-up).
    * `update` scores a value *before* folding it in: a value is judged against the past.
    * With `clip_z`, a value is folded in winsorized to mean ± clip_z·std, so one huge outlier
      cannot inflate the variance and hide the next anomaly; a lasting level shift is still
      absorbed, the spread growing geometrically while the values stay beyond the clip.
    * `min_std` floors the spread a z-score is measured against: after a constant stretch the
      variance is 0 and any change would otherwise be infinitely anomalous.
    """

    __slots__ = ("alpha", "clip_z", "count", "mean", "min_std", "var", "warmup")

    def __init__(
        self,
        *,
        alpha: float,
        warmup: int,
        clip_z: float | None = None,
        min_std: float = 0.0,
        mean: float = 0.0,
        var: float = 0.0,
        count: int = 0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise DriftInputError("alpha must be in (0, 1]", argument="alpha")
        if warmup < 1:
            raise DriftInputError("warmup must be at least 1", argument="warmup")
        self.alpha = alpha
        self.warmup = warmup
        self.clip_z = clip_z
        self.min_std = min_std
        self.mean = mean
        self.var = var
        self.count = count

    @property
    def std(self) -> float:
        return max(math.sqrt(self.var), self.min_std)

    def score(self, x: float) -> float | None:
        """z of `x` against the state; None during the warm-up (fewer than `warmup` values)."""
        if self.count < self.warmup:
            return None
        diff = x - self.mean
        std = self.std
        if std == 0.0:
            return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        return diff / std

    def update(self, x: float) -> float | None:
        """Score `x` (as `score`), then fold it into the mean and variance."""
        if not math.isfinite(x):
            raise DriftInputError("x must be finite", argument="x")
        z = self.score(x)
        diff = x - self.mean
        if self.clip_z is not None and z is not None:
            bound = self.clip_z * self.std
            diff = max(-bound, min(bound, diff))
        self.count += 1
        weight = max(self.alpha, 1.0 / self.count)
        increment = weight * diff
        self.mean += increment
        self.var = (1.0 - weight) * (self.var + diff * increment)
        return z

    def to_dict(self) -> dict[str, float | int]:
        """The state (not the parameters, which come from settings): JSON-able, exact."""
        return {"mean": self.mean, "var": self.var, "count": self.count}

    @classmethod
    def from_dict(
        cls,
        state: dict[str, Any],
        *,
        alpha: float,
        warmup: int,
        clip_z: float | None = None,
        min_std: float = 0.0,
    ) -> Ewma:
        return cls(
            alpha=alpha,
            warmup=warmup,
            clip_z=clip_z,
            min_std=min_std,
            mean=float(state["mean"]),
            var=float(state["var"]),
            count=int(state["count"]),
        )
