"""Routing decision latency: `Router.route` over one alias of 100 deployments, per strategy.

    python bench/routing.py [--iterations 20000] [--seed 42]

The catalogue mixes prices, context windows (8k to 200k), capabilities, weights and priorities;
the health view has a latency EWMA for most deployments, none for a few (the "measure me first"
path of `latency`), and ~10% of breakers open (half of those past their cool-down, so they are
probes). The request needs tools and streaming with a ~3k-token prompt, which leaves roughly a
third of the alias capable, the realistic case where both filters and the ordering do work.

Each `route()` call is timed alone with `time.perf_counter_ns`, after a warm-up; the table shows
the median and 99th percentile per call and the decisions per second implied by the mean. One
core, one process; numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

from sluicegate.processors.health import HealthSnapshot
from sluicegate.processors.routing import RouteNeeds, Router
from sluicegate.settings import Capabilities, Deployment, ModelAlias

STRATEGIES = ("priority", "cost", "latency", "weighted", "capability")
DEPLOYMENTS = 100
NOW_MS = 1_700_000_000_000


def catalogue(rng: random.Random) -> tuple[dict[str, Deployment], list[str]]:
    deployments: dict[str, Deployment] = {}
    for i in range(DEPLOYMENTS):
        name = f"dep-{i:03d}"
        deployments[name] = Deployment(
            name=name,
            backend=rng.choice(["openai", "azure", "anthropic", "llamacpp"]),
            provider_model=f"model-{i}",
            input_usd_per_mtok=round(rng.uniform(0.05, 15.0), 3),
            output_usd_per_mtok=round(rng.uniform(0.2, 60.0), 3),
            context_window=rng.choice([8_192, 16_384, 32_768, 128_000, 200_000]),
            capabilities=Capabilities(
                tools=rng.random() < 0.6,
                json_mode=rng.random() < 0.5,
                vision=rng.random() < 0.3,
                streaming=rng.random() < 0.9,
            ),
            weight=rng.choice([0.0, 1.0, 2.0, 5.0]),
            priority=rng.randrange(10),
        )
    return deployments, list(deployments)


def health_view(rng: random.Random, names: list[str]) -> dict[str, HealthSnapshot]:
    health: dict[str, HealthSnapshot] = {}
    for name in names:
        roll = rng.random()
        if roll < 0.05:
            continue  # never observed: no snapshot at all
        if roll < 0.10:
            health[name] = HealthSnapshot(name, breaker="open", open_until_ms=NOW_MS + 30_000)
        elif roll < 0.15:
            health[name] = HealthSnapshot(
                name, breaker="open", open_until_ms=NOW_MS - 1, latency_ewma_ms=900.0
            )
        elif roll < 0.20:
            health[name] = HealthSnapshot(name)  # seen, but no successful call yet
        else:
            health[name] = HealthSnapshot(name, latency_ewma_ms=rng.uniform(80.0, 4_000.0))
    return health


def time_strategy(
    router: Router,
    needs: RouteNeeds,
    health: dict[str, HealthSnapshot],
    iterations: int,
) -> list[int]:
    route = router.route
    for _ in range(min(2_000, iterations)):  # warm-up (memoised capability filter, caches)
        route("bench", needs, health, NOW_MS)
    clock = time.perf_counter_ns
    samples = [0] * iterations
    for i in range(iterations):
        start = clock()
        route("bench", needs, health, NOW_MS)
        samples[i] = clock() - start
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="timed calls per strategy")
    parser.add_argument("--seed", type=int, default=42, help="seeds the catalogue and the rng")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    deployments, names = catalogue(rng)
    health = health_view(rng, names)
    needs = RouteNeeds(prompt_tokens=3_000, completion_tokens=512, tools=True, streaming=True)

    print(
        f"Router.route: 1 alias x {DEPLOYMENTS} deployments, {args.iterations:,} timed calls "
        f"per strategy, Python {platform.python_version()}, one core"
    )
    rows: list[tuple[str, float, float, float, int, int]] = []
    for strategy in STRATEGIES:
        alias = ModelAlias(name="bench", deployments=names, strategy=strategy)
        router = Router(deployments, {"bench": alias}, rng=random.Random(args.seed))
        decision = router.route("bench", needs, health, NOW_MS)
        samples = sorted(time_strategy(router, needs, health, args.iterations))
        p50 = samples[len(samples) // 2] / 1_000
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1_000
        per_s = 1e9 / statistics.fmean(samples)
        rows.append((strategy, p50, p99, per_s, len(decision.chain), len(decision.skipped)))

    print()
    print("| strategy | p50 µs | p99 µs | decisions/s | chain | skipped |")
    print("|---|---:|---:|---:|---:|---:|")
    for strategy, p50, p99, per_s, chain, skipped in rows:
        print(f"| {strategy} | {p50:.1f} | {p99:.1f} | {per_s:,.0f} | {chain} | {skipped} |")


if __name__ == "__main__":
    main()
