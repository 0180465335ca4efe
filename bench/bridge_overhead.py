"""Bridge overhead: the same zero-latency OpenAI-compatible upstream called (a) directly,
(b) through sluicegate (bridge + worker, every request journaled with acks=all) and (c) through
the LiteLLM proxy, under open-loop load at fixed offered rates and closed-loop load at fixed
concurrency, in one run.

    python -m bench.bridge_overhead                   # the full matrix (~15 minutes)
    python -m bench.bridge_overhead --quick           # a smoke run (~4 minutes)
    python -m bench.bridge_overhead --targets sluicegate --rates 150,500 --concurrency ''

Load comes from bench/loadgen (Go, standard library only), built on each run: open loop
schedules request i at t0 + i/rate and measures its latency from that intended time, so a
target that falls behind shows it as latency (no coordinated omission). Targets run one after
the other, never together; each gets a warm-up request that must succeed first. Everything
started here is stopped here, also on failure or Ctrl-C. Results: a table on stdout, JSON
under bench/results/ (gitignored), and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _report
from bench._bridge_report import render_docs, render_table
from bench._procs import CpuMeter, http_status
from bench._targets import (
    BENCH_HOME,
    REPO_ROOT,
    Target,
    broker_pid,
    litellm_version,
    new_master_key,
    probe,
    start_litellm,
    start_sluicegate,
    start_upstream,
)

TARGETS = ("upstream", "sluicegate", "litellm")
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hi in five words."}]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument(
        "--rates", type=ints, default=[50, 150, 500, 1000], help="open-loop offered rates, req/s"
    )
    parser.add_argument(
        "--concurrency", type=ints, default=[1, 16, 64], help="closed-loop concurrency levels"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="open-loop seconds per rate")
    parser.add_argument(
        "--closed-duration", type=float, default=15.0, help="closed-loop seconds per level"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per cell")
    parser.add_argument("--timeout", type=float, default=15.0, help="per-request timeout, s")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=4000,
        help="open loop: due requests beyond this many in flight are shed",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 s per open-loop rate, 3 s per level, 1 s warm-up",
    )
    parser.add_argument("--kafka-bootstrap", default="127.0.0.1:9092")
    parser.add_argument(
        "--inference-concurrency",
        type=int,
        default=32,
        help="sluicegate worker's inference_concurrency",
    )
    parser.add_argument(
        "--sg-workers", type=int, default=1, help="sluicegate worker processes (one consumer group)"
    )
    parser.add_argument("--litellm-version", default="1.106.2")
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {','.join(TARGETS)}")
    if args.quick:
        args.duration, args.closed_duration, args.warmup = 4.0, 3.0, 1.0
    return args


def build_loadgen() -> Path:
    binary = BENCH_HOME / "bin" / "loadgen"
    binary.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["go", "build", "-buildvcs=false", "-o", str(binary), "."],
        cwd=REPO_ROOT / "bench" / "loadgen",
        check=True,
        timeout=300,
    )
    return binary


class Runner:
    """Runs the matrix against one target at a time."""

    def __init__(
        self,
        args: argparse.Namespace,
        loadgen: Path,
        run_dir: Path,
        upstream: Target,
        headers: dict[str, str],
    ) -> None:
        self.args = args
        self.loadgen = loadgen
        self.run_dir = run_dir
        self.upstream = upstream
        self.headers = headers
        self.body = json.dumps(BODY).encode()
        self.body_file = run_dir / "body.json"
        self.body_file.write_bytes(self.body)

    def warm_up(self, target: Target) -> float:
        """One request must succeed (retrying up to 60 s); then the median of 20 sequential ones."""
        deadline = time.monotonic() + 60
        while probe(target.url, self.body, self.headers) is None:
            target.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name}: no successful warm-up request in 60 s")
            time.sleep(1)
        samples = [probe(target.url, self.body, self.headers) for _ in range(20)]
        ok = [s for s in samples if s is not None]
        if not ok:
            raise RuntimeError(f"{target.name}: warm-up requests fail")
        return statistics.median(ok)

    def settle(self, target: Target, baseline_s: float) -> float:
        """Wait (up to 60 s) until one request is about as fast as at warm-up: queues drained."""
        start = time.monotonic()
        limit = max(0.05, 5 * baseline_s)
        streak = 0
        while time.monotonic() - start < 60:
            took = probe(target.url, self.body, self.headers)
            streak = streak + 1 if took is not None and took < limit else 0
            if streak >= 3:
                break
            time.sleep(0.3)
        return round(time.monotonic() - start, 1)

    def cell(self, target: Target, mode: str, level: int) -> dict[str, Any]:
        args = self.args
        duration = args.duration if mode == "open" else args.closed_duration
        argv = [
            str(self.loadgen),
            "-url",
            target.url,
            "-body-file",
            str(self.body_file),
            "-mode",
            mode,
            f"-duration={duration}s",
            f"-warmup={args.warmup}s",
            f"-timeout={args.timeout}s",
            f"-max-inflight={args.max_inflight}",
        ]
        argv += ["-rate", str(level)] if mode == "open" else ["-concurrency", str(level)]
        for name, value in self.headers.items():
            argv += ["-H", f"{name}: {value}"]
        http_status(
            self.upstream.url.replace("/v1/chat/completions", "/__fake__/reset"),
            method="POST",
            body=b"",
        )  # the fake keeps every body it was sent
        if "kafka" in target.extra_pids:  # the shared broker may have been restarted
            target.extra_pids["kafka"] = broker_pid()
        roles = {**target.roles(), **(self.upstream.roles() if target is not self.upstream else {})}
        threads_of = {r: s.pid for r, s in target.services.items() if r in ("bridge", "worker")}
        meter = CpuMeter(roles, threads_of)
        meter.start()
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=args.warmup + duration + args.timeout + 60
        )
        cpu = meter.stop()
        if out.returncode != 0:
            raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr[-2000:]}")
        target.check()
        return {
            "target": target.name,
            "mode": mode,
            "level": level,
            "result": json.loads(out.stdout),
            "cpu": cpu,
        }

    def matrix(self, target: Target, on_cell: Callable[[dict[str, Any]], None]) -> float:
        """Runs every cell, handing each to `on_cell`; returns the warm-up median, seconds."""
        baseline = self.warm_up(target)
        print(f"[{target.name}] warm-up ok, sequential median {baseline * 1000:.1f} ms", flush=True)
        plan = [("closed", c) for c in self.args.concurrency]
        plan += [("open", r) for r in self.args.rates]
        for mode, level in plan:
            cell = self.cell(target, mode, level)
            cell["settle_s"] = self.settle(target, baseline)
            on_cell(cell)
            r = cell["result"]
            p50, p99 = (r["latency_ms"].get(p, float("nan")) for p in ("p50", "p99"))
            print(
                f"[{target.name}] {mode:>6} {level:>5}: {r['achieved_rps']:8.1f} req/s  "
                f"p50 {p50:8.2f}  p99 {p99:8.2f} ms  errors {r['errors']}  "
                f"cpu {cell['cpu']['roles_pct']}",
                flush=True,
            )
        return baseline


def run_targets(
    args: argparse.Namespace, loadgen: Path, run_dir: Path, run_id: str, report: dict[str, Any]
) -> None:
    """The matrix against each target in turn; each is stopped before the next one starts."""
    headers = {"Authorization": f"Bearer {new_master_key()}"}  # LiteLLM wants a key; all get it
    upstream = start_upstream(run_dir)
    try:
        runner = Runner(args, loadgen, run_dir, upstream, headers)
        upstream_base = upstream.url.removesuffix("/chat/completions")
        for name in args.targets:
            target = upstream
            if name == "sluicegate":
                target = start_sluicegate(
                    upstream_base=upstream_base,
                    bootstrap=args.kafka_bootstrap,
                    log_dir=run_dir,
                    run_id=run_id,
                    inference_concurrency=args.inference_concurrency,
                    request_timeout_s=max(1.0, args.timeout - 2),
                    workers=args.sg_workers,
                )
            elif name == "litellm":
                target = start_litellm(
                    upstream_base=upstream_base,
                    log_dir=run_dir,
                    version=args.litellm_version,
                    workers=args.litellm_workers,
                    master_key=headers["Authorization"].removeprefix("Bearer "),
                )
            try:
                baseline = runner.matrix(target, report["cells"].append)
                report["warmup_latency_ms"][name] = round(baseline * 1000, 2)
            finally:
                if target is not upstream:
                    target.stop()
    finally:
        upstream.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop what was started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = _report.RESULTS / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{stamp.replace('-', '')}{uuid.uuid4().hex[:4]}"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench.bridge_overhead", *(argv or sys.argv[1:])]),
        "machine": _report.machine(),
        "config": {k: v for k, v in vars(args).items()},
        "body": BODY,
        "cells": [],
        "warmup_latency_ms": {},
    }
    print(f"run {run_id}: logs and results in {run_dir}", flush=True)
    loadgen = build_loadgen()
    try:
        run_targets(args, loadgen, run_dir, run_id, report)
    except BaseException as exc:
        report["failed"] = repr(exc)
        raise
    finally:  # what was measured is kept, even when a later target failed
        litellm = {"litellm": litellm_version() or "?"} if "litellm" in args.targets else {}
        report["versions"] = _report.versions(litellm)
        report["duration_s"] = round(time.time() - started, 1)
        (run_dir / "bridge_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render_table(report))
    print(f"\nfull run took {report['duration_s']:.0f} s; JSON: {run_dir / 'bridge_overhead.json'}")
    if not args.no_docs:
        _report.replace_section("bridge-overhead", render_docs(report))
        print(f"wrote {_report.DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
