"""fastavro serde throughput for RequestReceived, the event the bridge journals for every request.

    python -m bench.serde [--seconds 2] [--repeats 5] [--quick] [--json PATH] [--docs]

Measures, on one realistic event (three chat messages of ~200 characters, sampling parameters,
metadata), the events per second of:

- `AvroSerde.encode` / `AvroSerde.decode`: what the bridge and the worker really pay per event,
  Confluent wire header and pydantic model included (`model_dump` before writing,
  `model_validate` after reading);
- raw fastavro `schemaless_writer` / `schemaless_reader` of the same dict with the parsed schema,
  for comparison: the Avro part alone;
- pydantic `model_dump` / `model_validate` alone: the model part alone.

Each figure is the best of `--repeats` timed runs of about `--seconds` each, on one core. Numbers
are printed, never asserted; `--docs` also writes them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.schemas import parsed_schema
from sluicegate.schemas.models import ChatMessage, RequestReceived, SamplingParams
from sluicegate.schemas.serde import AvroSerde

SYSTEM = (
    "You are a careful assistant for the customer-support team of a mid-sized logistics company. "
    "Answer in the customer's language, cite the order number when you have it, and never promise "
    "a delivery date."
)
USER = (
    "Hello, my parcel with order number 4711-2209-XK was supposed to arrive last Tuesday, but the "
    "tracking page still says it is at the sorting centre in Leipzig. Can you tell me what is "
    "going on and when it will come?"
)
ASSISTANT = (
    "I am sorry for the delay with order 4711-2209-XK. The sorting centre in Leipzig reported a "
    "backlog after a system outage this week; parcels are moving again. I have flagged yours so it "
    "is prioritised on the next outbound run."
)


def realistic_event() -> RequestReceived:
    """A RequestReceived as the bridge builds it (envelope like tests/builders.py)."""
    return RequestReceived(
        event_id=new_event_id(),
        occurred_at=now(),
        tenant_id="acme",
        request_id=str(uuid.uuid4()),
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        producer="bridge",
        model="gpt-4o-mini",
        messages=[
            ChatMessage(role="system", content=SYSTEM),
            ChatMessage(role="user", content=USER),
            ChatMessage(role="assistant", content=ASSISTANT),
        ],
        params=SamplingParams(temperature=0.2, top_p=0.95, max_tokens=256, stop=["\n\n"]),
        user="customer-8812",
        api_key_id="key-support-bot",
        metadata={"app": "support-bot", "channel": "web"},
        reply_to="bridge-1",
        idempotency_key=str(uuid.uuid4()),
        deadline_ms=int(time.time() * 1000) + 120_000,
    )


def rate(fn: Callable[[], Any], *, seconds: float, repeats: int) -> float:
    """Best-of-`repeats` calls per second of `fn`, each repeat running about `seconds`."""
    batch = 1
    while True:  # calibrate a batch that takes ~50 ms so the clock is read rarely
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= 0.05:
            break
        batch *= 2
    batches = max(1, round(seconds / elapsed))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            for _ in range(batch):
                fn()
        best = max(best, batches * batch / (time.perf_counter() - start))
    return best


def run(seconds: float, repeats: int) -> dict[str, Any]:
    serde = AvroSerde(registry=InMemorySchemaRegistry())
    event = realistic_event()
    wire = serde.encode(event)
    assert serde.decode(wire) == event, "serde round trip changed the event"

    schema = parsed_schema("RequestReceived")
    record = event.model_dump()
    raw = io.BytesIO()
    fastavro.schemaless_writer(raw, schema, record)
    body = raw.getvalue()

    def raw_encode() -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        return buffer.getvalue()

    def raw_decode() -> Any:
        return fastavro.schemaless_reader(io.BytesIO(body), schema, None)

    cases: dict[str, Callable[[], Any]] = {
        "AvroSerde.encode": lambda: serde.encode(event),
        "AvroSerde.decode": lambda: serde.decode(wire),
        "fastavro schemaless_writer": raw_encode,
        "fastavro schemaless_reader": raw_decode,
        "pydantic model_dump": event.model_dump,
        "pydantic model_validate": lambda: RequestReceived.model_validate(record),
    }
    results = {name: rate(fn, seconds=seconds, repeats=repeats) for name, fn in cases.items()}
    return {
        "event": "RequestReceived",
        "wire_bytes": len(wire),
        "json_bytes": len(event.model_dump_json()),
        "seconds_per_repeat": seconds,
        "repeats": repeats,
        "python": platform.python_version(),
        "fastavro": fastavro.__version__,
        "events_per_s": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the best counts")
    parser.add_argument("--quick", action="store_true", help="0.3 s x 2 repeats (smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--docs", action="store_true", help="write the table into the docs")
    args = parser.parse_args()
    seconds, repeats = (0.3, 2) if args.quick else (args.seconds, args.repeats)

    report = run(seconds, repeats)
    print(
        f"RequestReceived: {report['wire_bytes']} bytes on the wire "
        f"({report['json_bytes']} as JSON); best of {repeats} x ~{seconds:g} s, one core"
    )
    print(f"{'operation':<30} {'events/s':>12} {'us/event':>10}")
    for name, per_s in report["events_per_s"].items():
        print(f"{name:<30} {per_s:>12,.0f} {1e6 / per_s:>10.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.docs:
        write_docs(report)


def write_docs(report: dict[str, Any]) -> None:
    from bench import _report

    rows = [
        [f"`{name}`", f"{per_s:,.0f}", f"{1e6 / per_s:.1f}"]
        for name, per_s in report["events_per_s"].items()
    ]
    body = "\n\n".join(
        [
            f"## fastavro serde: RequestReceived ({time.strftime('%Y-%m-%d')})",
            f"One realistic RequestReceived (three messages of ~200 characters, parameters, "
            f"metadata): {report['wire_bytes']} bytes in the Confluent wire format, "
            f"{report['json_bytes']} as JSON. Best of {report['repeats']} runs of "
            f"~{report['seconds_per_repeat']:g} s on one core (`python -m bench.serde`).",
            _report.table(["operation", "events/s", "µs/event"], rows),
            _report.describe(_report.machine(), _report.versions()),
        ]
    )
    _report.replace_section("serde", body)


if __name__ == "__main__":
    main()
