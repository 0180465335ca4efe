"""Drift detection: per tenant and metric, tumbling windows compared with a reference window, and
per-request anomaly scores for latency and cost. A pure core: samples in, findings out.

What is watched (a *metric*: request tokens, latency and cost, eval scores, prompt embeddings;
`settings.drift.metrics` enables them by family) and how samples are taken from events is in
`drift_samples.py`.

Windows. Each (tenant, metric) has tumbling windows of `window_s`, aligned on event time
(epoch multiples). A window closes when a sample at or past its end arrives, or when the
caller's timer calls `close_due(watermark_ms)`; a sample for a window already closed is *late*,
counted and left out (anomaly scoring still sees it). A closed window with fewer than
`min_samples` is *skipped* (counted), otherwise it is compared with the reference:

* scalars: PSI over the reference's quantile bins, and two-sample KS (drift_stats.py). PSI
  fires at `psi_threshold` or at its sampling-noise level, whichever is higher (`psi_alpha`);
  KS fires at p <= `ks_alpha` and reports D with the critical D as its threshold.
* vectors: the debiased cosine distance of the two centroids (`centroid_shift`), firing at
  `centroid_threshold` or 5 standard errors of its no-shift noise, whichever is higher.

The reference is the first window that had enough samples, pinned (`reference: first`: every
window keeps firing while traffic stays away from launch-time traffic), or the last such window
(`previous`, the default: a change fires when it happens, then becomes the new normal).

Bounded memory, whatever the traffic: a scalar window keeps at most `max_samples` values, a
uniform reservoir sample (Algorithm R) whose random choices come from a counter-based hash of
(seed, tenant, metric, window, sample number) rather than a stateful RNG, so a restored state
continues with exactly the choices it would have made; its count and sum stay exact. A vector
window keeps O(dimension) moments (`VectorMoments`), never the vectors.

Anomalies (`anomaly_metrics`, by default latency and cost) are scored per sample by an EWMA
z-score on the log scale: both are right-skewed, and on the raw scale a 4 sigma threshold fires
on about 0.6% of ordinary lognormal(sigma = 0.5) latencies, on the log scale on 0.006%. After a
finding the series stays quiet for `cooldown_s` (event time), so one spike storm is one finding;
what the cool-down swallows is counted.

State. `state_of(tenant, metric)` is a JSON-able dict (reservoirs and vector sums as base64 of
float64, so values round-trip exactly) and `restore` takes it back: a monitor restored from it
produces the same findings as the one it was taken from. Writing it on every sample would cost a
changelog record of a few kB per request; `take_dirty` tells which series changed, so the caller
can write them when a window closes and on a timer.
"""

from __future__ import annotations

import base64
import hashlib
import math
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from sluicegate.processors.drift_samples import VECTOR_METRICS, DriftSample, metric_family
from sluicegate.processors.drift_stats import (
    DriftInputError,
    Ewma,
    VectorMoments,
    bin_counts,
    centroid_shift,
    ks_critical,
    ks_two_sample,
    psi,
    psi_noise_floor,
    quantile_edges,
)
from sluicegate.processors.envelope import Emit, system_envelope
from sluicegate.schemas.models import DriftDetected
from sluicegate.settings import DriftSettings

PRODUCER = "drift"
Statistic = Literal["psi", "ks", "centroid", "ewma_z"]
STATISTICS: tuple[Statistic, ...] = ("psi", "ks", "centroid", "ewma_z")

CENTROID_NOISE_Z = 5.0
"""Standard errors of no-shift noise a centroid distance must also exceed. Measured on MiniLM
embeddings of a stationary prompt mix, the distance passed 5 of its estimated standard errors in
0.2% of window pairs at 50 prompts a side and never at 1000 (the tails are heavier than normal
at small windows, where the estimated norms in the denominator are noisy too)."""
PSI_PSEUDO_COUNT = 0.5
"""Added to every PSI bin (Jeffreys' prior), so one empty bin of a small window does not pass
for a shift (see `drift_stats.psi`)."""
LOG_OFFSET = {"latency_ms": 1.0, "usd": 1e-6, "prompt_tokens": 1.0, "completion_tokens": 1.0}
"""Anomaly scores are on ln(value + offset): the offset keeps a zero finite (a cache hit's
tokens, an unpriced deployment's $0) and is far below the values that matter."""
LOG_MIN_STD = 0.05
"""Floor of the log-scale spread: after a constant stretch (a fixed-price request) the variance
is 0 and any change would be infinitely anomalous; with this floor it takes a change of about
e^(4 x 0.05) - 1 = 22% to reach 4 sigma."""
_STATE_VERSION = 1
_MASK64 = (1 << 64) - 1


# --- findings -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftFinding:
    """A distribution moved (psi, ks, centroid) or one sample was an anomaly (ewma_z).

    Carries the fields of a DriftDetected event. Counts are of everything the windows saw; the
    window statistics use at most `max_samples` of them (a uniform sample). For ewma_z the
    "window" is the sample's own time, the reference count the values the EWMA had seen, the
    reference mean the EWMA's centre (a geometric mean: scores are on the log scale) and the
    current mean the value itself.
    """

    tenant_id: str
    metric: str
    statistic: Statistic
    value: float
    threshold: float
    window_start_ms: int
    window_end_ms: int
    reference_count: int
    current_count: int
    reference_start_ms: int | None = None
    reference_end_ms: int | None = None
    p_value: float | None = None
    reference_mean: float | None = None
    current_mean: float | None = None


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _optional_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else _datetime(ms)


def drift_event(finding: DriftFinding, *, producer: str = PRODUCER) -> Emit:
    """The DriftDetected for a finding, keyed by metric like sg.drift. No request caused it, so
    its envelope is a system one, with the finding's tenant."""
    event = DriftDetected(
        **{**system_envelope(producer=producer), "tenant_id": finding.tenant_id},
        metric=finding.metric,
        statistic=finding.statistic,
        value=finding.value,
        threshold=finding.threshold,
        window_start_ms=_datetime(finding.window_start_ms),
        window_end_ms=_datetime(finding.window_end_ms),
        reference_start_ms=_optional_datetime(finding.reference_start_ms),
        reference_end_ms=_optional_datetime(finding.reference_end_ms),
        p_value=finding.p_value,
        reference_count=finding.reference_count,
        current_count=finding.current_count,
        reference_mean=finding.reference_mean,
        current_mean=finding.current_mean,
    )
    return Emit("drift", finding.metric, event)


# --- thresholds and counters --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds:
    """One tenant's thresholds: the group's, with the tenant's overrides on top."""

    psi: float
    psi_alpha: float | None
    ks_alpha: float
    centroid: float
    z: float


def thresholds_for(settings: DriftSettings, tenant_id: str) -> Thresholds:
    override = settings.tenants.get(tenant_id)

    def pick(own: float | None, default: float) -> float:
        return default if own is None else own

    if override is None:
        return Thresholds(
            settings.psi_threshold,
            settings.psi_alpha,
            settings.ks_alpha,
            settings.centroid_threshold,
            settings.z_threshold,
        )
    return Thresholds(
        pick(override.psi_threshold, settings.psi_threshold),
        settings.psi_alpha if override.psi_alpha is None else override.psi_alpha,
        pick(override.ks_alpha, settings.ks_alpha),
        pick(override.centroid_threshold, settings.centroid_threshold),
        pick(override.z_threshold, settings.z_threshold),
    )


@dataclass(frozen=True, slots=True)
class DriftStats:
    """Counters since the monitor started (not persisted: process metrics for Prometheus).

    `ignored`: samples of metrics not enabled; `invalid`: NaN or infinite values; `late`:
    samples for an already closed window; `windows_skipped`: closed with fewer than
    `min_samples`; `windows_compared`: closed and compared with a reference; `undefined`:
    vector comparisons without a defined distance (no common direction); `resets`: series
    restarted because the vector dimension changed (another embedding model);
    `anomalies_suppressed`: anomalies inside a cool-down.
    """

    samples: int = 0
    ignored: int = 0
    invalid: int = 0
    late: int = 0
    windows_closed: int = 0
    windows_skipped: int = 0
    windows_compared: int = 0
    undefined: int = 0
    resets: int = 0
    anomalies_suppressed: int = 0
    findings: dict[str, int] = field(default_factory=dict)


# --- per-series state ---------------------------------------------------------------------------


def _encode(values: np.ndarray | array[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").copy()


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a counter-based random 64-bit number."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclass(slots=True)
class _ScalarWindow:
    start_ms: int
    end_ms: int
    salt: int
    count: int = 0
    total: float = 0.0
    # array("d"), not a list: 8 bytes a value instead of a float object and a pointer (~32),
    # which is most of a series' memory (two reservoirs of up to max_samples).
    samples: array[float] = field(default_factory=lambda: array("d"))

    def add(self, x: float, capacity: int) -> None:
        self.count += 1
        self.total += x
        if len(self.samples) < capacity:
            self.samples.append(x)
            return
        slot = _mix64(self.salt + self.count) % self.count
        if slot < capacity:
            self.samples[slot] = x

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start_ms,
            "end": self.end_ms,
            "count": self.count,
            "total": self.total,
            "samples": _encode(self.samples),
        }


@dataclass(slots=True)
class _VectorWindow:
    start_ms: int
    end_ms: int
    total: np.ndarray
    count: int = 0
    sq: float = 0.0
    pair_sq: float = 0.0
    pairs: int = 0
    last: np.ndarray | None = None

    def add(self, v: np.ndarray) -> None:
        self.count += 1
        self.total += v
        self.sq += float(v @ v)
        if self.last is not None:
            self.pair_sq += float(v @ self.last) ** 2
            self.pairs += 1
        self.last = v

    def moments(self) -> VectorMoments:
        return VectorMoments(self.count, self.total, self.sq, self.pair_sq, self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start_ms,
            "end": self.end_ms,
            "count": self.count,
            "total": _encode(self.total),
            "sq": self.sq,
            "pair_sq": self.pair_sq,
            "pairs": self.pairs,
            "last": None if self.last is None else _encode(self.last),
        }


_Window = _ScalarWindow | _VectorWindow


@dataclass(slots=True)
class _Series:
    """One (tenant, metric): its open window, its reference, its EWMA and its own counters."""

    vector: bool
    current: _Window | None = None
    reference: _Window | None = None
    ewma: Ewma | None = None
    horizon_ms: int = 0  # end of the last closed window: earlier samples are late
    quiet_until_ms: int = 0  # anomaly cool-down
    closed: int = 0
    skipped: int = 0
    late: int = 0
    suppressed: int = 0


# --- the monitor --------------------------------------------------------------------------------


class DriftMonitor:
    """Folds samples into per-(tenant, metric) windows and EWMAs; returns what moved.

    Single-threaded and in-process: the worker runs one for all its partitions
    (`drift_stage.DriftStage`) and persists `state_of` per series in a changelog-backed table.
    """

    def __init__(self, *, settings: DriftSettings, seed: int = 0) -> None:
        self._settings = settings
        self._seed = seed
        self._window_ms = max(1, round(settings.window_s * 1000))
        self._cooldown_ms = round(settings.cooldown_s * 1000)
        self._metrics = frozenset(settings.metrics)
        self._anomaly = frozenset(settings.anomaly_metrics)
        self._series: dict[tuple[str, str], _Series] = {}
        self._thresholds: dict[str, Thresholds] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "samples",
                "ignored",
                "invalid",
                "late",
                "windows_closed",
                "windows_skipped",
                "windows_compared",
                "undefined",
                "resets",
                "anomalies_suppressed",
            ),
            0,
        )
        self._findings: dict[str, int] = dict.fromkeys(STATISTICS, 0)

    # -- public ----------------------------------------------------------------------------------

    def observe(self, sample: DriftSample) -> list[DriftFinding]:
        """Fold one sample in; the findings of a window it closed and of its own anomaly score.

        A vector for a scalar metric or a value for a vector metric is a caller bug and raises
        `DriftInputError`; a NaN or infinite value is bad traffic, counted and dropped.
        """
        if not self._settings.enabled:
            return []
        family = metric_family(sample.metric)
        if family not in self._metrics:
            self._counts["ignored"] += 1
            return []
        vector = family in VECTOR_METRICS
        if vector != (sample.vector is not None):
            kind = "a vector" if vector else "a value"
            raise DriftInputError(f"{sample.metric} takes {kind}", argument="metric")
        point = self._point(sample)
        if point is None:
            self._counts["invalid"] += 1
            return []
        self._counts["samples"] += 1
        key = (sample.tenant_id, sample.metric)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(vector=vector)
        self._dirty.add(key)
        findings: list[DriftFinding] = []
        current = series.current
        if current is not None and sample.at_ms >= current.end_ms:
            findings += self._close(key, series)
        if self._is_late(series, sample.at_ms):
            series.late += 1
            self._counts["late"] += 1
        else:
            self._add(key, series, point, sample.at_ms)
        if family in self._anomaly and isinstance(point, float):
            findings += self._score(key, series, sample, point)
        return findings

    def close_due(self, now_ms: int) -> list[DriftFinding]:
        """Close every window that ends at or before `now_ms`; their findings.

        For a timer, so a tenant whose traffic stops still has its last window judged. Pass a
        watermark, not the bare clock (now minus the lateness to tolerate): a sample that
        arrives for a window already closed is late and left out.
        """
        findings: list[DriftFinding] = []
        for key, series in self._series.items():
            if series.current is not None and series.current.end_ms <= now_ms:
                self._dirty.add(key)
                findings += self._close(key, series)
        return findings

    def state_of(self, tenant_id: str, metric: str) -> dict[str, Any] | None:
        """The series' state as a JSON-able dict, None if the monitor has never seen it."""
        series = self._series.get((tenant_id, metric))
        if series is None:
            return None
        return {
            "v": _STATE_VERSION,
            "vector": series.vector,
            "current": None if series.current is None else series.current.to_dict(),
            "reference": None if series.reference is None else series.reference.to_dict(),
            "ewma": None if series.ewma is None else series.ewma.to_dict(),
            "horizon": series.horizon_ms,
            "quiet_until": series.quiet_until_ms,
            "closed": series.closed,
            "skipped": series.skipped,
            "late": series.late,
            "suppressed": series.suppressed,
        }

    def restore(self, tenant_id: str, metric: str, state: dict[str, Any]) -> None:
        """Take a series back from `state_of` (e.g. from the table, after a restart or a
        rebalance); replaces whatever the monitor had for it. A reservoir larger than the
        current `max_samples` is cut down to it."""
        if state.get("v") != _STATE_VERSION:
            raise DriftInputError(f"unknown drift state version {state.get('v')}", argument="state")
        vector = bool(state["vector"])
        series = _Series(
            vector=vector,
            horizon_ms=int(state["horizon"]),
            quiet_until_ms=int(state["quiet_until"]),
            closed=int(state["closed"]),
            skipped=int(state["skipped"]),
            late=int(state["late"]),
            suppressed=int(state["suppressed"]),
        )
        for slot in ("current", "reference"):
            saved = state[slot]
            if saved is not None:
                window = self._window_from(tenant_id, metric, vector, saved)
                setattr(series, slot, window)
        if state["ewma"] is not None:
            series.ewma = self._new_ewma(tenant_id, state["ewma"])
        self._series[(tenant_id, metric)] = series

    def take_dirty(self) -> list[tuple[str, str]]:
        """The (tenant, metric) series changed since the last call, sorted; clears the set."""
        dirty = sorted(self._dirty)
        self._dirty.clear()
        return dirty

    def series(self) -> list[tuple[str, str]]:
        """Every (tenant, metric) the monitor holds, sorted."""
        return sorted(self._series)

    def forget(self, tenant_id: str, metric: str) -> None:
        """Drop a series (its partition moved to another worker); unknown series are ignored."""
        self._series.pop((tenant_id, metric), None)
        self._dirty.discard((tenant_id, metric))

    @property
    def windows_closed(self) -> int:
        """Windows closed since the monitor started (`stats.windows_closed`, without a copy)."""
        return self._counts["windows_closed"]

    @property
    def stats(self) -> DriftStats:
        return DriftStats(**self._counts, findings=dict(self._findings))

    def series_counts(self, tenant_id: str, metric: str) -> dict[str, int]:
        """A series' own counters (persisted with its state): closed, skipped, late, suppressed."""
        series = self._series.get((tenant_id, metric))
        if series is None:
            return {"closed": 0, "skipped": 0, "late": 0, "suppressed": 0}
        return {
            "closed": series.closed,
            "skipped": series.skipped,
            "late": series.late,
            "suppressed": series.suppressed,
        }

    # -- windows ---------------------------------------------------------------------------------

    @staticmethod
    def _point(sample: DriftSample) -> float | np.ndarray | None:
        if sample.vector is not None:
            vector = np.asarray(sample.vector, dtype=np.float64)
            return vector if np.all(np.isfinite(vector)) else None
        value = float(sample.value or 0.0)  # a sample has a value when it has no vector
        return value if math.isfinite(value) else None

    @staticmethod
    def _is_late(series: _Series, at_ms: int) -> bool:
        if series.current is not None:
            return at_ms < series.current.start_ms
        return at_ms < series.horizon_ms

    def _salt(self, tenant_id: str, metric: str, start_ms: int) -> int:
        digest = hashlib.blake2b(
            f"{self._seed}\x00{tenant_id}\x00{metric}\x00{start_ms}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big")

    def _add(
        self, key: tuple[str, str], series: _Series, point: float | np.ndarray, at_ms: int
    ) -> None:
        start = at_ms - at_ms % self._window_ms
        if isinstance(point, np.ndarray):
            if self._dimension(series) not in (None, point.size):
                # Another embedding model: its vectors cannot be compared with the old ones.
                series.current = series.reference = None
                self._counts["resets"] += 1
            if series.current is None:
                series.current = _VectorWindow(start, start + self._window_ms, np.zeros(point.size))
            assert isinstance(series.current, _VectorWindow)
            series.current.add(point)
            return
        if series.current is None:
            series.current = _ScalarWindow(start, start + self._window_ms, self._salt(*key, start))
        assert isinstance(series.current, _ScalarWindow)
        series.current.add(point, self._settings.max_samples)

    @staticmethod
    def _dimension(series: _Series) -> int | None:
        for window in (series.current, series.reference):
            if isinstance(window, _VectorWindow):
                return int(window.total.size)
        return None

    def _close(self, key: tuple[str, str], series: _Series) -> list[DriftFinding]:
        window = series.current
        assert window is not None
        series.current = None
        series.horizon_ms = max(series.horizon_ms, window.end_ms)
        series.closed += 1
        self._counts["windows_closed"] += 1
        if window.count < self._settings.min_samples:
            series.skipped += 1
            self._counts["windows_skipped"] += 1
            return []
        if isinstance(window, _VectorWindow):
            window.last = None  # a closed window takes no more pairs
        reference = series.reference
        findings: list[DriftFinding] = []
        if reference is not None:
            self._counts["windows_compared"] += 1
            findings = self._compare(key, reference, window)
        if reference is None or self._settings.reference == "previous":
            series.reference = window
        return findings

    def _compare(
        self, key: tuple[str, str], reference: _Window, current: _Window
    ) -> list[DriftFinding]:
        thresholds = self._thresholds_of(key[0])
        common = {
            "tenant_id": key[0],
            "metric": key[1],
            "window_start_ms": current.start_ms,
            "window_end_ms": current.end_ms,
            "reference_count": reference.count,
            "current_count": current.count,
            "reference_start_ms": reference.start_ms,
            "reference_end_ms": reference.end_ms,
        }
        if isinstance(reference, _VectorWindow) and isinstance(current, _VectorWindow):
            return self._compare_vectors(reference, current, thresholds, common)
        assert isinstance(reference, _ScalarWindow) and isinstance(current, _ScalarWindow)
        means = {
            "reference_mean": reference.total / reference.count,
            "current_mean": current.total / current.count,
        }
        ref = np.array(reference.samples, dtype=np.float64)  # a copy: no buffer stays exported
        cur = np.array(current.samples, dtype=np.float64)
        findings = []
        edges = quantile_edges(ref, self._settings.bins)
        value = psi(bin_counts(ref, edges), bin_counts(cur, edges), pseudo_count=PSI_PSEUDO_COUNT)
        threshold = thresholds.psi
        if thresholds.psi_alpha is not None:
            floor = psi_noise_floor(edges.size + 1, ref.size, cur.size, thresholds.psi_alpha)
            threshold = max(threshold, floor)
        if value >= threshold:
            findings.append(self._found("psi", value, threshold, **common, **means))
        d, p_value = ks_two_sample(ref, cur)
        if p_value <= thresholds.ks_alpha:
            critical = ks_critical(ref.size, cur.size, thresholds.ks_alpha)
            findings.append(self._found("ks", d, critical, p_value=p_value, **common, **means))
        return findings

    def _compare_vectors(
        self,
        reference: _VectorWindow,
        current: _VectorWindow,
        thresholds: Thresholds,
        common: dict[str, Any],
    ) -> list[DriftFinding]:
        shift = centroid_shift(reference.moments(), current.moments())
        if shift is None:
            self._counts["undefined"] += 1
            return []
        threshold = max(thresholds.centroid, CENTROID_NOISE_Z * shift.std_error)
        if shift.distance < threshold:
            return []
        return [self._found("centroid", shift.distance, threshold, **common)]

    def _found(
        self, statistic: Statistic, value: float, threshold: float, **fields: Any
    ) -> DriftFinding:
        self._findings[statistic] += 1
        return DriftFinding(statistic=statistic, value=value, threshold=threshold, **fields)

    # -- anomalies -------------------------------------------------------------------------------

    def _new_ewma(self, tenant_id: str, state: dict[str, Any] | None = None) -> Ewma:
        z = self._thresholds_of(tenant_id).z
        params = {
            "alpha": self._settings.ewma_alpha,
            "warmup": self._settings.warmup,
            "clip_z": z,
            "min_std": LOG_MIN_STD,
        }
        return Ewma(**params) if state is None else Ewma.from_dict(state, **params)

    def _score(
        self, key: tuple[str, str], series: _Series, sample: DriftSample, value: float
    ) -> list[DriftFinding]:
        offset = LOG_OFFSET[sample.metric]
        if value + offset <= 0.0:
            return []  # a negative cost or latency: nothing to score on a log scale
        if series.ewma is None:
            series.ewma = self._new_ewma(key[0])
        ewma = series.ewma
        seen, centre = ewma.count, math.exp(ewma.mean) - offset
        z = ewma.update(math.log(value + offset))
        threshold = self._thresholds_of(key[0]).z
        if z is None or abs(z) < threshold:
            return []
        if sample.at_ms < series.quiet_until_ms:
            series.suppressed += 1
            self._counts["anomalies_suppressed"] += 1
            return []
        series.quiet_until_ms = sample.at_ms + self._cooldown_ms
        return [
            self._found(
                "ewma_z",
                z,
                threshold,
                tenant_id=key[0],
                metric=key[1],
                window_start_ms=sample.at_ms,
                window_end_ms=sample.at_ms,
                reference_count=seen,
                current_count=1,
                reference_mean=centre,
                current_mean=value,
            )
        ]

    # -- helpers ---------------------------------------------------------------------------------

    def _thresholds_of(self, tenant_id: str) -> Thresholds:
        thresholds = self._thresholds.get(tenant_id)
        if thresholds is None:
            thresholds = self._thresholds[tenant_id] = thresholds_for(self._settings, tenant_id)
        return thresholds

    def _window_from(
        self, tenant_id: str, metric: str, vector: bool, saved: dict[str, Any]
    ) -> _Window:
        start, end, count = int(saved["start"]), int(saved["end"]), int(saved["count"])
        if vector:
            last = saved["last"]
            return _VectorWindow(
                start,
                end,
                _decode(saved["total"]),
                count=count,
                sq=float(saved["sq"]),
                pair_sq=float(saved["pair_sq"]),
                pairs=int(saved["pairs"]),
                last=None if last is None else _decode(last),
            )
        samples = array("d", _decode(saved["samples"])[: self._settings.max_samples].tolist())
        return _ScalarWindow(
            start,
            end,
            self._salt(tenant_id, metric, start),
            count=count,
            total=float(saved["total"]),
            samples=samples,
        )
