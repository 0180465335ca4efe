"""Where a request's latency goes between Kafka hops, from the records' own timestamps.

    python -m bench.hops [--rate 150] [--seconds 10] [--sg-workers 1]

Runs the fake upstream and sluicegate like bench/bridge_overhead.py, offers `--rate` req/s with
bench/loadgen, then reads the run's topics back before removing them. Every record carries the
CreateTime its producer stamped at send (milliseconds), so per request:

    received -> task        bridge journals RequestReceived ... admission emits InferenceTask
                            (journal ack wait is not in it: CreateTime is taken at produce)
    task -> response        inference agent fetches the task, calls the upstream, emits
                            ResponseReady; `inference span` is the part inside the stage
    HTTP + reply hop        what is left of the end-to-end latency (p50 minus p50s): bridge
                            HTTP work, journal ack, and the response's trip back to the bridge
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid

from bench import _report
from bench._targets import probe, start_sluicegate, start_upstream
from bench.bridge_overhead import BODY, build_loadgen
from sluicegate.serving.topic_read import read_to_end
from sluicegate.settings import KafkaSettings, Settings


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, int, bytes]]:
    """(key, CreateTime ms, value) of every record of `topic`, read to its end."""
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=bootstrap))
    return [
        (m.key(), m.timestamp()[1], m.value() or b"")
        for batch in read_to_end(settings, topic, batch=1000, timeout_s=60, strict=True)
        for m in batch
    ]


def quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {cuts[49]:6.1f}  p90 {cuts[89]:6.1f}  p99 {cuts[98]:6.1f} ms  (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sg-workers", type=int, default=1)
    parser.add_argument("--kafka-bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()

    from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
    from sluicegate.schemas.models import Span
    from sluicegate.schemas.serde import AvroSerde

    serde = AvroSerde(registry=InMemorySchemaRegistry())
    serde.register_all()  # the in-memory registry computes the embedded registry's ids
    out = _report.RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-hops"
    out.mkdir(parents=True, exist_ok=True)
    body = out / "body.json"
    body.write_text(json.dumps(BODY))
    prefix = ""
    upstream = start_upstream(out)
    try:
        run_id = f"hops{uuid.uuid4().hex[:8]}"
        target = start_sluicegate(
            upstream_base=upstream.url.removesuffix("/chat/completions"),
            bootstrap=args.kafka_bootstrap,
            log_dir=out,
            run_id=run_id,
            inference_concurrency=32,
            request_timeout_s=13,
            workers=args.sg_workers,
        )
        prefix = f"bench{run_id}."
        try:
            if probe(target.url, body.read_bytes(), target.headers, timeout_s=30) is None:
                raise RuntimeError("sluicegate: the warm-up request failed")
            load = subprocess.run(
                [
                    str(build_loadgen()),
                    "-url",
                    target.url,
                    *(arg for k, v in target.headers.items() for arg in ("-H", f"{k}: {v}")),
                    "-body-file",
                    str(body),
                    "-mode",
                    "open",
                    "-rate",
                    str(args.rate),
                    f"-duration={args.seconds}s",
                    "-warmup=0s",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=args.seconds + 60,
            )
            time.sleep(2)  # let the last spans land
            topics = {
                name: read_topic(args.kafka_bootstrap, f"{prefix}{name}")
                for name in ("requests", "inference.default", "responses", "traces")
            }
        finally:
            target.stop()
    finally:
        upstream.stop()

    stamp = {
        name: {serde.decode(value).request_id: ts for _k, ts, value in records}
        for name, records in topics.items()
        if name != "traces"
    }
    received, tasks, responses = (stamp[n] for n in ("requests", "inference.default", "responses"))
    hop_a = [tasks[k] - received[k] for k in tasks if k in received]
    hop_b = [responses[k] - tasks[k] for k in responses if k in tasks]
    spans: dict[str, list[float]] = {}
    for _key, _ts, value in topics["traces"]:
        event = serde.decode(value)
        if isinstance(event, Span):
            took = (event.end_ms - event.start_ms).total_seconds() * 1000
            spans.setdefault(event.name, []).append(took)
    result = json.loads(load.stdout)
    total = result["latency_ms"]
    print(
        f"sluicegate at {args.rate} req/s for {args.seconds:g} s: {result['achieved_rps']:.0f} "
        f"req/s, end to end p50 {total['p50']} / p99 {total['p99']} ms, "
        f"{result['errors']} errors"
    )
    print(f"  received -> task      {quantiles(hop_a)}")
    print(f"  task -> response      {quantiles(hop_b)}")
    for name, values in sorted(spans.items()):
        print(f"    span {name:<15} {quantiles(values)}")
    if hop_a and hop_b:
        rest = total["p50"] - statistics.median(hop_a) - statistics.median(hop_b)
        print(f"  HTTP + reply hop      ~{rest:.1f} ms at p50 (end-to-end p50 minus the two)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
