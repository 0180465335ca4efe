"""Replay and eval-run throughput through the live pipeline, zero-latency upstream.

    python -m bench.improve [--requests 400] [--in-flight 8 32]

1. Records live traffic: `--requests` chat requests through the bridge (16 at a time).
2. Replays that slice (`EvalRunner.run_replay`, exact matcher against the recorded answers) at
   each `--in-flight` bound: requests re-published and answered per second, end to end.
3. Runs an eval dataset of the same size (contains + regex matchers) at each bound.

Prints one table; every replayed answer must equal its recorded one (the upstream is
deterministic), which the table reports as `identical`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from bench._targets import start_sluicegate, start_upstream


def record(url: str, headers: dict[str, str], n: int) -> float:
    def one(i: int) -> None:
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": f"question number {i}"}],
            "temperature": 0,
        }
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={**headers, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()

    from sluicegate.cli_kafka import publish_events
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.processors.eval_datasets import parse_dataset
    from sluicegate.processors.eval_run import RunSpec, new_run_id
    from sluicegate.processors.replay import ReplayOverrides, ReplaySlice
    from sluicegate.serving.eval_runner import EvalRunner
    from sluicegate.settings import EvalSettings

    logs = Path(tempfile.mkdtemp(prefix="sgbench-improve-"))
    upstream = start_upstream(logs)
    target = None
    try:
        base = upstream.url.rsplit("/v1/", 1)[0] + "/v1"
        target = start_sluicegate(
            upstream_base=base,
            bootstrap=args.bootstrap,
            log_dir=logs,
            run_id=uuid.uuid4().hex[:8],
            inference_concurrency=32,
            request_timeout_s=60,
        )
        settings = target.settings
        since_ms = int(time.time() * 1000) - 1
        seconds = record(target.url, target.headers, args.requests)
        print(f"recorded {args.requests} live requests in {seconds:.1f} s")
        until_ms = int(time.time() * 1000) + 1
        serde = build_serde(settings)
        rows = []
        dataset = parse_dataset(
            {
                "name": "bench",
                "matchers": [
                    {"type": "contains", "value": "question"},
                    {"type": "regex", "pattern": r"\d+$"},
                ],
                "cases": [
                    {
                        "id": f"c{i}",
                        "input": {"messages": [{"role": "user", "content": f"case {i} question"}]},
                    }
                    for i in range(args.requests)
                ],
            }
        )
        for in_flight in args.in_flight:
            tuned = settings.model_copy(
                update={"evals": EvalSettings(max_in_flight=in_flight, case_timeout_s=60)}
            )
            runner = EvalRunner(tuned, serde, publish=lambda t, e, s=tuned: publish_events(s, t, e))
            spec = RunSpec(new_run_id("replay"), "bench", "bench", "replay")
            started = time.perf_counter()
            report = runner.run_replay(
                ReplaySlice(since_ms=since_ms, until_ms=until_ms, tenant_id="bench"),
                ReplayOverrides(),
                spec,
                matchers=[{"type": "exact"}],
            )
            elapsed = time.perf_counter() - started
            identical = sum(1 for r in report.results if r.passed)
            rows.append(("replay", in_flight, len(report.answers), elapsed, identical))
            spec = RunSpec(new_run_id("eval"), "bench", "bench", dataset.name)
            started = time.perf_counter()
            report = runner.run_dataset(dataset, spec)
            elapsed = time.perf_counter() - started
            passed = sum(1 for r in report.results if r.passed)
            rows.append(("eval run", in_flight, len(report.answers), elapsed, passed))
        print(f"\nmachine: {platform.machine()}, {platform.python_version()}")
        print("| run | in flight | requests | seconds | requests/s | passed results |")
        print("|---|---:|---:|---:|---:|---:|")
        for kind, in_flight, n, elapsed, passed in rows:
            print(f"| {kind} | {in_flight} | {n} | {elapsed:.1f} | {n / elapsed:.0f} | {passed} |")
    finally:
        if target is not None:
            target.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
