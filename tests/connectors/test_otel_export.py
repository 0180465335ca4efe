"""OpenTelemetry export: Span events keep their ids, parent, times, attributes and status; the
OTLP/HTTP request a real loopback receiver gets decodes to them; a failed export is retried and
offsets are committed only once the receiver accepted the batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="needs the `otel` extra")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from opentelemetry.trace import SpanKind, StatusCode

from sluicegate.connectors.otel_export import (
    ConversionError,
    OtlpHttpExporter,
    SpanConverter,
    epoch_ns,
)
from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
from sluicegate.processors.envelope import new_span_id
from sluicegate.schemas.models import Span
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.trace_exporter import TraceExportWorker
from sluicegate.settings import KafkaSettings, Settings, TracingSettings
from tests.builders import envelope, request

pytestmark = pytest.mark.unit

START = datetime(2025, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)


def make_span(**overrides: Any) -> Span:
    fields: dict[str, Any] = {
        "name": "admission",
        "start_ms": START,
        "end_ms": START + timedelta(milliseconds=42),
        "status": "ok",
        "attributes": {"decision": "admitted", "deployment": "local-smollm2"},
    }
    env = {"producer": "admission", "parent_span_id": new_span_id()}
    env.update({k: v for k, v in overrides.items() if k not in fields})
    fields.update({k: v for k, v in overrides.items() if k in fields})
    return Span(**envelope(**env), **fields)


# --- conversion ------------------------------------------------------------------------------


def test_ids_and_parent_are_the_events_own() -> None:
    span = make_span()
    otel = SpanConverter().convert(span)
    assert otel.context is not None and otel.parent is not None
    assert f"{otel.context.trace_id:032x}" == span.trace_id
    assert f"{otel.context.span_id:016x}" == span.span_id
    assert f"{otel.parent.span_id:016x}" == span.parent_span_id
    assert otel.parent.trace_id == otel.context.trace_id
    assert otel.context.trace_flags.sampled
    assert otel.kind is SpanKind.INTERNAL


def test_root_span_has_no_parent_and_is_the_server_span() -> None:
    otel = SpanConverter().convert(make_span(parent_span_id=None, name="bridge"))
    assert otel.parent is None
    assert otel.kind is SpanKind.SERVER
    assert otel.name == "bridge"


def test_times_are_exact_nanoseconds() -> None:
    otel = SpanConverter().convert(make_span())
    assert otel.start_time == 1740830400_123_000_000
    assert otel.end_time == 1740830400_165_000_000
    assert epoch_ns(START.replace(tzinfo=None)) == otel.start_time  # naive is UTC


def test_end_before_start_is_clamped() -> None:
    otel = SpanConverter().convert(make_span(end_ms=START - timedelta(milliseconds=5)))
    assert otel.end_time == otel.start_time


def test_attributes_carry_the_envelope() -> None:
    span = make_span(run_id="eval-7")
    attributes = dict(SpanConverter().convert(span).attributes or {})
    assert attributes == {
        "decision": "admitted",
        "deployment": "local-smollm2",
        "sluicegate.tenant_id": "acme",
        "sluicegate.request_id": span.request_id,
        "sluicegate.run_id": "eval-7",
        "sluicegate.event_id": span.event_id,
    }
    live = dict(SpanConverter().convert(make_span()).attributes or {})
    assert "sluicegate.run_id" not in live


def test_resource_names_service_and_stage_and_is_shared_per_producer() -> None:
    converter = SpanConverter("gw-prod")
    first = converter.convert(make_span())
    second = converter.convert(make_span())
    other = converter.convert(make_span(producer="inference"))
    assert first.resource is second.resource
    assert dict(first.resource.attributes) == {
        "service.name": "gw-prod",
        "sluicegate.stage": "admission",
    }
    assert other.resource.attributes["sluicegate.stage"] == "inference"


@pytest.mark.parametrize(
    ("status", "attributes", "code", "description"),
    [
        ("ok", {}, StatusCode.OK, None),
        ("error", {"error_class": "timeout"}, StatusCode.ERROR, "timeout"),
        ("error", {"decision": "rejected:rate_limited"}, StatusCode.ERROR, "rejected:rate_limited"),
        ("error", {}, StatusCode.ERROR, None),
        ("cancelled", {}, StatusCode.ERROR, "cancelled"),
    ],
)
def test_status(status: str, attributes: dict[str, str], code: StatusCode, description: str | None):
    otel = SpanConverter().convert(make_span(status=status, attributes=attributes))
    assert otel.status.status_code is code
    assert otel.status.description == description


@pytest.mark.parametrize(
    "overrides",
    [
        {"trace_id": "abc"},
        {"trace_id": "z" * 32},
        {"trace_id": "0" * 32},
        {"span_id": "0123"},
        {"parent_span_id": "not-hex-at-all!!"},
    ],
)
def test_bad_ids_are_conversion_errors(overrides: dict[str, str]) -> None:
    with pytest.raises(ConversionError):
        SpanConverter().convert(make_span(**overrides))


# --- a real OTLP/HTTP receiver on loopback ---------------------------------------------------


class Receiver:
    """An OTLP/HTTP traces endpoint: answers with the scripted statuses (then 200), and keeps
    every request it got as (status it answered, headers, decoded body)."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.requests: list[tuple[int, dict[str, str], ExportTraceServiceRequest]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                decoded = ExportTraceServiceRequest()
                decoded.ParseFromString(body)
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    headers["path"] = self.path
                    receiver.requests.append((status, headers, decoded))
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[ExportTraceServiceRequest]:
        with self.lock:
            return [body for status, _, body in self.requests if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def exported_spans(bodies: list[ExportTraceServiceRequest]) -> list[tuple[Any, Any, Any]]:
    """(resource, scope, span) of every span the receiver got."""
    return [
        (rs.resource, ss.scope, span)
        for body in bodies
        for rs in body.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def test_exporter_posts_protobuf_with_ids_names_attributes(receiver: Receiver) -> None:
    settings = TracingSettings(otlp_endpoint=receiver.url, headers={"x-api-key": "s3cret"})
    exporter = OtlpHttpExporter(settings)
    root = make_span(parent_span_id=None, name="bridge", producer="bridge-1")
    child = make_span(
        trace_id=root.trace_id,
        parent_span_id=root.span_id,
        request_id=root.request_id,
        status="error",
        attributes={"error_class": "timeout"},
    )
    converter = SpanConverter()
    try:
        assert exporter.export([converter.convert(root), converter.convert(child)])
    finally:
        exporter.close()

    [(status, headers, _body)] = receiver.requests
    assert status == 200
    assert headers["path"] == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-api-key"] == "s3cret"
    got = {
        span.name: (resource, scope, span)
        for resource, scope, span in exported_spans(receiver.accepted())
    }
    assert set(got) == {"bridge", "admission"}
    resource, scope, bridge = got["bridge"]
    assert bridge.trace_id.hex() == root.trace_id
    assert bridge.span_id.hex() == root.span_id
    assert bridge.parent_span_id == b""
    assert bridge.start_time_unix_nano == epoch_ns(root.start_ms)
    assert bridge.end_time_unix_nano == epoch_ns(root.end_ms)
    assert bridge.status.code == PbStatus.STATUS_CODE_OK
    resource_attrs = {a.key: a.value.string_value for a in resource.attributes}
    assert resource_attrs == {"service.name": "sluicegate", "sluicegate.stage": "bridge-1"}
    assert scope.name == "sluicegate.trace_export"
    _, _, admission = got["admission"]
    assert admission.trace_id.hex() == root.trace_id
    assert admission.span_id.hex() == child.span_id
    assert admission.parent_span_id.hex() == root.span_id
    assert admission.status.code == PbStatus.STATUS_CODE_ERROR
    assert admission.status.message == "timeout"
    attrs = {a.key: a.value.string_value for a in admission.attributes}
    assert attrs["error_class"] == "timeout"
    assert attrs["sluicegate.request_id"] == root.request_id
    assert attrs["sluicegate.tenant_id"] == "acme"


def test_exporter_reports_a_refused_batch_as_false(receiver: Receiver) -> None:
    receiver.script = [400]  # not retryable: the SDK gives up at once
    exporter = OtlpHttpExporter(TracingSettings(otlp_endpoint=receiver.url, timeout_s=2))
    try:
        assert not exporter.export([SpanConverter().convert(make_span())])
    finally:
        exporter.close()


# --- the consumer loop with a fake consumer: the commit rule ---------------------------------


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._where = (topic, partition, offset)
        self._value = value

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


class FakeConsumer:
    """Hands out queued messages; each commit records what the receiver had accepted by then."""

    def __init__(self, receiver: Receiver | None = None) -> None:
        self.queue: list[FakeMessage] = []
        self.commits: list[tuple[dict[tuple[str, int], int], int]] = []
        self.receiver = receiver
        self.closed = False

    def subscribe(self, topics: list[str], on_revoke: Any = None) -> None:
        self.topics = topics

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        taken, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        if not taken:
            time.sleep(min(timeout, 0.01))
        return taken

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        assert asynchronous is False
        accepted = len(self.receiver.accepted()) if self.receiver else 0
        self.commits.append(({(o.topic, o.partition): o.offset for o in offsets}, accepted))

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(registry=InMemorySchemaRegistry())


def worker_settings(url: str, **tracing: Any) -> Settings:
    return Settings(
        kafka=KafkaSettings(topic_prefix="t."),
        tracing=TracingSettings(otlp_endpoint=url, **tracing),
    )


def test_retry_after_503_loses_nothing_and_commits_after_success(
    receiver: Receiver, serde: AvroSerde
) -> None:
    # A timeout shorter than the SDK's own first backoff (~1 s): its retry gives up, so the
    # worker's retry is the one that gets the batch through.
    receiver.script = [503]
    settings = worker_settings(receiver.url, timeout_s=0.3, batch_spans=100, batch_seconds=60)
    consumer = FakeConsumer(receiver)
    exporter = OtlpHttpExporter(settings.tracing)
    worker = TraceExportWorker(settings=settings, serde=serde, exporter=exporter, consumer=consumer)
    spans = [make_span() for _ in range(5)]
    consumer.queue = [
        FakeMessage("t.traces", i % 2, 10 + i, serde.encode(span)) for i, span in enumerate(spans)
    ]
    try:
        worker.step()
        assert consumer.commits == []  # not due yet: batch_seconds is long
        assert worker.flush()
    finally:
        exporter.close()

    statuses = [status for status, _, _ in receiver.requests]
    assert statuses == [503, 200]
    assert worker.stats.export_failures == 1
    got = {span.span_id.hex() for _, _, span in exported_spans(receiver.accepted())}
    assert got == {span.span_id for span in spans}
    # One commit, after the accepted request, of the next offset of each partition.
    assert consumer.commits == [({("t.traces", 0): 15, ("t.traces", 1): 14}, 1)]
    assert worker.stats.spans == 5 and worker.stats.batches == 1


def test_nothing_is_committed_while_the_receiver_refuses(
    receiver: Receiver, serde: AvroSerde
) -> None:
    receiver.script = [500] * 1000
    settings = worker_settings(receiver.url, timeout_s=1, retry_max_s=0.2)
    consumer = FakeConsumer(receiver)
    stop = threading.Event()
    exporter = OtlpHttpExporter(settings.tracing)
    worker = TraceExportWorker(
        settings=settings, serde=serde, exporter=exporter, consumer=consumer, stop=stop
    )
    consumer.queue = [FakeMessage("t.traces", 0, 0, serde.encode(make_span()))]
    worker.step()
    flushing = threading.Thread(target=worker.flush)
    flushing.start()
    try:
        deadline = time.monotonic() + 10
        while len(receiver.requests) < 3:
            assert time.monotonic() < deadline, "the worker did not retry"
            time.sleep(0.02)
        assert consumer.commits == []
    finally:
        stop.set()
        flushing.join(10)
        exporter.close()
    assert not flushing.is_alive()
    assert consumer.commits == []  # stopped before a success: the batch stays uncommitted


def test_unconvertible_records_are_skipped_and_committed(
    receiver: Receiver, serde: AvroSerde
) -> None:
    settings = worker_settings(receiver.url, batch_spans=3)
    consumer = FakeConsumer(receiver)
    exporter = OtlpHttpExporter(settings.tracing)
    worker = TraceExportWorker(settings=settings, serde=serde, exporter=exporter, consumer=consumer)
    good = [make_span() for _ in range(3)]
    consumer.queue = [
        FakeMessage("t.traces", 0, 0, b"\x00garbage"),
        FakeMessage("t.traces", 0, 1, serde.encode(request())),  # not a Span
        FakeMessage("t.traces", 0, 2, serde.encode(make_span(trace_id="0" * 32))),
        *(FakeMessage("t.traces", 0, 3 + i, serde.encode(s)) for i, s in enumerate(good)),
    ]
    try:
        worker.step()  # takes at most batch_spans records: the three bad ones
        assert consumer.commits == []
        worker.step()  # three spans: the batch is full, so it is exported at once
    finally:
        exporter.close()
    assert worker.stats.skipped == 3
    got = {span.span_id.hex() for _, _, span in exported_spans(receiver.accepted())}
    assert got == {span.span_id for span in good}
    assert consumer.commits == [({("t.traces", 0): 6}, 1)]


def test_a_batch_of_only_bad_records_commits_without_exporting(serde: AvroSerde) -> None:
    class NeverCalled:
        def export(self, spans: Any) -> bool:
            raise AssertionError("nothing to export")

        def close(self) -> None:
            pass

    settings = worker_settings("http://127.0.0.1:9/v1/traces", batch_seconds=0.01)
    consumer = FakeConsumer()
    worker = TraceExportWorker(
        settings=settings, serde=serde, exporter=NeverCalled(), consumer=consumer
    )
    consumer.queue = [FakeMessage("t.traces", 2, 7, b"junk")]
    worker.step()
    time.sleep(0.02)
    worker.step()
    assert consumer.commits == [({("t.traces", 2): 8}, 0)]


def test_run_subscribes_to_the_traces_topic_and_stops(receiver: Receiver, serde: AvroSerde):
    settings = worker_settings(receiver.url, batch_seconds=0.05)
    consumer = FakeConsumer(receiver)
    stop = threading.Event()
    exporter = OtlpHttpExporter(settings.tracing)
    worker = TraceExportWorker(
        settings=settings, serde=serde, exporter=exporter, consumer=consumer, stop=stop
    )
    span = make_span()
    consumer.queue = [FakeMessage("t.traces", 0, 0, serde.encode(span))]
    running = threading.Thread(target=worker.run)
    running.start()
    try:
        deadline = time.monotonic() + 10
        while not consumer.commits:
            assert time.monotonic() < deadline, "never exported"
            time.sleep(0.02)
    finally:
        stop.set()
        running.join(10)
        exporter.close()
    assert consumer.topics == ["t.traces"]
    assert consumer.closed
    assert [s.span_id.hex() for _, _, s in exported_spans(receiver.accepted())] == [span.span_id]
