"""Drift detection: the window logic, anomaly scoring with its cool-down, persistence, the
findings as events, and the statistical behaviour on stationary and shifted synthetic traffic
(samples from events: test_drift_samples.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import numpy as np
import pytest
from fastavro.validation import validate

from sluicegate.processors.drift import DriftFinding, DriftMonitor, drift_event, thresholds_for
from sluicegate.processors.drift_samples import DriftSample, embedding_sample
from sluicegate.processors.drift_stats import DriftInputError
from sluicegate.schemas import parsed_schema
from sluicegate.schemas.models import DriftDetected
from sluicegate.settings import DriftSettings, DriftTenantOverride, Settings

pytestmark = pytest.mark.unit

W = 300_000  # the default window, in ms
T0 = 1_764_000_000_000 - 1_764_000_000_000 % W  # a window boundary
SMALL = DriftSettings(min_samples=20, max_samples=500)


def value(metric: str, x: float, at_ms: int, tenant: str = "acme") -> DriftSample:
    return DriftSample(tenant_id=tenant, metric=metric, at_ms=at_ms, value=x)


def window(
    rng: np.random.Generator,
    index: int,
    n: int,
    *,
    metric: str = "latency_ms",
    median: float = 800.0,
    sigma: float = 0.5,
    tenant: str = "acme",
) -> list[DriftSample]:
    """`n` lognormal samples spread over window `index`, in time order."""
    times = np.sort(rng.integers(0, W, n)) + T0 + index * W
    xs = rng.lognormal(math.log(median), sigma, n)
    return [value(metric, float(x), int(t), tenant) for x, t in zip(xs, times, strict=True)]


def feed(monitor: DriftMonitor, samples: Iterable[DriftSample]) -> list[DriftFinding]:
    return [finding for sample in samples for finding in monitor.observe(sample)]


def drifts(findings: list[DriftFinding]) -> list[DriftFinding]:
    return [f for f in findings if f.statistic != "ewma_z"]


# --- caller bugs and events ---------------------------------------------------------------------


def test_a_value_for_a_vector_metric_is_a_caller_bug() -> None:
    monitor = DriftMonitor(settings=SMALL)
    with pytest.raises(DriftInputError):
        monitor.observe(value("prompt_embedding", 1.0, T0))
    with pytest.raises(DriftInputError):
        monitor.observe(DriftSample(tenant_id="t", metric="usd", at_ms=T0, vector=(1.0,)))


def test_drift_event_is_a_valid_drift_detected() -> None:
    finding = DriftFinding(
        tenant_id="acme",
        metric="latency_ms",
        statistic="ks",
        value=0.31,
        threshold=0.19,
        window_start_ms=T0 + W,
        window_end_ms=T0 + 2 * W,
        reference_count=400,
        current_count=380,
        reference_start_ms=T0,
        reference_end_ms=T0 + W,
        p_value=1e-7,
        reference_mean=810.0,
        current_mean=1050.0,
    )
    emit = drift_event(finding)
    assert (emit.topic, emit.key) == ("drift", "latency_ms")
    event = emit.event
    assert isinstance(event, DriftDetected)
    assert (event.tenant_id, event.producer, event.statistic) == ("acme", "drift", "ks")
    assert int(event.window_start_ms.timestamp() * 1000) == T0 + W
    assert (event.p_value, event.reference_count, event.current_mean) == (1e-7, 400, 1050.0)
    reference = (event.reference_start_ms, event.reference_end_ms)
    assert tuple(int(t.timestamp() * 1000) for t in reference) == (T0, T0 + W)
    assert validate(event.model_dump(), parsed_schema("DriftDetected"), strict=True)


# --- windows ------------------------------------------------------------------------------------


def test_the_first_full_window_becomes_the_reference_and_a_later_sample_closes_it() -> None:
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(settings=SMALL)
    assert feed(monitor, window(rng, 0, 100)) == []
    assert monitor.stats.windows_closed == 0
    # The window is [T0, T0 + W): a sample exactly at its end closes it.
    assert monitor.observe(value("latency_ms", 800.0, T0 + W)) == []
    stats = monitor.stats
    assert (stats.windows_closed, stats.windows_compared, stats.windows_skipped) == (1, 0, 0)
    state = monitor.state_of("acme", "latency_ms")
    assert state is not None and state["reference"]["start"] == T0
    assert state["current"]["start"] == T0 + W and state["current"]["count"] == 1


def test_a_shift_fires_psi_and_ks_with_the_event_fields() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(settings=SMALL)
    feed(monitor, window(rng, 0, 400))
    feed(monitor, window(rng, 1, 400, median=1600.0))
    found = feed(monitor, [value("latency_ms", 800.0, T0 + 2 * W)])
    by_statistic = {f.statistic: f for f in drifts(found)}
    assert set(by_statistic) == {"psi", "ks"}
    psi, ks = by_statistic["psi"], by_statistic["ks"]
    assert (psi.window_start_ms, psi.window_end_ms) == (T0 + W, T0 + 2 * W)
    assert (psi.reference_start_ms, psi.reference_end_ms) == (T0, T0 + W)
    assert (psi.reference_count, psi.current_count) == (400, 400)
    assert psi.value >= psi.threshold >= 0.2
    assert psi.reference_mean is not None and psi.current_mean is not None
    assert 1.7 < psi.current_mean / psi.reference_mean < 2.3
    assert ks.p_value is not None and ks.p_value <= SMALL.ks_alpha
    assert ks.value >= ks.threshold and 0 < ks.threshold < 0.2


def test_small_windows_are_skipped_and_never_become_the_reference() -> None:
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(settings=SMALL)
    feed(monitor, window(rng, 0, 5))  # below min_samples
    feed(monitor, window(rng, 1, 100))
    feed(monitor, window(rng, 2, 100, median=2400.0))
    found = drifts(monitor.close_due(T0 + 3 * W))
    stats = monitor.stats
    assert (stats.windows_closed, stats.windows_skipped, stats.windows_compared) == (3, 1, 1)
    assert monitor.series_counts("acme", "latency_ms")["skipped"] == 1
    assert found and {f.reference_start_ms for f in found} == {T0 + W}


@pytest.mark.parametrize(
    ("reference", "firing_windows"),
    [("previous", [2]), ("first", [2, 3, 4])],
)
def test_reference_modes(reference: str, firing_windows: list[int]) -> None:
    """Two baseline windows, then three shifted ones: `previous` fires once, when the change
    happens; `first` keeps firing while traffic stays away from the pinned reference."""
    rng = np.random.default_rng(4)
    monitor = DriftMonitor(settings=SMALL.model_copy(update={"reference": reference}))
    fired = []
    for index in range(5):
        median = 800.0 if index < 2 else 2000.0
        fired += [
            f.window_start_ms for f in drifts(feed(monitor, window(rng, index, 300, median=median)))
        ]
    fired += [f.window_start_ms for f in drifts(monitor.close_due(T0 + 5 * W))]
    assert sorted({(start - T0) // W for start in fired}) == firing_windows


def test_close_due_closes_only_ended_windows_and_later_samples_are_late() -> None:
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(settings=SMALL)
    feed(monitor, window(rng, 0, 100))
    assert monitor.close_due(T0 + W - 1) == []
    assert monitor.stats.windows_closed == 0
    monitor.close_due(T0 + W)
    assert monitor.stats.windows_closed == 1
    assert monitor.observe(value("latency_ms", 800.0, T0 + W - 10)) == []  # its window closed
    assert monitor.stats.late == 1
    assert monitor.series_counts("acme", "latency_ms")["late"] == 1
    monitor.observe(value("latency_ms", 800.0, T0 + W + 10))
    state = monitor.state_of("acme", "latency_ms")
    assert state is not None and state["current"]["count"] == 1
    monitor.observe(value("latency_ms", 800.0, T0 + W + 5))  # before the newest, same window
    assert monitor.stats.late == 1


def test_windows_are_kept_per_tenant_and_metric() -> None:
    rng = np.random.default_rng(6)
    monitor = DriftMonitor(settings=SMALL)
    feed(monitor, window(rng, 0, 100, tenant="a") + window(rng, 0, 100, tenant="b"))
    feed(monitor, window(rng, 0, 100, metric="completion_tokens", tenant="a"))
    found = drifts(
        feed(
            monitor, window(rng, 1, 100, tenant="a") + window(rng, 1, 100, median=4000, tenant="b")
        )
    )
    found += drifts(monitor.close_due(T0 + 2 * W))
    assert {(f.tenant_id, f.metric) for f in found} == {("b", "latency_ms")}
    assert monitor.stats.windows_closed == 5


def test_per_tenant_overrides() -> None:
    settings = SMALL.model_copy(
        update={
            "tenants": {
                "lenient": DriftTenantOverride(psi_threshold=50.0, ks_alpha=1e-30),
                "strict": DriftTenantOverride(z_threshold=2.5, centroid_threshold=0.01),
            }
        }
    )
    lenient = thresholds_for(settings, "lenient")
    assert (lenient.psi, lenient.ks_alpha, lenient.z) == (50.0, 1e-30, SMALL.z_threshold)
    assert lenient.psi_alpha == SMALL.psi_alpha
    strict = thresholds_for(settings, "strict")
    assert (strict.z, strict.centroid, strict.psi) == (2.5, 0.01, SMALL.psi_threshold)
    rng = np.random.default_rng(7)
    monitor = DriftMonitor(settings=settings)
    for tenant in ("acme", "lenient"):
        feed(monitor, window(rng, 0, 300, tenant=tenant))
        feed(monitor, window(rng, 1, 300, median=1400.0, tenant=tenant))
    found = drifts(monitor.close_due(T0 + 2 * W))
    assert {f.tenant_id for f in found} == {"acme"}


def test_per_tenant_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_DRIFT__WINDOW_S", "60")
    monkeypatch.setenv("SLUICEGATE_DRIFT__TENANTS", '{"acme": {"ks_alpha": 0.01}}')
    drift = Settings().drift
    assert drift.window_s == 60 and thresholds_for(drift, "acme").ks_alpha == 0.01
    with pytest.raises(ValueError, match="max_samples"):
        DriftSettings(min_samples=100, max_samples=50)


def test_metrics_not_enabled_are_ignored_and_eval_enables_every_eval_metric() -> None:
    monitor = DriftMonitor(settings=SMALL.model_copy(update={"metrics": ["latency_ms", "eval"]}))
    monitor.observe(value("usd", 0.1, T0))
    monitor.observe(value("eval:exact", 1.0, T0))
    monitor.observe(value("eval:judge", 0.5, T0))
    monitor.observe(value("latency_ms", 10.0, T0))
    assert monitor.stats.ignored == 1 and monitor.stats.samples == 3
    assert monitor.state_of("acme", "usd") is None
    assert monitor.state_of("acme", "eval:judge") is not None
    off = DriftMonitor(settings=SMALL.model_copy(update={"enabled": False}))
    assert off.observe(value("latency_ms", 1e9, T0)) == [] and off.stats.samples == 0


def test_non_finite_values_are_counted_and_dropped() -> None:
    monitor = DriftMonitor(settings=SMALL)
    monitor.observe(value("latency_ms", math.nan, T0))
    monitor.observe(value("latency_ms", math.inf, T0))
    monitor.observe(
        DriftSample(tenant_id="a", metric="prompt_embedding", at_ms=T0, vector=(math.nan, 1.0))
    )
    assert monitor.stats.invalid == 3 and monitor.stats.samples == 0
    assert monitor.state_of("acme", "latency_ms") is None


def test_the_reservoir_is_bounded_uniform_and_seeded() -> None:
    settings = DriftSettings(min_samples=10, max_samples=100)
    monitor = DriftMonitor(settings=settings, seed=1)
    stream = [value("latency_ms", float(i), T0 + i) for i in range(5000)]
    feed(monitor, stream)
    state = monitor.state_of("acme", "latency_ms")
    assert state is not None
    kept = np.frombuffer(__import__("base64").b64decode(state["current"]["samples"]))
    assert kept.size == 100 and len(set(kept.tolist())) == 100
    assert state["current"]["count"] == 5000
    assert state["current"]["total"] == sum(range(5000))  # the mean stays exact
    # Uniform over the whole window: not the first 100, not the last 100.
    assert abs(kept.mean() - 2500) < 600
    assert 0.3 < np.mean(kept < 2500) < 0.7
    again = DriftMonitor(settings=settings, seed=1)
    feed(again, stream)
    assert again.state_of("acme", "latency_ms") == state
    other = DriftMonitor(settings=settings, seed=2)
    feed(other, stream)
    other_state = other.state_of("acme", "latency_ms")
    assert (
        other_state is not None and other_state["current"]["samples"] != state["current"]["samples"]
    )


# --- anomalies ----------------------------------------------------------------------------------


def steady(
    rng: np.random.Generator, n: int, start_ms: int, step_ms: int = 1000
) -> list[DriftSample]:
    xs = rng.lognormal(math.log(800.0), 0.3, n)
    return [value("latency_ms", float(x), start_ms + i * step_ms) for i, x in enumerate(xs)]


def test_an_anomaly_fires_after_warm_up_with_its_fields() -> None:
    rng = np.random.default_rng(8)
    monitor = DriftMonitor(settings=SMALL)
    assert feed(monitor, steady(rng, 200, T0)) == []
    found = feed(monitor, [value("latency_ms", 30_000.0, T0 + 200_500)])
    (finding,) = found
    assert finding.statistic == "ewma_z" and finding.value >= finding.threshold == 4.0
    assert (finding.window_start_ms, finding.window_end_ms) == (T0 + 200_500,) * 2
    assert (finding.reference_count, finding.current_count) == (200, 1)
    assert finding.current_mean == 30_000.0
    assert finding.reference_mean is not None and 650 < finding.reference_mean < 950
    # A spike during the warm-up is not judged: there is nothing to judge it against yet.
    early = DriftMonitor(settings=SMALL)
    assert feed(early, [*steady(rng, 10, T0), value("latency_ms", 30_000.0, T0 + 10_500)]) == []


def test_a_spike_storm_is_one_finding_within_the_cool_down() -> None:
    rng = np.random.default_rng(9)
    storm = [value("latency_ms", 20_000.0 + 100 * i, T0 + 300_000 + i * 500) for i in range(100)]
    with_cooldown = DriftMonitor(settings=SMALL)
    found = [
        f for f in feed(with_cooldown, [*steady(rng, 300, T0), *storm]) if f.statistic == "ewma_z"
    ]
    assert len(found) == 1
    assert with_cooldown.stats.anomalies_suppressed >= 5
    assert with_cooldown.series_counts("acme", "latency_ms")["suppressed"] >= 5
    without = DriftMonitor(settings=SMALL.model_copy(update={"cooldown_s": 0.0}))
    rng = np.random.default_rng(9)
    loud = [f for f in feed(without, [*steady(rng, 300, T0), *storm]) if f.statistic == "ewma_z"]
    assert len(loud) >= 5
    # After the cool-down a new anomaly fires again.
    later = T0 + 300_000 + 100 * 500 + SMALL.cooldown_s * 1000
    again = feed(with_cooldown, [value("latency_ms", 5e7, int(later))])
    assert [f.window_start_ms for f in again if f.statistic == "ewma_z"] == [int(later)]
    assert {f.statistic for f in again} == {"psi", "ks", "ewma_z"}  # it also closed the storm


def test_a_tenant_z_threshold_applies() -> None:
    settings = SMALL.model_copy(update={"tenants": {"acme": DriftTenantOverride(z_threshold=50.0)}})
    rng = np.random.default_rng(10)
    monitor = DriftMonitor(settings=settings)
    found = feed(monitor, [*steady(rng, 200, T0), value("latency_ms", 30_000.0, T0 + 200_500)])
    assert found == []


# --- vectors ------------------------------------------------------------------------------------

DIM = 32


def topics(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shared = np.zeros(DIM)
    shared[0] = 1.0
    directions = rng.normal(size=(6, DIM))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return 0.3 * shared + 0.6 * directions


def embeddings(
    rng: np.random.Generator, centres: np.ndarray, index: int, n: int, weights: list[float]
) -> list[DriftSample]:
    chosen = rng.choice(len(centres), size=n, p=weights)
    rows = centres[chosen] + rng.normal(scale=0.1, size=(n, DIM))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    times = np.sort(rng.integers(0, W, n)) + T0 + index * W
    return [
        DriftSample(tenant_id="acme", metric="prompt_embedding", at_ms=int(t), vector=tuple(r))
        for r, t in zip(rows.tolist(), times, strict=True)
    ]


def test_centroid_drift_fires_on_a_topic_shift_and_stays_quiet_without() -> None:
    rng = np.random.default_rng(11)
    centres = topics(11)
    even = [1 / 5] * 5 + [0.0]
    new_topic = [0.6 / 5] * 5 + [0.4]
    monitor = DriftMonitor(settings=SMALL)
    found: list[DriftFinding] = []
    for index in range(12):
        found += feed(monitor, embeddings(rng, centres, index, 150, even))
    assert monitor.stats.windows_compared == 10 and found == []
    found += feed(monitor, embeddings(rng, centres, 12, 150, new_topic))
    found += monitor.close_due(T0 + 13 * W)
    (finding,) = found
    assert finding.statistic == "centroid" and finding.window_start_ms == T0 + 12 * W
    assert finding.value >= finding.threshold >= SMALL.centroid_threshold
    assert finding.reference_mean is None and finding.current_count == 150


def test_a_new_vector_dimension_restarts_the_series() -> None:
    rng = np.random.default_rng(12)
    monitor = DriftMonitor(settings=SMALL)
    feed(monitor, embeddings(rng, topics(12), 0, 60, [0.2] * 5 + [0.0]))
    monitor.observe(embedding_sample("acme", np.ones(8) / math.sqrt(8), T0 + W + 1))
    assert monitor.stats.resets == 1
    state = monitor.state_of("acme", "prompt_embedding")
    assert state is not None and state["reference"] is None and state["current"]["count"] == 1


# --- persistence --------------------------------------------------------------------------------


def mixed_stream(seed: int) -> list[DriftSample]:
    """Latency with a spike and a shift, and embeddings with a topic shift: every kind of state."""
    rng = np.random.default_rng(seed)
    centres = topics(seed)
    samples: list[DriftSample] = []
    for index in range(6):
        shifted = index >= 4
        samples += window(rng, index, 120, median=1500.0 if shifted else 800.0)
        weights = [0.6 / 5] * 5 + [0.4] if shifted else [0.2] * 5 + [0.0]
        samples += embeddings(rng, centres, index, 80, weights)
    samples.append(value("latency_ms", 1e6, T0 + 5 * W + 1))
    return sorted(samples, key=lambda s: s.at_ms)


def test_state_round_trips_through_json_and_detection_continues_identically() -> None:
    stream = mixed_stream(13)
    half = len(stream) // 2
    original = DriftMonitor(settings=SMALL, seed=3)
    feed(original, stream[:half])
    assert original.take_dirty() == [("acme", "latency_ms"), ("acme", "prompt_embedding")]
    assert original.take_dirty() == []
    restored = DriftMonitor(settings=SMALL, seed=3)
    for metric in ("latency_ms", "prompt_embedding"):
        state = original.state_of("acme", metric)
        assert state is not None
        text = json.dumps(state)
        assert len(text) < 20_000  # compact: the 120-sample reservoirs and 32-d sums
        restored.restore("acme", metric, json.loads(text))
        assert restored.state_of("acme", metric) == state
    rest = [*stream[half:]]
    expected = feed(original, rest) + original.close_due(T0 + 7 * W)
    got = feed(restored, rest) + restored.close_due(T0 + 7 * W)
    assert {f.statistic for f in expected} >= {"psi", "ks", "centroid", "ewma_z"}
    assert got == expected
    for metric in ("latency_ms", "prompt_embedding"):
        assert restored.state_of("acme", metric) == original.state_of("acme", metric)


def test_restore_refuses_an_unknown_state_version() -> None:
    with pytest.raises(DriftInputError):
        DriftMonitor(settings=SMALL).restore("acme", "usd", {"v": 99})


# --- statistical behaviour ----------------------------------------------------------------------


def request_windows(
    seed: int, windows: int, per_window: int, *, shift_from: int | None = None, **shifted: float
) -> Iterable[list[DriftSample]]:
    """Synthetic traffic of one tenant, all four scalar metrics: lognormal latency (median 800 ms,
    sigma 0.5), Poisson token counts around lognormal means (300 and 150), cost priced from
    them. From window `shift_from` on, `shifted` replaces latency_median / latency_sigma /
    prompt_median."""
    rng = np.random.default_rng(seed)
    for index in range(windows):
        p = {"latency_median": 800.0, "latency_sigma": 0.5, "prompt_median": 300.0}
        if shift_from is not None and index >= shift_from:
            p |= shifted
        times = np.sort(rng.integers(0, W, per_window)) + T0 + index * W
        latency = rng.lognormal(math.log(p["latency_median"]), p["latency_sigma"], per_window)
        prompt = rng.poisson(rng.lognormal(math.log(p["prompt_median"]), 0.6, per_window))
        completion = rng.poisson(rng.lognormal(math.log(150.0), 0.5, per_window))
        usd = (prompt * 0.5 + completion * 1.5) / 1e6
        batch = []
        for i in range(per_window):
            at = int(times[i])
            batch += [
                value("latency_ms", float(latency[i]), at),
                value("prompt_tokens", float(prompt[i]), at),
                value("completion_tokens", float(completion[i]), at),
                value("usd", float(usd[i]), at),
            ]
        yield batch


@pytest.mark.parametrize(("windows", "per_window"), [(300, 50), (150, 300)])
def test_stationary_traffic_false_alarm_rate(windows: int, per_window: int) -> None:
    """Default settings, traffic that never changes: PSI and KS together fire on at most 0.5% of
    window comparisons (at ks_alpha = 0.001 and PSI's 0.999 noise floor the expectation is
    below 0.2%; the bench measures it over 1000 windows), and per-request anomalies stay rare."""
    monitor = DriftMonitor(settings=DriftSettings())
    found: list[DriftFinding] = []
    for batch in request_windows(100 + per_window, windows, per_window):
        found += feed(monitor, batch)
    found += monitor.close_due(T0 + (windows + 1) * W)
    compared = monitor.stats.windows_compared
    assert compared == 4 * (windows - 1)
    rate = len(drifts(found)) / compared
    assert rate <= 0.005, f"{len(drifts(found))} false alarms in {compared} comparisons"
    anomalies = sum(1 for f in found if f.statistic == "ewma_z")
    assert anomalies / (2 * windows * per_window) <= 5e-4


@pytest.mark.parametrize(
    ("shift", "metric"),
    [
        ({"latency_median": 1040.0}, "latency_ms"),  # mean +30% (lognormal: mean ∝ median)
        ({"latency_sigma": 0.8}, "latency_ms"),  # variance up, median the same
        ({"prompt_median": 390.0}, "prompt_tokens"),  # +30% prompt length
    ],
)
def test_a_shift_is_detected_in_the_first_shifted_window(
    shift: dict[str, float], metric: str
) -> None:
    """Two baseline windows, then shifted traffic: for 20 seeds out of 20 the shifted metric
    fires when its first shifted window closes, and nothing fires before."""
    detected = 0
    for seed in range(20):
        monitor = DriftMonitor(settings=DriftSettings())
        batches = list(request_windows(seed, 3, 600, shift_from=2, **shift))
        before = feed(monitor, batches[0] + batches[1])
        assert drifts(before) == []
        found = drifts(feed(monitor, batches[2]) + monitor.close_due(T0 + 3 * W))
        detected += any(f.metric == metric and f.window_start_ms == T0 + 2 * W for f in found)
    assert detected == 20
