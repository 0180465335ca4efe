"""Where sluicegate's time goes: py-spy samples the bridge and the worker under open-loop load.

    python -m bench.profile_sluicegate [--rate 200] [--seconds 15] [--sg-workers 1]

Starts the fake upstream and sluicegate like bench/bridge_overhead.py, offers `--rate` req/s with
bench/loadgen, and after a warm-up records each process with py-spy (installed on first use into
~/.sluicegate/bench/tools-venv, from PyPI) in `--nonblocking` mode, so the processes are never
paused. Prints the latency the load saw, then per process the share of samples by activity and
the hottest functions. Raw collapsed stacks (flamegraph input) land in bench/results/.
Profiling costs CPU on a 2-core machine: read the latency here as perturbed, the shares as not.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import _report
from bench._targets import BENCH_HOME, probe, start_sluicegate, start_upstream
from bench.bridge_overhead import BODY, build_loadgen

TOOLS_VENV = BENCH_HOME / "tools-venv"

# First matching rule names a stack's activity; order matters (most specific first).
ACTIVITIES = [
    ("waiting in epoll (idle)", "EpollSelector.select"),
    ("upstream call: openai SDK + httpx", "AsyncCompletions.create"),
    ("publishing: Faust/aiokafka send", "Publisher.emit"),
    ("aiokafka producer sender", "aiokafka/producer/"),
    ("aiokafka fetcher", "aiokafka/consumer/"),
    ("Avro decode", "AvroSerde.decode"),
    ("Avro encode", "AvroSerde.encode"),
    ("journal produce (librdkafka)", "Journal."),
    ("reply router (librdkafka)", "ReplyRouter."),
    ("HTTP handling (aiohttp)", "aiohttp/"),
    ("processors", "/processors/"),
    ("aiokafka client I/O", "aiokafka/"),
    ("Faust / mode machinery", "faust/"),
    ("Faust / mode machinery", "mode/"),
    ("asyncio event loop", "asyncio/"),
]


def py_spy() -> Path:
    binary = TOOLS_VENV / "bin" / "py-spy"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(TOOLS_VENV / "bin" / "pip"), "install", "-q", "py-spy"], check=True, timeout=600
        )
    return binary


def summarize(raw: Path, seconds: float, rate_hz: int) -> str:
    activity: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        self_time[frames[-1]] += n
        label = next((name for name, key in ACTIVITIES if key in stack), "other")
        activity[label] += n
    if not total:
        return "  no samples"
    busy = total - activity["waiting in epoll (idle)"]
    lines = [
        f"  {total} samples ~ {100 * busy / (seconds * rate_hz):.0f}% of a core busy "
        "(summed over threads; idle epoll waits excluded)",
        "  by activity:",
    ]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in activity.most_common()]
    lines.append("  hottest functions (self):")
    lines += [f"    {100 * n / total:5.1f}%  {name[:110]}" for name, n in self_time.most_common(12)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200, help="offered req/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds recorded")
    parser.add_argument("--sg-workers", type=int, default=1)
    parser.add_argument("--kafka-bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--sample-rate", type=int, default=100, help="py-spy samples per second")
    args = parser.parse_args()

    spy, loadgen = py_spy(), build_loadgen()
    out = _report.RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-profile"
    out.mkdir(parents=True, exist_ok=True)
    body = out / "body.json"
    body.write_text(json.dumps(BODY))
    upstream = start_upstream(out)
    try:
        target = start_sluicegate(
            upstream_base=upstream.url.removesuffix("/chat/completions"),
            bootstrap=args.kafka_bootstrap,
            log_dir=out,
            run_id=f"prof{uuid.uuid4().hex[:8]}",
            inference_concurrency=32,
            request_timeout_s=13,
            workers=args.sg_workers,
        )
        try:
            if probe(target.url, body.read_bytes(), target.headers, timeout_s=30) is None:
                raise RuntimeError("sluicegate: the warm-up request failed")
            load = subprocess.Popen(
                [
                    str(loadgen),
                    "-url",
                    target.url,
                    *(arg for k, v in target.headers.items() for arg in ("-H", f"{k}: {v}")),
                    "-body-file",
                    str(body),
                    "-mode",
                    "open",
                    "-rate",
                    str(args.rate),
                    f"-duration={args.seconds + 2}s",
                    "-warmup=3s",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(3)
            spies = {
                role: subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--nonblocking",
                        "-r",
                        str(args.sample_rate),
                        "-d",
                        str(int(args.seconds)),
                        "-f",
                        "raw",
                        "-o",
                        str(out / f"{role}.txt"),
                        "-p",
                        str(service.pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for role, service in target.services.items()
            }
            for process in spies.values():
                process.wait(args.seconds + 60)
            stdout, _ = load.communicate(timeout=args.seconds + 60)
        finally:
            target.stop()
    finally:
        upstream.stop()
    result = json.loads(stdout)
    lat = result["latency_ms"]
    print(
        f"sluicegate at {args.rate} req/s offered, profiled: {result['achieved_rps']:.0f} req/s, "
        f"p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, {result['errors']} errors"
    )
    for role in spies:
        print(f"\n{role}:")
        print(summarize(out / f"{role}.txt", args.seconds, args.sample_rate))
    print(f"\nraw stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
