"""The trace exporter against the real broker: Span events published to `<prefix>traces` all
reach a loopback OTLP/HTTP receiver with their own ids, and the group's committed offsets reach
the end of every partition once they have."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs the `otel` extra")

from confluent_kafka import Consumer, Producer, TopicPartition

from sluicegate.connectors.otel_export import OtlpHttpExporter
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.serving.trace_exporter import TraceExportWorker, group_id
from sluicegate.settings import KafkaSettings, Settings, TracingSettings, WorkerSettings
from sluicegate.streams.topics import ensure_topics
from tests.connectors.test_otel_export import Receiver, exported_spans, make_span

pytestmark = [pytest.mark.integration]


def committed(settings: Settings, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offset, end offset) per partition of the exporter's group."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group_id(settings)}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        done = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        return done, ends
    finally:
        consumer.close()


def test_every_published_span_reaches_the_receiver(kafka_bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    receiver = Receiver()
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"otel-{run}."),
        worker=WorkerSettings(app_id=f"otel-e2e-{run}"),
        tracing=TracingSettings(otlp_endpoint=receiver.url, batch_spans=7, batch_seconds=0.2),
    )
    ensure_topics(settings)
    serde = build_serde(settings)
    topic = settings.topic("traces")
    spans = [make_span() for _ in range(20)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    for span in spans:
        producer.produce(topic, key=span.trace_id.encode(), value=serde.encode(span))
    producer.produce(topic, key=b"junk", value=b"not avro")  # skipped, never blocks
    assert producer.flush(30) == 0

    exporter = OtlpHttpExporter(settings.tracing)
    stop = threading.Event()
    worker = TraceExportWorker(settings=settings, serde=serde, exporter=exporter, stop=stop)
    running = threading.Thread(target=worker.run)
    running.start()
    wanted = {span.span_id for span in spans}
    try:
        deadline = time.monotonic() + 60
        while True:
            got = {s.span_id.hex() for _, _, s in exported_spans(receiver.accepted())}
            if got >= wanted and worker.stats.skipped == 1 and worker.stats.spans == len(spans):
                break
            assert time.monotonic() < deadline, f"{len(got & wanted)}/{len(wanted)} arrived"
            time.sleep(0.1)
    finally:
        stop.set()
        running.join(30)
        exporter.close()
        receiver.close()
    assert not running.is_alive()
    by_id = {s.span_id.hex(): s for _, _, s in exported_spans(receiver.accepted())}
    for span in spans:
        assert by_id[span.span_id].trace_id.hex() == span.trace_id
        assert by_id[span.span_id].parent_span_id.hex() == span.parent_span_id
    done, ends = committed(settings, topic)
    assert done == ends
