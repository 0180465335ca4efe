"""The chaos soak: load through two bridges while a seeded chaos loop kill -9s the Faust worker,
the inference worker, a bridge or the broker and restarts it; then the log is checked.

    python -m bench.soak --rate 20 --minutes 3 --seed 1

Everything runs on loopback in the run's own directory: a broker on ports 29092/29093 (never the
one on 9092), a fake OpenAI upstream, `sluicegate worker`, `sluicegate inference` and two
`sluicegate bridge`. Bounded: `rate * minutes * 60` requests, each retried at most
`--max-attempts` times; kills stop `--chaos-tail` seconds before the load ends, then the log is
given `--settle` seconds to finish what is journaled. Everything started here is stopped here,
also on failure or Ctrl-C. The report (a table, and JSON in bench/results/) is verify.py's,
with the processes' RSS over the run and whether it stayed bounded (memory.py).
`--bootstrap` uses a running broker instead (names of the run's own, deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from bench._procs import ServiceError, free_port
from bench._targets import delete_kafka_state
from bench.soak.cluster import REPO_ROOT, Broker, ExternalBroker, Role, python_module
from bench.soak.load import LoadPlan, expected_answer, prompt_of, run_load
from bench.soak.logread import diagnose_lost
from bench.soak.memory import Sample, alive, judge, tree_rss_mib
from bench.soak.memory import render as render_memory
from bench.soak.verify import (
    Kill,
    attribute_duplicates,
    attribute_lost,
    latency_summary,
    render_table,
    stream_replays,
    verify,
)

MODEL = "soak-model"
RESULTS = REPO_ROOT / "bench" / "results"
ROLES = ("worker", "inference", "bridge", "broker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="offered requests/s")
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of load")
    parser.add_argument("--seed", type=int, default=1, help="seeds the chaos loop and the load")
    parser.add_argument("--stream-share", type=float, default=0.3, help="share of SSE requests")
    parser.add_argument("--kafka-port", type=int, default=29092)
    parser.add_argument("--kafka-controller-port", type=int, default=29093)
    parser.add_argument("--chaos-start", type=float, default=15.0, help="s before the first kill")
    parser.add_argument("--chaos-tail", type=float, default=30.0, help="s of calm at the end")
    parser.add_argument("--gap", type=float, nargs=2, default=(12.0, 25.0), metavar=("MIN", "MAX"))
    parser.add_argument("--pause", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"))
    parser.add_argument(
        "--targets", default=",".join(ROLES), help=f"what the chaos loop kills, of {ROLES}"
    )
    parser.add_argument("--no-chaos", action="store_true", help="the same load, nothing killed")
    parser.add_argument(
        "--sequence",
        default="",
        help="kill exactly these, in this order (e.g. broker,worker,worker), instead of rounds",
    )
    parser.add_argument(
        "--no-wait-ready",
        action="store_true",
        help="go on to the next kill without waiting for the restarted process to be ready",
    )
    parser.add_argument("--max-attempts", type=int, default=4, help="per request, same key")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="the bridges', s")
    parser.add_argument("--settle", type=float, default=180.0, help="s to wait for final results")
    parser.add_argument("--upstream-delay-ms", type=float, default=20.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    parser.add_argument(
        "--dynamic-membership",
        action="store_true",
        help="run the workers without worker.group_instance_id: a restarted worker then waits "
        "out the dead one's session timeout (45-60 s) before it gets partitions",
    )
    parser.add_argument(
        "--bootstrap",
        help="use this running broker instead of starting one (topics and groups of the run's "
        "own, deleted at the end); `broker` cannot be a target then",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where the JSON and the logs go"
    )
    parser.add_argument(
        "--rss-interval", type=float, default=10.0, help="s between RSS samples of each process"
    )
    parser.add_argument(
        "--rss-warmup", type=float, default=120.0, help="s of each process's RSS not judged"
    )
    parser.add_argument(
        "--max-rss-slope",
        type=float,
        default=20.0,
        help="MiB/hour of RSS growth (second half of the run) above which a process fails the "
        "memory check",
    )
    parser.add_argument(
        "--idempotency-max-entries",
        type=int,
        default=100_000,
        help="bridge.idempotency_max_entries: every soak request has a key, and each bridge "
        "keeps up to this many keys' answers (~1 KiB each), so RSS climbs until the cap; a "
        "memory run sets it low to reach the steady state within the run",
    )
    parser.add_argument("--keep", action="store_true", help="keep the broker's data directory")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.sequence = [t.strip() for t in args.sequence.split(",") if t.strip()]
    if set(args.targets) - set(ROLES) or set(args.sequence) - set(ROLES):
        parser.error(f"--targets, --sequence: choose from {ROLES}")
    if args.bootstrap and "broker" in args.sequence:
        parser.error("--sequence: the broker of --bootstrap is not the soak's to kill")
    if args.bootstrap and "broker" in args.targets:
        args.targets.remove("broker")
    if args.rate <= 0 or args.minutes <= 0:
        parser.error("--rate and --minutes must be positive")
    return args


class Chaos:
    """Which roles are down or restarting; `now()` says whether a request sent now meets chaos
    (something down, or back less than `after_s` ago)."""

    def __init__(self, after_s: float = 10.0) -> None:
        self.down: set[str] = set()
        self.calm_from = 0.0
        self.after_s = after_s
        self.kills: list[Kill] = []
        self.crashes: list[dict[str, Any]] = []

    def now(self) -> bool:
        return bool(self.down) or time.monotonic() < self.calm_from

    def back(self, role: str) -> None:
        self.down.discard(role)
        self.calm_from = time.monotonic() + self.after_s


class Soak:
    def __init__(self, args: argparse.Namespace, run_dir: Path, home: Path) -> None:
        from sluicegate.settings import (
            AuthSettings,
            BridgeSettings,
            CacheSettings,
            Deployment,
            KafkaSettings,
            ModelAlias,
            Settings,
            WorkerSettings,
        )

        self.args = args
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.broker: Broker | ExternalBroker = (
            ExternalBroker(bootstrap=args.bootstrap, home=home)
            if args.bootstrap
            else Broker(
                home=home,
                port=args.kafka_port,
                controller_port=args.kafka_controller_port,
                log=self.logs / "broker.log",
            )
        )
        # On a shared broker, names of the run's own; on the soak's own broker, the usual ones.
        run = f"-{home.name.rsplit('-', 1)[-1]}" if args.bootstrap else ""
        upstream_port = free_port()
        self.upstream_base = f"http://127.0.0.1:{upstream_port}/v1"
        ports = [free_port(), free_port()]
        self.settings = Settings(
            kafka=KafkaSettings(
                bootstrap_servers=self.broker.bootstrap,
                topic_prefix=f"soak{run}." if run else KafkaSettings().topic_prefix,
            ),
            bridge=BridgeSettings(
                port=ports[0],
                request_timeout_s=args.request_timeout,
                idempotency_max_entries=args.idempotency_max_entries,
            ),
            worker=WorkerSettings(
                app_id=f"sluicegate-soak{run}",
                inference_concurrency=16,
                data_dir=home / "worker",
                metrics_port=None,
                inference_metrics_port=None,
                # One worker of each kind, restarted under the same id (their groups differ).
                group_instance_id=None if args.dynamic_membership else "soak-1",
            ),
            deployments=[
                Deployment(
                    name="soak-upstream",
                    backend="openai",
                    provider_model="fake-model",
                    base_url=self.upstream_base,
                    api_key_env="SOAK_UPSTREAM_KEY",
                )
            ],
            models=[ModelAlias(name=MODEL, deployments=["soak-upstream"])],
            cache=CacheSettings(enabled=False),
            # Anonymous callers, tenant from X-Sluicegate-Tenant: keys are not what is soaked.
            auth=AuthSettings(required=False),
        )
        # The caller's SLUICEGATE_* variables stay out: a nested one (e.g.
        # SLUICEGATE_KAFKA__BOOTSTRAP_SERVERS) could point a process at another broker.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        base_env = {**inherited, "SOAK_UPSTREAM_KEY": "sk-soak", "SLUICEGATE_HOME": str(home)}
        env = {**base_env, **self.settings.to_env()}
        cli = python_module("sluicegate.cli")
        self.bridges = [f"http://127.0.0.1:{port}" for port in ports]
        self.roles: dict[str, Role] = {
            "upstream": Role(
                "upstream",
                [
                    *python_module("tests.fakes.openai_upstream"),
                    *("--port", str(upstream_port), "--delay-ms", str(args.upstream_delay_ms)),
                    *("--chunk-delay-ms", str(args.chunk_delay_ms)),
                ],
                base_env,
                self.logs,
                ready_url=f"{self.upstream_base}/models",
            ),
            "worker": Role(
                "worker", [*cli, "worker"], env, self.logs, group=self.settings.worker.app_id
            ),
            "inference": Role(
                "inference",
                [*cli, "inference"],
                env,
                self.logs,
                group=f"{self.settings.worker.app_id}-inference",
            ),
        }
        for name, port, url in zip(("bridge-a", "bridge-b"), ports, self.bridges, strict=True):
            bridge_settings = self.settings.model_copy(
                update={"bridge": self.settings.bridge.model_copy(update={"port": port})}
            )
            self.roles[name] = Role(
                name,
                [*cli, "bridge"],
                {**base_env, **bridge_settings.to_env()},
                self.logs,
                ready_url=f"{url}/readyz",
            )
        self.chaos = Chaos()
        self.rng = random.Random(args.seed)
        self.stopping = False
        self.serde: Any = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        from sluicegate.streams.topics import ensure_topics

        say(f"broker on {self.broker.bootstrap} (home {self.broker.home})")
        self.broker.start()
        ensure_topics(self.settings)
        for name in ("upstream", "worker", "inference"):
            self.roles[name].start()
        for name in ("upstream", "worker", "inference"):
            self.roles[name].wait_ready(self.broker.bootstrap)
        for name in ("bridge-a", "bridge-b"):
            self.roles[name].start()
        for name in ("bridge-a", "bridge-b"):
            self.roles[name].wait_ready(self.broker.bootstrap)
        say("all processes ready")

    def stop(self) -> None:
        self.stopping = True
        for role in self.roles.values():
            with contextlib.suppress(Exception):
                role.stop()
        if isinstance(self.broker, ExternalBroker):
            with contextlib.suppress(Exception):
                delete_kafka_state(self.settings)
        with contextlib.suppress(Exception):
            self.broker.stop()
        if self.broker.pid() is not None:  # kafka.sh refused (e.g. a stale lock): by pid
            self.broker.kill9()

    async def warm_up(self) -> None:
        """One request through each bridge must succeed (up to 90 s)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for bridge in self.bridges:
                deadline = time.monotonic() + 90
                key = f"warmup-{bridge[-5:]}"
                body = {"model": MODEL, "messages": [{"role": "user", "content": prompt_of(key)}]}
                while True:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.post(f"{bridge}/v1/chat/completions", json=body) as r:
                            payload = await r.json()
                            if r.status == 200:
                                text = payload["choices"][0]["message"]["content"]
                                assert text == expected_answer(key), text
                                break
                    if time.monotonic() > deadline:
                        raise ServiceError(f"no successful warm-up request through {bridge}")
                    await asyncio.sleep(1)

    # -- chaos -------------------------------------------------------------------------------

    async def chaos_loop(self, load_seconds: float) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        begin = time.monotonic()
        end = begin + load_seconds - args.chaos_tail
        await asyncio.sleep(args.chaos_start)
        order: list[str] = []
        scripted = list(args.sequence)
        while time.monotonic() < end and not self.stopping:
            if args.sequence and not scripted:
                break
            if not order and not scripted:
                order = list(args.targets)
                self.rng.shuffle(order)
            target = scripted.pop(0) if scripted else order.pop(0)
            role = self.rng.choice(["bridge-a", "bridge-b"]) if target == "bridge" else target
            pause = self.rng.uniform(*args.pause)
            gap = self.rng.uniform(*args.gap)
            self.chaos.down.add(role)
            at = time.time()
            if role == "broker":
                pid = await loop.run_in_executor(None, self.broker.kill9)
            else:
                pid = await loop.run_in_executor(
                    None, self.roles[role].kill9, self.broker.bootstrap
                )
            say(f"kill -9 {role} (pid {pid}); back in {pause:.1f} s")
            await asyncio.sleep(pause)
            await loop.run_in_executor(None, self._restart, role)
            self.chaos.kills.append(Kill(at=at, role=role, pid=pid, ready_at=time.time()))
            self.chaos.back(role)
            say(f"{role} ready again after {time.time() - at:.1f} s")
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(gap, remaining))

    def _restart(self, role: str) -> None:
        if role == "broker":
            self.broker.start()
            return
        self.roles[role].start()
        if self.args.no_wait_ready:
            return
        try:
            self.roles[role].wait_ready(self.broker.bootstrap)
        except ServiceError as error:
            say(f"{role}: not ready after restart: {error}")

    async def sample_memory(self, began: float, until: Callable[[], bool]) -> list[Sample]:
        """RSS of every process of the run (the broker too, if it is the soak's), each
        `--rss-interval` s while the load runs."""
        samples: list[Sample] = []
        while not until() and not self.stopping:
            at = time.monotonic() - began
            pids = {
                name: (role.starts, role.service.pid if role.service is not None else None)
                for name, role in self.roles.items()
                if name != "upstream"
            }
            if isinstance(self.broker, Broker):
                pids["broker"] = (self.broker.starts, self.broker.pid())
            for name, (start, pid) in pids.items():
                if name not in self.chaos.down and alive(pid):
                    assert pid is not None
                    samples.append(Sample(name, start, at, tree_rss_mib(pid)))
            await asyncio.sleep(self.args.rss_interval)
        return samples

    async def supervise(self, until: Callable[[], bool]) -> None:
        """Restart whatever died without being killed (and record it: that is a finding)."""
        loop = asyncio.get_running_loop()
        while not until() and not self.stopping:
            await asyncio.sleep(1.0)
            for name, role in self.roles.items():
                if name in self.chaos.down or role.alive() or self.stopping:
                    continue
                assert role.service is not None
                crash = {"at": time.time(), "role": name, "log_tail": role.service.tail(1500)}
                self.chaos.crashes.append(crash)
                say(f"{name} exited on its own (exit {role.service.process.returncode}); restart")
                self.chaos.down.add(name)
                await loop.run_in_executor(None, self._restart, name)
                self.chaos.back(name)

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        await self.warm_up()
        seconds = args.minutes * 60
        plan = LoadPlan(
            rate=args.rate,
            seconds=seconds,
            seed=args.seed,
            model=MODEL,
            bridges=self.bridges,
            stream_share=args.stream_share,
            max_attempts=args.max_attempts,
            attempt_timeout_s=args.request_timeout + 15,
        )
        say(f"load: {plan.count} requests at {args.rate:g}/s over {len(self.bridges)} bridges")
        load_done = False
        started = time.time()

        def progress(sent: int, running: int) -> None:
            say(f"  sent {sent}/{plan.count}, {running} waiting")

        chaos = asyncio.create_task(self.chaos_loop(seconds)) if not args.no_chaos else None
        supervisor = asyncio.create_task(self.supervise(lambda: load_done))
        memory = asyncio.create_task(self.sample_memory(time.monotonic(), lambda: load_done))
        try:
            attempts = await run_load(plan, self.chaos.now, progress)
        finally:
            load_done = True
            if chaos is not None:
                chaos.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chaos
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        load_s = time.time() - started
        rss = judge(
            await memory,
            warmup_s=args.rss_warmup,
            max_slope_mib_per_hour=args.max_rss_slope,
            not_judged={"broker": "a JVM's RSS grows with its heap up to -Xmx (1 GiB)"},
        )
        say(f"load finished in {load_s:.0f} s; settling")
        snapshot, report, settle_s = await self.settle(attempts)
        loop = asyncio.get_running_loop()
        kills = self.chaos.kills
        meta: dict[str, Any] = {
            "rate": args.rate,
            "minutes": args.minutes,
            "seed": args.seed,
            "kills": _count_kills(kills),
            "latency": latency_summary(attempts),
        }
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(["python -m bench.soak", *sys.argv[1:]]),
            "args": {k: v for k, v in vars(args).items()},
            "load_seconds": round(load_s, 1),
            "settle_seconds": round(settle_s, 1),
            "meta": meta,
            "kills": [asdict(k) for k in kills],
            "crashes": self.chaos.crashes,
            "report": report.as_dict(),
            "duplicates_attributed": attribute_duplicates(
                report.duplicated_ids,
                snapshot.finals,
                snapshot.final_times_ms,
                snapshot.tasks,
                kills,
            ),
            "lost_attributed": attribute_lost(report.lost_ids, snapshot.journal_times_ms, kills),
            "stream_replays": stream_replays(snapshot.chunks),
            "lost_diagnosis": await loop.run_in_executor(
                None, diagnose_lost, self.settings, self.serde, snapshot, report.lost_ids
            ),
            "failed_attempts": [
                asdict(a) for a in attempts if not 200 <= a.status < 300 or a.content_ok is False
            ][:200],
            "table": render_table(report, meta),
            "memory": rss,
            "memory_table": render_memory(rss, args.max_rss_slope),
            "memory_bounded": all(v["bounded"] is not False for v in rss.values()),
        }

    async def settle(self, attempts: list[Any]) -> tuple[Any, Any, float]:
        """Re-read the log until every journaled request has a final result, or `--settle` s."""
        from bench.soak.logread import snapshot as read_snapshot
        from sluicegate.connectors.schema_registry import build_serde

        loop = asyncio.get_running_loop()
        serde = self.serde = build_serde(self.settings)
        began = time.monotonic()
        while True:
            snap = await loop.run_in_executor(None, read_snapshot, self.settings, serde)
            report = verify(snap.journal, snap.finals, attempts)
            waited = time.monotonic() - began
            if report.lost == 0 or waited >= self.args.settle:
                return snap, report, waited
            say(f"  {report.lost} journaled requests without a final result yet")
            await asyncio.sleep(10)


def _count_kills(kills: list[Kill]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kill in kills:
        role = "bridge" if kill.role.startswith("bridge") else kill.role
        counts[role] = counts.get(role, 0) + 1
    return counts


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.results_dir / f"{stamp}-soak"
    run_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="sgsoak-"))
    soak = Soak(args, run_dir, home)
    result: dict[str, Any] | None = None
    try:
        soak.start()
        result = asyncio.run(soak.run())
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        say("stopping every process of the run")
        soak.stop()
        keep = args.keep or (result is not None and not result["report"]["goal_met"])
        if keep:
            say(
                f"broker data kept in {home}: SLUICEGATE_HOME={home} SLUICEGATE_KAFKA_PORT="
                f"{args.kafka_port} SLUICEGATE_KAFKA_CONTROLLER_PORT={args.kafka_controller_port} "
                "bash infra/kafka/kafka.sh start, to read the topics again"
            )
        else:
            shutil.rmtree(home, ignore_errors=True)
    out = args.results_dir / f"soak-{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    (run_dir / "result.json").write_text(out.read_text())
    print()
    print(result["table"])
    print()
    print("duplicates by stage / last kill before:", json.dumps(result["duplicates_attributed"]))
    print("lost by last kill before journaling:", json.dumps(result["lost_attributed"]))
    print("streams written again by a re-run task:", json.dumps(result["stream_replays"]))
    if result["lost_diagnosis"]:
        print("lost requests, where they stopped:", json.dumps(result["lost_diagnosis"]))
    if result["crashes"]:
        print(f"processes that exited on their own: {[c['role'] for c in result['crashes']]}")
    print()
    print(result["memory_table"])
    print(f"JSON: {out}; logs: {run_dir / 'logs'}")
    return 0 if result["report"]["goal_met"] and result["memory_bounded"] else 1
