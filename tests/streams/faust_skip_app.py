"""A Faust worker that suspends flow control while records are queued (what a rebalance
start does) and reports what its agent saw: run by tests/streams/test_commit_watchdog.py.

    python -m tests.streams.faust_skip_app --bootstrap HOST:PORT --topic T --out FILE
        [--no-watchdog]

Writes JSON to FILE (Faust takes over stdout): records produced, distinct records the agent
saw, the consumer's committed offset at the end, and how many partitions the watchdog sought
back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import faust
from confluent_kafka import Producer
from faust.types import TP

from sluicegate.streams.commit_watchdog import HoleDetector, watch_commits

FIRST, SECOND = 300, 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-watchdog", action="store_true")
    args = parser.parse_args()
    app = faust.App(
        f"{args.topic}-app",
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        broker_commit_interval=0.2,
        consumer_auto_offset_reset="earliest",
        datadir=tempfile.mkdtemp(prefix="faust-skip-"),
    )
    topic = app.topic(args.topic, value_type=bytes, partitions=1)
    seen: set[int] = set()
    detector = HoleDetector(stall_s=1.0)
    sought = [0]

    @app.agent(topic)
    async def agent(stream: faust.StreamT) -> None:
        async for value in stream:
            seen.add(int(value))
            await asyncio.sleep(0.005)  # slow enough that records queue up

    if not args.no_watchdog:

        @app.timer(interval=0.25)
        async def watchdog() -> None:
            sought[0] += await watch_commits(app, detector, time.monotonic)

    @app.task
    async def drive() -> None:
        producer = Producer({"bootstrap.servers": args.bootstrap})
        for n in range(FIRST):
            producer.produce(args.topic, value=str(n).encode())
        producer.flush(10)
        await asyncio.sleep(0.4)  # some processed, the rest queued for the agent
        app.flow_control.suspend()
        await asyncio.sleep(0.05)
        app.flow_control.resume()
        await asyncio.sleep(0.5)
        for n in range(FIRST, FIRST + SECOND):
            producer.produce(args.topic, value=str(n).encode())
        producer.flush(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(seen) < FIRST + SECOND:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a commit interval or more
        committed = app.consumer._committed_offset.get(TP(args.topic, 0))
        result = {
            "produced": FIRST + SECOND,
            "seen": len(seen),
            "committed": committed,
            "sought": sought[0],
        }
        Path(args.out).write_text(json.dumps(result))
        sys.exit(0)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
