"""Ray Serve replicas vs the plain inference worker: requests/s and added latency through the
whole gateway (bridge -> Faust worker -> inference -> zero-latency loopback upstream) when the
inference stage is (a) `sluicegate serve` (Ray Serve replicas, serving/ray_serve.py) or (b)
`sluicegate inference` processes in one consumer group, at 1 and 2 replicas/processes.

    python -m bench.ray_serve                              # the full matrix (~9-10 minutes)
    python -m bench.ray_serve --quick                      # a smoke run (~4 minutes)
    python -m bench.ray_serve --variants ray --replicas 2 --rates ''

Everything but the inference stage is bench/_targets.py's pipeline, on a fresh topic prefix per
variant: (b) is `start_sluicegate` plus, for 2, a second `sluicegate inference` in its group;
(a) starts the same Faust worker and bridge and, instead of the inference worker, `sluicegate
serve` on a local Ray node of its own (RAY_TMPDIR per run, fixed pool size, autoscale off).
Load is bench/bridge_overhead.py's Runner (the Go load generator: closed loop at fixed
concurrency, open loop at fixed rates measured from the intended send time). Variants run one
after the other, never together; everything started here is stopped here, Ray's processes
included (by pid, never `ray stop`, which would also end other people's Ray nodes). Results: a
markdown table on stdout and JSON under bench/results/ (gitignored); docs are written by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _report
from bench._bridge_report import queue_state
from bench._procs import CpuMeter, Service, _stat_fields, wait_http
from bench._targets import (
    REPO_ROOT,
    Target,
    _wait_for_group,
    bench_settings,
    broker_pid,
    delete_kafka_state,
    ensure_broker,
    new_master_key,
    register_bench_key,
    start_sluicegate,
    start_upstream,
)
from bench.bridge_overhead import Runner, build_loadgen

CLI = [sys.executable, "-m", "sluicegate.cli"]
POOL = "default"  # the pool of the bench catalogue's only deployment
VARIANTS = ("plain", "ray")
SERVE_STOP_S = 60.0  # SIGTERM to SIGKILL for `sluicegate serve`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="plain,ray or one of them")
    parser.add_argument("--replicas", type=ints, default=[1, 2], help="replicas / processes")
    parser.add_argument("--concurrency", type=ints, default=[1, 16], help="closed-loop levels")
    parser.add_argument("--rates", type=ints, default=[50, 150], help="open-loop rates, req/s")
    parser.add_argument("--duration", type=float, default=20.0, help="open-loop seconds per rate")
    parser.add_argument(
        "--closed-duration", type=float, default=20.0, help="closed-loop seconds per level"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per cell")
    parser.add_argument("--timeout", type=float, default=15.0, help="per-request timeout, s")
    parser.add_argument("--max-inflight", type=int, default=4000)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU to measure")
    parser.add_argument(
        "--inference-concurrency", type=int, default=32, help="tasks at once per replica/process"
    )
    parser.add_argument(
        "--replica-cpus", type=float, default=0.5, help="Ray num_cpus reserved per replica"
    )
    parser.add_argument("--kafka-bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s cells, 1 s warm-up")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(args.variants) - set(VARIANTS):
        parser.error(f"variants are {','.join(VARIANTS)}")
    if args.quick:
        args.duration, args.closed_duration, args.warmup, args.idle = 3.0, 3.0, 1.0, 2.0
    return args


# -- processes ------------------------------------------------------------------------------


def descendants(root: int) -> set[int]:
    """`root` and every live process below it (by parent pid, whatever their process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat_fields(entry / "stat")
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry.name))  # field 4: ppid
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found and Path(f"/proc/{pid}").exists():
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def rss_mib(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, StopIteration):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            total_kb += int(next(s for s in status if s.startswith("VmRSS:")).split()[1])
    return round(total_kb / 1024, 1)


@dataclass
class RayTarget(Target):
    """The pipeline with `sluicegate serve` as its inference stage. Its CPU is split into the
    replicas (`inference`, the actors running InferenceWorker) and everything else Ray runs for
    them (`ray`: the serve driver, GCS, raylet, Serve controller, idle workers, agents)."""

    seen: set[int] = field(default_factory=set)  # every pid of the serve tree: stragglers

    def roles(self) -> dict[str, list[int]]:
        roles = super().roles()
        roles.pop("serve", None)
        serve = self.services.get("serve")
        tree = descendants(serve.pid) if serve is not None and serve.alive() else set()
        self.seen |= tree
        replicas = sorted(p for p in tree if "ServeReplica" in cmdline(p))
        roles["inference"] = replicas
        roles["ray"] = sorted(tree - set(replicas))
        return roles

    def stop(self) -> None:
        """`sluicegate serve` first: SIGTERM to its driver alone, as a terminal's Ctrl-C would
        reach it (Ray blocks SIGINT in its own processes; a SIGTERM to the whole group would
        end the Ray node under the driver while it removes its pool, and it would hang). Then
        the rest as usual."""
        serve = self.services.get("serve")
        if serve is not None and serve.process is not None and serve.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(serve.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                serve.process.wait(SERVE_STOP_S)
            serve.stop()  # the group's stragglers, if any
        super().stop()


def kill_pids(pids: set[int]) -> list[int]:
    """SIGKILL those of `pids` still alive that are still Ray's (a pid may have been reused)."""
    killed = []
    for pid in pids:
        line = cmdline(pid)
        if any(mark in line for mark in ("ray::", "/ray/", "sluicegate.cli serve")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def start_plain(replicas: int, *, bootstrap: str, log_dir: Path, **common: Any) -> Target:
    """start_sluicegate's pipeline, plus `replicas - 1` more inference processes in its group."""
    target = start_sluicegate(bootstrap=bootstrap, log_dir=log_dir, **common)
    target.name = f"plain-{replicas}"
    try:
        env = {**os.environ, "BENCH_KEY": "sk-bench", **target.settings.to_env()}
        group = [target.services["inference"]]
        for i in range(2, replicas + 1):
            name = f"inference{i}"
            service = Service(
                name, [*CLI, "inference"], log_dir / f"{name}.log", env=env, cwd=REPO_ROOT
            )
            target.services[name] = service.start()
            group.append(service)
        if len(group) > 1:
            app_id = target.settings.worker.app_id
            _wait_for_group(bootstrap, f"{app_id}-inference", group, timeout_s=120)
    except BaseException:
        target.stop()
        raise
    return target


def start_ray(
    replicas: int,
    *,
    upstream_base: str,
    bootstrap: str,
    log_dir: Path,
    run_id: str,
    inference_concurrency: int,
    request_timeout_s: float,
    replica_cpus: float,
) -> RayTarget:
    """The Faust worker and bridge of start_sluicegate, with `sluicegate serve` in place of the
    inference worker: a local Ray node (its own RAY_TMPDIR) and `replicas` fixed replicas."""
    from sluicegate.serving.ray_serve import pool_group
    from sluicegate.settings import PoolServing, RayServeSettings

    ensure_broker(bootstrap)
    data_dir = Path(tempfile.mkdtemp(prefix=f"sgbench-{run_id}-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="sgray", dir="/tmp"))  # short: Ray's sockets live here
    # The Settings start_sluicegate builds, plus the `ray` section.
    settings = bench_settings(
        upstream_base=upstream_base,
        bootstrap=bootstrap,
        run_id=run_id,
        inference_concurrency=inference_concurrency,
        request_timeout_s=request_timeout_s,
        data_dir=data_dir,
    ).model_copy(
        update={
            "ray": RayServeSettings(
                graceful_shutdown_timeout_s=5.0,  # bounded teardown; no traffic is left by then
                pools={
                    POOL: PoolServing(autoscale=False, replicas=replicas, num_cpus=replica_cpus)
                },
            )
        }
    )
    env = {**os.environ, "BENCH_KEY": "sk-bench", "RAY_TMPDIR": str(ray_tmp), **settings.to_env()}
    url = f"http://127.0.0.1:{settings.bridge.port}"
    target = RayTarget(
        f"ray-{replicas}",
        f"{url}/v1/chat/completions",
        {},
        extra_pids={"kafka": broker_pid()},
        headers={"Authorization": f"Bearer {register_bench_key(settings)}"},
        settings=settings,
    )
    target.cleanup.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
    target.cleanup.append(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    target.cleanup.append(lambda: _delete_group(bootstrap, pool_group(settings, POOL)))
    target.cleanup.append(lambda: delete_kafka_state(settings))
    target.cleanup.append(lambda: _report_stragglers(target.seen))
    try:
        worker = Service("worker", [*CLI, "worker"], log_dir / "worker.log", env=env, cwd=REPO_ROOT)
        target.services["worker"] = worker.start()
        serve = Service("serve", [*CLI, "serve"], log_dir / "serve.log", env=env, cwd=REPO_ROOT)
        target.services["serve"] = serve.start()
        _wait_for_group(bootstrap, settings.worker.app_id, [worker], timeout_s=120)
        # one Service (the serve driver) behind `replicas` members of the pool's group
        _wait_for_group(bootstrap, pool_group(settings, POOL), [serve] * replicas, timeout_s=180)
        target.roles()  # note the serve tree's pids now, for the stragglers' cleanup
        bridge = Service("bridge", [*CLI, "bridge"], log_dir / "bridge.log", env=env, cwd=REPO_ROOT)
        target.services = {"bridge": bridge.start(), **target.services}
        wait_http(f"{url}/readyz", bridge, timeout_s=60)
    except BaseException:
        target.stop()
        raise
    return target


def _delete_group(bootstrap: str, group: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 20  # a member killed mid-session holds the group that long
    while True:
        try:
            for future in admin.delete_consumer_groups([group]).values():
                future.result(10)
            return
        except Exception as exc:
            if "GROUP_ID_NOT_FOUND" in str(exc) or time.monotonic() > deadline:
                return  # never committed: no group; or give up, bounded
            time.sleep(1)


def _report_stragglers(seen: set[int]) -> None:
    killed = kill_pids(seen)
    if killed:
        print(f"  killed {len(killed)} Ray process(es) left after serve: {killed}", file=sys.stderr)


# -- the run --------------------------------------------------------------------------------


def idle_profile(target: Target, seconds: float) -> dict[str, Any]:
    """CPU per role with no traffic, and the resident memory of the inference stage."""
    meter = CpuMeter(target.roles(), {})
    meter.start()
    time.sleep(seconds)
    cpu = meter.stop()
    roles = target.roles()
    serving = [*roles.get("inference", []), *roles.get("ray", [])]
    return {"cpu": cpu, "serving_rss_mib": rss_mib(serving), "serving_processes": len(serving)}


def run(args: argparse.Namespace, run_dir: Path, run_id: str, report: dict[str, Any]) -> None:
    loadgen = build_loadgen()
    headers = {"Authorization": f"Bearer {new_master_key()}"}
    upstream = start_upstream(run_dir)
    try:
        runner = Runner(args, loadgen, run_dir, upstream, headers)
        common = {
            "upstream_base": upstream.url.removesuffix("/chat/completions"),
            "bootstrap": args.kafka_bootstrap,
            "inference_concurrency": args.inference_concurrency,
            "request_timeout_s": max(1.0, args.timeout - 2),
        }
        for replicas in args.replicas:
            for variant in args.variants:
                name = f"{variant}-{replicas}"
                log_dir = run_dir / name
                tag = f"{run_id}{variant[0]}{replicas}"
                print(f"[{name}] starting ...", flush=True)
                t0 = time.monotonic()
                if variant == "plain":
                    target = start_plain(replicas, log_dir=log_dir, run_id=tag, **common)
                else:
                    target = start_ray(
                        replicas,
                        log_dir=log_dir,
                        run_id=tag,
                        replica_cpus=args.replica_cpus,
                        **common,
                    )
                info: dict[str, Any] = {"startup_s": round(time.monotonic() - t0, 1)}
                try:
                    info["idle"] = idle_profile(target, args.idle)
                    print(
                        f"[{name}] ready in {info['startup_s']} s; idle cpu "
                        f"{info['idle']['cpu']['roles_pct']}, inference stage "
                        f"{info['idle']['serving_rss_mib']} MiB RSS",
                        flush=True,
                    )
                    baseline = runner.matrix(target, report["cells"].append)
                    info["warmup_median_ms"] = round(baseline * 1000, 2)
                finally:
                    t1 = time.monotonic()
                    target.stop()
                    info["stop_s"] = round(time.monotonic() - t1, 1)
                    report["variants"][name] = info
    finally:
        upstream.stop()


# -- the table --------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "—" if value is None else (f"{value:.1f}" if value < 100 else f"{value:,.0f}")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _stage(variant: str, replicas: str) -> str:
    return (
        f"Ray Serve, {replicas} replica(s)"
        if variant == "ray"
        else f"plain, {replicas} process(es)"
    )


def render(report: dict[str, Any]) -> str:
    header = [
        "load",
        "inference stage",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "Δp50 vs plain",
        "errors",
        "inference CPU %",
        "Ray rest CPU %",
        "machine CPU %",
        "other CPU %",
    ]
    cells = report["cells"]
    by_key = {(c["target"], c["mode"], c["level"]): c for c in cells}
    order = {"plain": 0, "ray": 1}
    rows = []
    for cell in sorted(
        cells,
        key=lambda c: (
            c["mode"] != "closed",
            c["level"],
            int(c["target"].split("-")[1]),
            order[c["target"].split("-")[0]],
        ),
    ):
        r, pct = cell["result"], cell["cpu"]["roles_pct"]
        lat = r["latency_ms"]
        variant, replicas = cell["target"].split("-")
        delta = "—"
        plain = by_key.get((f"plain-{replicas}", cell["mode"], cell["level"]))
        if variant == "ray" and plain and lat and plain["result"]["latency_ms"]:
            delta = f"{lat['p50'] - plain['result']['latency_ms']['p50']:+.1f} ms"
        errors = str(r["errors"])
        if r["error_kinds"]:
            errors += (
                " (" + ", ".join(f"{k} {v}" for k, v in sorted(r["error_kinds"].items())) + ")"
            )
        load = (
            f"closed c={cell['level']}" if cell["mode"] == "closed" else f"open {cell['level']}/s"
        )
        if cell["mode"] == "open":
            load += f" ({queue_state(cell)})"
        name = _stage(variant, replicas)
        rows.append(
            [
                load,
                name,
                f"{r['achieved_rps']:.1f}",
                _ms(lat.get("p50")),
                _ms(lat.get("p95")),
                _ms(lat.get("p99")),
                delta,
                errors,
                _pct(pct.get("inference")),
                _pct(pct.get("ray")) if variant == "ray" else "—",
                _pct(cell["cpu"]["machine_pct"]),
                _pct(pct.get("other")),
            ]
        )
    out = [_report.table(header, rows, "llrrrrrlrrrr")]
    out.append("")
    idle_header = ["inference stage", "ready in s", "idle CPU %", "RSS MiB", "processes", "stop s"]
    idle_rows = []
    for name, info in report["variants"].items():
        variant, replicas = name.split("-")
        idle = info.get("idle", {})
        pct = idle.get("cpu", {}).get("roles_pct", {})
        serving_idle = (pct.get("inference") or 0.0) + (pct.get("ray") or 0.0)
        idle_rows.append(
            [
                _stage(variant, replicas),
                f"{info.get('startup_s', 0):.0f}",
                f"{serving_idle:.1f}",
                f"{idle.get('serving_rss_mib', 0):,.0f}",
                str(idle.get("serving_processes", "—")),
                f"{info.get('stop_s', 0):.0f}",
            ]
        )
    out.append(_report.table(idle_header, idle_rows))
    out.append("")
    out.append(_report.describe(report["machine"], report["versions"]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally blocks stop
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = _report.RESULTS / f"{stamp}-ray"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{stamp.replace('-', '')}{uuid.uuid4().hex[:4]}"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench.ray_serve", *(argv or sys.argv[1:])]),
        "machine": _report.machine(),
        "config": dict(vars(args)),
        "cells": [],
        "variants": {},
    }
    print(f"run {run_id}: logs and results in {run_dir}", flush=True)
    try:
        run(args, run_dir, run_id, report)
    except BaseException as exc:
        report["failed"] = repr(exc)
        raise
    finally:  # what was measured is kept, even when a later variant failed
        report["versions"] = _report.versions({"ray": _report.package_version("ray")})
        report["duration_s"] = round(time.time() - started, 1)
        (run_dir / "ray_serve.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(render(report))
    print(f"\nfull run took {report['duration_s']:.0f} s; JSON: {run_dir / 'ray_serve.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
