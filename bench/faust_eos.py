"""Does faust-streaming's exactly-once hold here? A pass-through agent killed -9 mid-stream.

    python -m bench.faust_eos [--records 3000] [--kills 2] [--bootstrap 127.0.0.1:9092]

The design asks for "agents exactly-once where the broker allows it". faust-streaming 0.15.3
implements `processing_guarantee="exactly_once"` with one transactional producer per assigned
partition and commits input offsets inside the transactions; its tracker has open reports of
duplicates after a crash (faust-streaming/faust#517, #323, #177). This measures it on the
embedded broker (which has the transaction state log settings for one node): N numbered
records on a one-partition input topic, an agent that forwards each to an output topic, the
worker kill -9'd at random points and restarted, then the output read back with
`isolation.level=read_committed` — the view a transactional consumer gets — and counted:
missing numbers, numbers seen more than once. The same run with `at_least_once` beside it.

Nothing here is sluicegate's pipeline: it is the question whether turning the guarantee on in
streams/app.py would buy exactly-once (docs/delivery.md says what was decided with this).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_worker(args: argparse.Namespace) -> None:
    """The worker process: a pass-through agent under the asked-for guarantee."""
    import faust

    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        processing_guarantee=args.guarantee,
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=args.datadir,
        web_enabled=False,
        topic_allow_declare=False,
        producer_acks=-1,
        broker_commit_interval=0.2,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(args.source, key_type=bytes, value_type=bytes, partitions=1)
    sink = app.topic(args.sink, key_type=bytes, value_type=bytes, partitions=1)

    @app.agent(source)
    async def forward(stream: Any) -> None:
        async for key, value in stream.items():
            await sink.send(key=key, value=value)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


def _topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
        future.result(30)


def _delete(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(names, operation_timeout=30).values():
        try:
            future.result(30)
        except Exception:  # already gone
            pass


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for n in range(count):
        producer.produce(topic, key=str(n).encode(), value=str(n).encode())
        if n % 500 == 0:
            producer.poll(0)
    producer.flush(30)


def _read(bootstrap: str, topic: str, isolation: str, idle_s: float = 3.0) -> list[int]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"eos-read-{uuid.uuid4().hex[:6]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[int] = []
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        for message in consumer.consume(1000, timeout=0.5):
            if message.error() is None:
                seen.append(int(message.value()))
                last = time.monotonic()
    consumer.close()
    return seen


def _output_end(watcher: Consumer, topic: str) -> int:
    _low, high = watcher.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    return high


def trial(args: argparse.Namespace, guarantee: str, rng: random.Random) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    source, sink, app_id = f"eos-{run}-in", f"eos-{run}-out", f"eos-{run}-{guarantee}"
    _topics(args.bootstrap, [source, sink])
    _produce(args.bootstrap, source, args.records)
    datadir = Path(f"/tmp/{app_id}")
    command = [
        *(sys.executable, "-m", "bench.faust_eos", "--worker", "--guarantee", guarantee),
        *("--bootstrap", args.bootstrap, "--app-id", app_id),
        *("--source", source, "--sink", sink, "--datadir", str(datadir)),
    ]
    log = open(f"/tmp/{app_id}.log", "ab")  # open for the workers' lifetime
    kills = 0
    # Kill when the output (its high watermark) passes these marks.
    marks = sorted(rng.uniform(0.1, 0.9) * args.records for _ in range(args.kills))
    started = time.monotonic()
    watcher = Consumer({"bootstrap.servers": args.bootstrap, "group.id": "eos-watch"})
    try:
        while True:
            worker = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log, stderr=log, start_new_session=True
            )
            if kills >= args.kills:
                break
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and worker.poll() is None:
                if _output_end(watcher, sink) >= marks[kills]:
                    break
                time.sleep(0.05)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited by itself; see /tmp/{app_id}.log")
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
            kills += 1
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            committed = _read(args.bootstrap, sink, "read_committed", idle_s=2.0)
            if len(set(committed)) >= args.records:
                break
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        watcher.close()
        log.close()
    committed = _read(args.bootstrap, sink, "read_committed")
    everything = _read(args.bootstrap, sink, "read_uncommitted")
    _delete(args.bootstrap, [source, sink])
    counts = Counter(committed)
    return {
        "guarantee": guarantee,
        "records": args.records,
        "kills": kills,
        "seconds": round(time.monotonic() - started, 1),
        "read_committed": len(committed),
        "missing": args.records - len(counts),
        "duplicated": sum(1 for n in counts.values() if n > 1),
        "read_uncommitted": len(everything),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--trials", type=int, default=2, help="per guarantee")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--guarantee", default="exactly_once", help=argparse.SUPPRESS)
    parser.add_argument("--app-id", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--datadir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    rng = random.Random(args.seed)
    rows = [
        trial(args, guarantee, rng)
        for guarantee in ("exactly_once", "at_least_once")
        for _ in range(args.trials)
    ]
    print("| guarantee | records | kill -9 | read_committed | missing | duplicated | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['guarantee']} | {r['records']} | {r['kills']} | {r['read_committed']} | "
            f"{r['missing']} | {r['duplicated']} | {r['seconds']} |"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
