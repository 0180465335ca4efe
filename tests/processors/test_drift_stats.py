"""The drift statistics on their own: known values, edge cases, and their behaviour on samples
with and without a shift."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sluicegate.errors import SluicegateError
from sluicegate.processors.drift_stats import (
    DriftInputError,
    Ewma,
    VectorMoments,
    bin_counts,
    centroid_shift,
    chi2_quantile,
    cosine_distance,
    kolmogorov_isf,
    kolmogorov_sf,
    ks_critical,
    ks_two_sample,
    psi,
    psi_noise_floor,
    quantile_edges,
)

pytestmark = pytest.mark.unit


# --- bins and PSI -------------------------------------------------------------------------------


def test_quantile_edges_split_the_reference_evenly() -> None:
    edges = quantile_edges(np.arange(100.0), 4)
    assert edges.tolist() == [24.75, 49.5, 74.25]
    counts = bin_counts(np.arange(100.0), edges)
    assert counts.tolist() == [25, 25, 25, 25]


def test_quantile_edges_collapse_on_discrete_data() -> None:
    edges = quantile_edges([1.0] * 50 + [2.0] * 50, 10)
    assert edges.tolist() == [1.0, 1.5, 2.0]  # nine quantiles, three distinct values
    assert bin_counts([1.0] * 50 + [2.0] * 50, edges).tolist() == [0, 50, 0, 50]


def test_outer_bins_are_open_ended() -> None:
    counts = bin_counts([-1e9, 0.5, 1.0, 1.5, 2.0, 1e9], np.array([1.0, 2.0]))
    assert counts.tolist() == [2, 2, 2]


def test_psi_of_identical_shares_is_zero_and_psi_is_symmetric() -> None:
    assert psi([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0, abs=1e-12)
    assert psi([50, 50], [90, 10]) == pytest.approx(psi([90, 10], [50, 50]))


def test_psi_known_value() -> None:
    # p = (0.5, 0.5), q = (0.9, 0.1): 0.4 ln 1.8 + 0.4 ln 5
    assert psi([50, 50], [90, 10]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5.0))


def test_psi_floors_an_empty_bin_at_epsilon() -> None:
    expected = 0.5 * math.log(1.0 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi([50, 50], [100, 0]) == pytest.approx(expected)
    assert math.isfinite(psi([50, 50], [100, 0], epsilon=1e-9))


def test_psi_pseudo_count_is_added_to_every_bin() -> None:
    p = np.array([10.5, 0.5]) / 11
    q = np.array([5.5, 5.5]) / 11
    assert psi([10, 0], [5, 5], pseudo_count=0.5) == pytest.approx(
        float(np.sum((q - p) * np.log(q / p)))
    )


@pytest.mark.parametrize(
    ("reference", "current", "argument"),
    [
        ([], [1, 2], "reference_counts"),
        ([1, 2], [1, 2, 3], "current_counts"),
        ([0, 0], [1, 2], "reference_counts"),
        ([1, 2], [0, 0], "current_counts"),
        ([1, -1], [1, 2], "current_counts"),
        ([1, math.nan], [1, 2], "reference_counts"),
    ],
)
def test_psi_rejects_what_it_cannot_compare(
    reference: list[float], current: list[float], argument: str
) -> None:
    with pytest.raises(DriftInputError) as caught:
        psi(reference, current)
    assert caught.value.argument == argument
    assert isinstance(caught.value, SluicegateError) and isinstance(caught.value, ValueError)


def test_edges_need_two_bins_and_a_sample() -> None:
    with pytest.raises(DriftInputError, match="bins"):
        quantile_edges([1.0, 2.0], 1)
    with pytest.raises(DriftInputError, match="empty"):
        quantile_edges([], 10)


@pytest.mark.parametrize(
    ("probability", "dof", "exact", "tolerance"),
    [
        (0.95, 1, 3.841459, 1e-6),
        (0.999, 1, 10.827566, 1e-6),
        (0.95, 2, 5.991465, 1e-6),
        (0.999, 2, 13.815511, 1e-6),
        (0.95, 9, 16.918978, 0.005),
        (0.999, 9, 27.877165, 0.01),
        (0.99, 4, 13.276704, 0.01),
        (0.999, 3, 16.266236, 0.02),
    ],
)
def test_chi2_quantile_against_tables(
    probability: float, dof: int, exact: float, tolerance: float
) -> None:
    assert chi2_quantile(probability, dof) == pytest.approx(exact, rel=tolerance)


def test_psi_noise_floor_scales_with_both_sample_sizes() -> None:
    floor = psi_noise_floor(10, 50, 50, 0.001)
    assert floor == pytest.approx(0.04 * chi2_quantile(0.999, 9))
    assert 1.0 < floor < 1.2  # far above the conventional 0.2 at 50 samples a side
    assert psi_noise_floor(10, 1000, 1000, 0.001) < 0.2
    assert psi_noise_floor(1, 10, 10, 0.001) == 0.0


def test_psi_false_alarms_at_small_windows_need_the_pseudo_count() -> None:
    """Unchanged lognormal traffic at 50 samples a side, 10 bins: how often PSI passes the 0.999
    noise floor. The bare epsilon floor turns empty bins into alarms; a 0.5 pseudo-count not."""
    rng = np.random.default_rng(11)
    floor = psi_noise_floor(10, 50, 50, 0.001)
    bare = smoothed = 0
    trials = 2000
    for _ in range(trials):
        reference, current = rng.lognormal(0, 0.5, 50), rng.lognormal(0, 0.5, 50)
        edges = quantile_edges(reference, 10)
        r, c = bin_counts(reference, edges), bin_counts(current, edges)
        bare += psi(r, c) >= floor
        smoothed += psi(r, c, pseudo_count=0.5) >= floor
    assert bare / trials > 0.02
    assert smoothed / trials <= 0.002


# --- Kolmogorov-Smirnov -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lam", "expected", "tolerance"),
    [
        (0.5, 0.963945, 1e-5),
        (1.0, 0.269999671, 1e-7),
        (1.5, 0.02222, 1e-3),
        # Smirnov's critical values of the limiting distribution: 10%, 5%, 1%, 0.1%.
        (1.2238, 0.10, 1e-3),
        (1.3581, 0.05, 1e-3),
        (1.6276, 0.01, 1e-3),
        (1.9495, 0.001, 1e-3),
    ],
)
def test_kolmogorov_sf_against_tables(lam: float, expected: float, tolerance: float) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(expected, rel=tolerance)


def test_kolmogorov_sf_is_continuous_where_the_series_switch_and_bounded() -> None:
    assert kolmogorov_sf(1.0 - 1e-9) == pytest.approx(kolmogorov_sf(1.0 + 1e-9), rel=1e-6)
    assert kolmogorov_sf(0.0) == 1.0 and kolmogorov_sf(0.05) == 1.0
    assert 0.0 <= kolmogorov_sf(10.0) < 1e-80
    values = [kolmogorov_sf(x / 100) for x in range(1, 300)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_kolmogorov_isf_inverts_the_sf() -> None:
    for alpha in (0.1, 0.05, 0.01, 0.001, 1e-6):
        assert kolmogorov_sf(kolmogorov_isf(alpha)) == pytest.approx(alpha, rel=1e-6)
    assert kolmogorov_isf(0.05) == pytest.approx(1.3581, abs=1e-4)


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ([1, 2, 3, 4], [3, 4, 5, 6], 0.5),
        ([1, 2, 3], [1, 2, 3], 0.0),
        ([1, 2, 3, 4], [5, 6, 7, 8], 1.0),
        ([0.1, 0.2, 0.3, 0.4, 0.5], [0.35, 0.45], 0.6),
        ([1, 1, 1, 2], [1, 2, 2, 2], 0.5),  # ties: the jump at 1 is 3/4 vs 1/4
    ],
)
def test_ks_statistic_on_hand_made_arrays(a: list[float], b: list[float], d: float) -> None:
    statistic, p_value = ks_two_sample(a, b)
    assert statistic == pytest.approx(d)
    assert ks_two_sample(b, a)[0] == pytest.approx(d)
    assert 0.0 <= p_value <= 1.0


def test_ks_p_value_is_the_corrected_asymptotic_one() -> None:
    # n = m = 100, D = 0.19: λ = (√50 + 0.12 + 0.11/√50)·0.19 ≈ 1.3695, Q(λ) ≈ 0.0467.
    a = np.arange(100.0)
    b = a + 19.0  # shifts the ECDF by exactly 19 of 100 points
    statistic, p_value = ks_two_sample(a, b)
    assert statistic == pytest.approx(0.19)
    root = math.sqrt(50.0)
    assert p_value == pytest.approx(kolmogorov_sf((root + 0.12 + 0.11 / root) * 0.19))
    assert p_value == pytest.approx(0.0467, abs=5e-4)
    assert ks_two_sample([1.0, 2.0], [1.0, 2.0])[1] == 1.0


def test_ks_critical_is_where_the_p_value_crosses_alpha() -> None:
    critical = ks_critical(200, 300, 0.001)
    root = math.sqrt(200 * 300 / 500)
    assert kolmogorov_sf((root + 0.12 + 0.11 / root) * critical) == pytest.approx(0.001, rel=1e-6)


def test_ks_p_values_are_calibrated_without_a_shift() -> None:
    """Continuous data, no shift: P(p <= alpha) should be close to alpha, and not above it."""
    rng = np.random.default_rng(5)
    p_values = np.array(
        [ks_two_sample(rng.normal(size=300), rng.normal(size=200))[1] for _ in range(2000)]
    )
    assert 0.03 <= np.mean(p_values <= 0.05) <= 0.065
    assert 0.004 <= np.mean(p_values <= 0.01) <= 0.016


def test_ks_finds_a_shift_the_null_would_not_produce() -> None:
    rng = np.random.default_rng(6)
    statistic, p_value = ks_two_sample(rng.normal(size=500), rng.normal(0.4, size=500))
    assert p_value < 1e-6 and statistic > 0.1


# --- vectors ------------------------------------------------------------------------------------


def test_cosine_distance_known_values() -> None:
    assert cosine_distance([1, 0], [0, 3]) == pytest.approx(1.0)
    assert cosine_distance([1, 2], [2, 4]) == pytest.approx(0.0, abs=1e-12)
    assert cosine_distance([1, 2], [-1, -2]) == pytest.approx(2.0)
    assert cosine_distance([1, 1], [1, 0]) == pytest.approx(1 - 1 / math.sqrt(2))
    with pytest.raises(DriftInputError) as caught:
        cosine_distance([0, 0], [1, 0])
    assert caught.value.argument == "u"
    with pytest.raises(DriftInputError):
        cosine_distance([1, 0], [1, 0, 0])


def _moments(vectors: np.ndarray) -> VectorMoments:
    dots = np.einsum("ij,ij->i", vectors[1:], vectors[:-1])
    return VectorMoments(
        count=len(vectors),
        total=vectors.sum(axis=0),
        sq=float(np.einsum("ij,ij->", vectors, vectors)),
        pair_sq=float(dots @ dots),
        pairs=len(vectors) - 1,
    )


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _population(rng: np.random.Generator, mean: np.ndarray, n: int) -> np.ndarray:
    return _unit(mean + rng.normal(scale=0.12, size=(n, mean.size)))


def test_centroid_shift_is_unbiased_where_the_plain_distance_is_not() -> None:
    rng = np.random.default_rng(3)
    dim = 64
    mean = np.zeros(dim)
    mean[0] = 0.35
    debiased, plain, errors = [], [], []
    for _ in range(400):
        a, b = _population(rng, mean, 50), _population(rng, mean, 50)
        shift = centroid_shift(_moments(a), _moments(b))
        assert shift is not None
        debiased.append(shift.distance)
        errors.append(shift.std_error)
        plain.append(cosine_distance(a.sum(axis=0), b.sum(axis=0)))
    assert np.mean(plain) > 0.1  # pure sampling noise, already half the distance of a shift
    assert abs(np.mean(debiased)) < 0.01
    # The standard error the moments give is the spread the distance really has.
    assert np.median(errors) == pytest.approx(np.std(debiased), rel=0.3)


def test_centroid_shift_converges_to_the_population_distance() -> None:
    rng = np.random.default_rng(4)
    dim = 64
    first, second = np.zeros(dim), np.zeros(dim)
    first[0], second[0], second[1] = 0.5, 0.5 * math.cos(0.6), 0.5 * math.sin(0.6)
    a, b = _population(rng, first, 4000), _population(rng, second, 4000)
    shift = centroid_shift(_moments(a), _moments(b))
    expected = cosine_distance(a.mean(axis=0), b.mean(axis=0))  # ≈ 1 - cos 0.6 ≈ 0.175
    assert shift is not None
    assert shift.distance == pytest.approx(expected, abs=0.01)
    assert shift.distance == pytest.approx(1 - math.cos(0.6), abs=0.02)
    assert shift.std_error < 0.01


def test_centroid_shift_is_undefined_without_a_common_direction() -> None:
    rng = np.random.default_rng(8)
    isotropic = _unit(rng.normal(size=(200, 32)))  # |mean|² ≈ 0: no direction to compare
    one = _moments(isotropic[:1])
    assert centroid_shift(one, _moments(isotropic)) is None
    results = [
        centroid_shift(_moments(_unit(rng.normal(size=(20, 32)))), _moments(isotropic))
        for _ in range(50)
    ]
    assert any(r is None for r in results)
    with pytest.raises(DriftInputError):
        centroid_shift(_moments(isotropic), _moments(isotropic[:, :16]))


# --- EWMA ---------------------------------------------------------------------------------------


def test_ewma_is_silent_during_warm_up_then_exact() -> None:
    ewma = Ewma(alpha=0.02, warmup=10)
    values = [3.0, 5.0, 4.0, 6.0, 2.0, 5.0, 4.0, 3.0, 5.0, 4.0]
    assert [ewma.update(v) for v in values] == [None] * 10
    # weights max(alpha, 1/n): the first 1/alpha values are averaged equally
    assert ewma.mean == pytest.approx(np.mean(values))
    assert ewma.var == pytest.approx(np.var(values))
    z = ewma.update(10.0)
    assert z == pytest.approx((10.0 - np.mean(values)) / np.std(values))


def test_ewma_forgets_exponentially_after_the_first_values() -> None:
    ewma = Ewma(alpha=0.5, warmup=1)
    for value in (0.0, 0.0, 0.0):
        ewma.update(value)
    ewma.update(8.0)
    assert ewma.mean == pytest.approx(4.0)  # weight 0.5 once 1/n < alpha
    assert ewma.var == pytest.approx(0.5 * (0.0 + 8.0 * 4.0))


def test_ewma_clip_keeps_one_outlier_from_hiding_the_next() -> None:
    rng = np.random.default_rng(9)
    clipped, plain = Ewma(alpha=0.05, warmup=50, clip_z=4.0), Ewma(alpha=0.05, warmup=50)
    for value in rng.normal(size=200):
        clipped.update(float(value))
        plain.update(float(value))
    for ewma in (clipped, plain):
        ewma.update(1000.0)
    assert plain.std > 40 and clipped.std < 1.5
    assert clipped.score(6.0) > 4.0 > plain.score(6.0)


def test_ewma_absorbs_a_lasting_level_shift_when_clipped() -> None:
    rng = np.random.default_rng(10)
    ewma = Ewma(alpha=0.05, warmup=50, clip_z=4.0)
    for value in rng.normal(size=200):
        ewma.update(float(value))
    scores = [ewma.update(float(v)) for v in rng.normal(10.0, 1.0, size=300)]
    assert scores[0] > 4.0
    assert all(abs(s) < 4.0 for s in scores[-50:] if s is not None)


def test_ewma_min_std_bounds_the_score_of_a_constant_stream() -> None:
    bare, floored = Ewma(alpha=0.1, warmup=5), Ewma(alpha=0.1, warmup=5, min_std=0.5)
    for _ in range(10):
        bare.update(1.0)
        floored.update(1.0)
    assert bare.score(1.0) == 0.0
    assert bare.score(1.1) == math.inf
    assert floored.score(2.0) == pytest.approx(2.0)


def test_ewma_state_round_trips() -> None:
    ewma = Ewma(alpha=0.1, warmup=3, clip_z=4.0)
    for value in (1.0, 2.0, 4.0, 3.0, 9.0):
        ewma.update(value)
    again = Ewma.from_dict(ewma.to_dict(), alpha=0.1, warmup=3, clip_z=4.0)
    assert again.update(5.0) == ewma.update(5.0)
    assert again.to_dict() == ewma.to_dict()


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": 0.0, "warmup": 1}, {"alpha": 1.5, "warmup": 1}, {"alpha": 0.1, "warmup": 0}],
)
def test_ewma_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(DriftInputError):
        Ewma(**kwargs)  # type: ignore[arg-type]


def test_ewma_rejects_a_non_finite_value() -> None:
    with pytest.raises(DriftInputError):
        Ewma(alpha=0.1, warmup=1).update(math.nan)
