"""The trace exporter: the `traces` topic → an OpenTelemetry backend, at-least-once.

`sluicegate trace-export` is optional and runs beside the pipeline, never in it: a librdkafka
consumer in its own group (`<app_id>-otel`, no auto-commit) reads `<prefix>traces`, decodes
each `Span` event, converts it with the same trace, span and parent ids
(`connectors/otel_export.py`) and buffers it. A batch is exported over OTLP/HTTP when it holds
`tracing.batch_spans` spans or `tracing.batch_seconds` after its first record; its offsets are
committed synchronously only after the receiver accepted it. A failed export is retried with
backoff without reading on, so a collector outage only makes this consumer lag, and nothing is
lost; a crash re-delivers the uncommitted batch (backends keep or merge the duplicate span ids).

A record that does not decode, is not a Span, or cannot be converted is logged and counted, and
its offset is committed with the batch: it stays on its topic and never blocks the stream.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from sluicegate.connectors.otel_export import (
    OtlpHttpExporter,
    ReadableSpan,
    SpanConverter,
    TraceExporter,
)
from sluicegate.schemas.models import Span
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings

log = logging.getLogger(__name__)


def group_id(settings: Settings) -> str:
    """The exporter's consumer group: its own, so its lag never holds back the analytics sink."""
    return f"{settings.worker.app_id}-otel"


@dataclass
class ExportStats:
    records: int = 0
    spans: int = 0
    skipped: int = 0
    batches: int = 0
    export_failures: int = 0


@dataclass
class _Batch:
    spans: list[ReadableSpan] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    started: float | None = None

    def add(self, message: Message, span: ReadableSpan | None) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.offsets[(message.topic(), message.partition())] = message.offset() + 1
        if span is not None:
            self.spans.append(span)


class TraceExportWorker:
    """One consumer loop; `consumer` may be any object with librdkafka's Consumer methods used
    here (subscribe, consume, commit, close), which is how the tests check the commit rule."""

    def __init__(
        self,
        *,
        settings: Settings,
        serde: AvroSerde,
        exporter: TraceExporter,
        consumer: Any = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._settings = settings.tracing
        self._serde = serde
        self._exporter = exporter
        self._converter = SpanConverter(settings.tracing.service_name)
        self._topic = settings.topic("traces")
        self._batch = _Batch()
        self._stop = stop or threading.Event()
        self.stats = ExportStats()
        self._consumer = consumer or Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": group_id(settings),
                "client.id": f"otel-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                # A killed exporter's partitions move after 6 s (the broker's minimum), not 45 s.
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1500,
            }
        )

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Consume until `stop()`; the last batch gets one export attempt on the way out."""
        self._consumer.subscribe([self._topic], on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                self.step()
            self.flush()
        finally:
            # What the last attempt could not export stays uncommitted for the next owner; the
            # revoke that close() triggers must not try it again.
            self._batch = _Batch()
            self._consumer.close()

    def step(self) -> None:
        """One fetch, and an export if the batch is due."""
        wanted = max(1, min(1000, self._settings.batch_spans - len(self._batch.spans)))
        for message in self._consumer.consume(num_messages=wanted, timeout=self._poll_timeout()):
            self._take(message)
        if self._due():
            self.flush()

    def flush(self) -> bool:
        """Export the batch, retrying with backoff until accepted, then commit its offsets.
        False when stopped first: the batch stays, uncommitted."""
        batch = self._batch
        if not batch.offsets:
            return True
        if not self._export_until_done(batch.spans):
            return False
        self._commit(batch)
        return True

    def _poll_timeout(self) -> float:
        if self._batch.started is None:
            return 0.2
        left = self._batch.started + self._settings.batch_seconds - time.monotonic()
        return min(0.2, max(0.0, left))

    def _due(self) -> bool:
        if self._batch.started is None:
            return False
        full = len(self._batch.spans) >= self._settings.batch_spans
        return full or time.monotonic() - self._batch.started >= self._settings.batch_seconds

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("trace export consumer: %s", error)
            return
        self.stats.records += 1
        span: ReadableSpan | None = None
        try:
            event = self._serde.decode(message.value() or b"")
            if not isinstance(event, Span):
                raise TypeError(f"a {type(event).__name__}, not a Span")
            span = self._converter.convert(event)
        except Exception as exc:  # one bad record must never stop or block the export
            self.stats.skipped += 1
            log.warning(
                "trace export: skipping %s[%s]@%s: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc,
            )
        self._batch.add(message, span)

    def _export_until_done(self, spans: list[ReadableSpan]) -> bool:
        """True once exported (or nothing to export); False if stopped before a success."""
        delay = 0.1
        while True:
            if not spans or self._exporter.export(spans):
                return True
            self.stats.export_failures += 1
            log.warning("trace export: %d spans not accepted, retrying in %.1fs", len(spans), delay)
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, self._settings.retry_max_s)

    def _commit(self, batch: _Batch) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. partitions revoked: the new owner re-exports
            log.warning("trace export: commit failed (batch will be re-delivered): %s", exc)
        self.stats.spans += len(batch.spans)
        self.stats.batches += 1
        self._batch = _Batch()

    def _on_revoke(self, _consumer: Any, _partitions: list[TopicPartition]) -> None:
        """One export attempt before the partitions move, so the new owner starts after it;
        no retrying here, which would hold up the whole group's rebalance. Unexported, the
        batch is dropped uncommitted and the new owner exports it."""
        batch = self._batch
        if batch.offsets and (not batch.spans or self._exporter.export(batch.spans)):
            self._commit(batch)
        self._batch = _Batch()


def run_trace_export(settings: Settings) -> None:
    """The `sluicegate trace-export` process; blocks until SIGINT/SIGTERM."""
    import signal

    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.streams.topics import ensure_topics

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ensure_topics(settings)
    exporter = OtlpHttpExporter(settings.tracing)
    worker = TraceExportWorker(
        settings=settings, serde=build_serde(settings), exporter=exporter, stop=stop
    )
    log.info(
        "trace export: %s → %s (group %s)",
        settings.topic("traces"),
        exporter.endpoint,
        group_id(settings),
    )
    try:
        worker.run()
    finally:
        exporter.close()
        log.info("trace export stopped: %s", worker.stats)
