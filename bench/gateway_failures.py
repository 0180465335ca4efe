"""Failing upstream: end-to-end latency of the successful requests and the share of requests
that still succeed when the preferred upstream fails 20% of the time, for sluicegate next to the
LiteLLM proxy configured with the same retry and fallback, in one run.

    python -m bench.gateway_failures                       # ~8 minutes, writes docs/benchmarks.md
    python -m bench.gateway_failures --quick --no-docs     # a smoke run
    python -m bench.gateway_failures --targets direct,sluicegate --rates 50

Two zero-latency fake upstreams on loopback: `primary` answers a seeded random share of chat
requests with 500, `backup` never fails. Targets, one after the other: the primary called
directly (nothing retries), sluicegate (alias gpt-bench → [primary, backup], one retry with a
small full-jitter backoff, then the fallback; once with a breaker that never opens at these
rates and once with the default breaker) and the LiteLLM proxy (two model groups with
`fallbacks`, `num_retries: 1`; once with the same retry sleep as sluicegate, once with its
default). Load is open loop from bench/loadgen (latency from the intended send time). Every
process started here is stopped here, also on failure or Ctrl-C; sluicegate's topics and
consumer groups are removed.
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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import _report
from bench._failures_report import journal_counts, now_iso, render_table, write_docs
from bench._failures_targets import (
    ALIAS,
    Resilience,
    fake_base,
    fake_stats,
    litellm_backoff_env,
    start_fake,
    start_litellm_failover,
    start_sluicegate_failover,
)
from bench._procs import CpuMeter, ServiceError
from bench._targets import Target, broker_pid, litellm_version, new_master_key, probe
from bench.bridge_overhead import build_loadgen

TARGETS = ("direct", "sluicegate", "sluicegate-breaker", "litellm", "litellm-default-backoff")
BODY = {"model": ALIAS, "messages": [{"role": "user", "content": "Say hi in five words."}]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated subset of {TARGETS}"
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [int(v) for v in text.split(",") if v.strip()],
        default=[50, 150],
        help="open-loop offered rates, req/s",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per rate")
    parser.add_argument("--timeout", type=float, default=15.0, help="per-request timeout, s")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="primary's failure share")
    parser.add_argument("--seed", type=int, default=7, help="seed of the primary's failures")
    parser.add_argument("--max-retries", type=int, default=1)
    parser.add_argument("--backoff-base", type=float, default=0.01, help="seconds")
    parser.add_argument("--backoff-max", type=float, default=0.1, help="seconds")
    parser.add_argument(
        "--breaker-failures",
        type=int,
        default=10_000,
        help="sluicegate's breaker threshold in the `sluicegate` target (default breaker: 5)",
    )
    parser.add_argument("--quick", action="store_true", help="4 s per rate, 1 s warm-up")
    parser.add_argument("--kafka-bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--inference-concurrency", type=int, default=32)
    parser.add_argument("--litellm-version", default="1.106.2")
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {','.join(TARGETS)}")
    if not 0.0 <= args.fail_rate <= 1.0:
        parser.error("--fail-rate must be within [0, 1]")
    if args.quick:
        args.duration, args.warmup = 4.0, 1.0
    return args


class Bench:
    """Runs every rate against one target at a time, with both fakes behind it."""

    def __init__(
        self,
        args: argparse.Namespace,
        loadgen: Path,
        run_dir: Path,
        fakes: dict[str, Target],
        headers: dict[str, str],
    ) -> None:
        self.args = args
        self.loadgen = loadgen
        self.fakes = fakes
        self.headers = headers
        self.body = json.dumps(BODY).encode()
        self.body_file = run_dir / "body.json"
        self.body_file.write_bytes(self.body)

    def warm_up(self, target: Target) -> float:
        """One request must succeed (retrying up to 60 s); then the median of 20 sequential
        successes (the direct target fails some of them)."""
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
        """Wait (up to 60 s) until three requests in a row are about as fast as at warm-up."""
        start = time.monotonic()
        limit = max(0.05, 5 * baseline_s)
        streak = 0
        while time.monotonic() - start < 60 and streak < 3:
            took = probe(target.url, self.body, self.headers)
            streak = streak + 1 if took is not None and took < limit else 0
            time.sleep(0.2)
        return round(time.monotonic() - start, 1)

    def cell(self, target: Target, rate: int) -> dict[str, Any]:
        args = self.args
        argv = [str(self.loadgen), "-url", target.url, "-body-file", str(self.body_file)]
        argv += ["-mode", "open", "-rate", str(rate), f"-duration={args.duration}s"]
        argv += [f"-warmup={args.warmup}s", f"-timeout={args.timeout}s"]
        for name, value in self.headers.items():
            argv += ["-H", f"{name}: {value}"]
        for fake in self.fakes.values():
            fake_stats(fake, reset=True)
        if "kafka" in target.extra_pids:  # the shared broker may have been restarted
            target.extra_pids["kafka"] = broker_pid()
        gateway = list(target.roles()) if target.name != "direct" else []
        roles = {**target.roles()}
        for fake in self.fakes.values():
            roles.update(fake.roles())
        meter = CpuMeter(roles, {})
        t0 = time.time()
        meter.start()
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=args.warmup + args.duration + args.timeout + 60,
        )
        cpu = meter.stop()
        t1 = time.time()
        if out.returncode != 0:
            raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr[-2000:]}")
        calls = {name: fake_stats(fake, reset=True) for name, fake in self.fakes.items()}
        target.check()
        result = json.loads(out.stdout)
        cpu["gateway_pct"] = round(sum(cpu["roles_pct"].get(r, 0.0) for r in gateway), 1)
        sent = result["scheduled"] + result["warmup_ok"] + result["warmup_errors"]
        sent -= result["error_kinds"].get("shed", 0)
        return {
            "target": target.name,
            "rate": rate,
            "window": [t0, t1],
            "result": result,
            "requests_sent": sent,
            "upstream_calls": calls,
            "cpu": cpu,
        }

    def run(self, target: Target, order: int, report: dict[str, Any]) -> list[dict[str, Any]]:
        baseline = self.warm_up(target)
        report["warmup_latency_ms"][target.name] = round(baseline * 1000, 2)
        print(f"[{target.name}] warm-up ok, sequential median {baseline * 1000:.1f} ms", flush=True)
        cells = []
        for rate in self.args.rates:
            cell = self.cell(target, rate)
            cell["order"] = order
            cell["settle_s"] = self.settle(target, baseline)
            report["cells"].append(cell)
            cells.append(cell)
            r, calls = cell["result"], cell["upstream_calls"]
            lat = r.get("latency_ms", {})
            print(
                f"[{target.name}] {rate:>5} req/s: ok {r['ok']}/{r['scheduled']} "
                f"({100 * r['ok'] / max(1, r['scheduled']):.2f}%)  {r['achieved_rps']:7.1f} req/s  "
                f"p50 {lat.get('p50', float('nan')):8.2f}  p99 {lat.get('p99', float('nan')):8.2f}"
                f" ms  errors {r['error_kinds']}  primary {calls['primary']}  backup "
                f"{calls['backup']}  gateway cpu {cell['cpu']['gateway_pct']}%",
                flush=True,
            )
        return cells


def start_sluicegate_with_retry(**kwargs: Any) -> tuple[Target, dict[str, Any]]:
    """`start_sluicegate_failover`, once more on a fresh prefix if a process dies at start-up
    (a worker can die on NOT_LEADER_FOR_PARTITION right after its topics were created)."""
    try:
        return start_sluicegate_failover(**kwargs)
    except ServiceError as exc:
        print(f"[{kwargs['name']}] start-up failed, retrying once: {str(exc)[-300:]}", flush=True)
        time.sleep(3)
        return start_sluicegate_failover(**{**kwargs, "run_id": f"{kwargs['run_id']}r"})


def run_targets(
    args: argparse.Namespace, loadgen: Path, run_dir: Path, run_id: str, report: dict[str, Any]
) -> None:
    resilience = Resilience(
        max_retries=args.max_retries,
        backoff_base_s=args.backoff_base,
        backoff_max_s=args.backoff_max,
        breaker_failures=args.breaker_failures,
    )
    report["resilience"] = asdict(resilience)
    default_breaker = replace(
        resilience,
        breaker_failures=5,  # ResilienceSettings' defaults
        breaker_window_s=30.0,
        breaker_cooldown_s=30.0,
    )
    master_key = new_master_key()
    headers = {"Authorization": f"Bearer {master_key}"}  # LiteLLM wants a key; all get it
    fakes: dict[str, Target] = {}
    try:
        fakes["primary"] = start_fake("primary", run_dir, fail_rate=args.fail_rate, seed=args.seed)
        fakes["backup"] = start_fake("backup", run_dir)
        bench = Bench(args, loadgen, run_dir, fakes, headers)
        primary, backup = fake_base(fakes["primary"]), fake_base(fakes["backup"])
        for order, name in enumerate(args.targets):
            sg_prefix = None
            if name == "direct":
                target = Target("direct", fakes["primary"].url, {})
            elif name.startswith("sluicegate"):
                target, sg_settings = start_sluicegate_with_retry(
                    name=name,
                    primary_base=primary,
                    backup_base=backup,
                    resilience=resilience if name == "sluicegate" else default_breaker,
                    bootstrap=args.kafka_bootstrap,
                    log_dir=run_dir,
                    run_id=f"{run_id}{order}",
                    inference_concurrency=args.inference_concurrency,
                    request_timeout_s=max(1.0, args.timeout - 2),
                )
                sg_prefix = sg_settings["topic_prefix"]
                report.setdefault("sluicegate_settings", {})[name] = sg_settings
                report["sluicegate_settings"]["inference_concurrency"] = args.inference_concurrency
            else:
                target, lite_settings = start_litellm_failover(
                    name=name,
                    primary_base=primary,
                    backup_base=backup,
                    num_retries=args.max_retries,
                    backoff_env=litellm_backoff_env(resilience if name == "litellm" else None),
                    log_dir=run_dir,
                    version=args.litellm_version,
                    workers=args.litellm_workers,
                    master_key=master_key,
                )
                report.setdefault("litellm_settings", {"workers": args.litellm_workers})[name] = (
                    lite_settings
                )
            try:
                cells = bench.run(target, order, report)
                if sg_prefix is not None:
                    time.sleep(2)  # the last records of the last cell
                    windows = {c["rate"]: (c["window"][0], c["window"][1]) for c in cells}
                    counts = journal_counts(args.kafka_bootstrap, sg_prefix, windows)
                    for cell in cells:
                        cell["journal"] = counts[cell["rate"]]
                        print(f"[{name}] {cell['rate']:>5} req/s journal: {cell['journal']}")
            finally:
                target.stop()
    finally:
        for fake in fakes.values():
            fake.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop what was started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = _report.RESULTS / f"{stamp}-failures"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"f{stamp.replace('-', '')}{uuid.uuid4().hex[:4]}"
    report: dict[str, Any] = {
        "started": now_iso(),
        "stamp": run_dir.name,
        "command": " ".join(["python -m bench.gateway_failures", *(argv or sys.argv[1:])]),
        "machine": _report.machine(),
        "config": dict(vars(args)),
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
        uses_litellm = any(t.startswith("litellm") for t in args.targets)
        litellm = {"litellm": litellm_version() or "?"} if uses_litellm else {}
        report["versions"] = _report.versions(litellm)
        report["duration_s"] = round(time.time() - started, 1)
        (run_dir / "gateway_failures.json").write_text(
            json.dumps(report, indent=2, default=str) + "\n"
        )
    print()
    print(render_table(report))
    print(f"\nfull run took {report['duration_s']:.0f} s; JSON: {run_dir}/gateway_failures.json")
    if not args.no_docs:
        write_docs(report)
        print(f"wrote {_report.DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
