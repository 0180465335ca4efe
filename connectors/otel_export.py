"""OpenTelemetry export of sluicegate's spans: `Span` events → OTLP/HTTP (protobuf).

The pipeline's stages already record OpenTelemetry-shaped `Span` events on the `traces` topic,
with W3C ids. This adapter turns each one into an SDK `ReadableSpan` carrying those very ids
(trace, span, parent), so a trace found in Jaeger, Tempo or a vendor is the same one
`sluicegate trace REQUEST_ID` prints, and hands batches to the official OTLP/HTTP exporter.
No tracer or span processor is involved: the spans are finished facts read from Kafka, not
live operations, and batching and committing are the consumer's business
(`serving/trace_exporter.py`).

Needs the `otel` extra (`opentelemetry-sdk`, `opentelemetry-exporter-otlp-proto-http`); the
rest of sluicegate never imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

try:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "OpenTelemetry export needs the `otel` extra: pip install 'sluicegate[otel]'"
    ) from exc

from sluicegate.schemas.models import Span
from sluicegate.settings import TracingSettings

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope("sluicegate.trace_export", "0.1.0")
STAGE_ATTRIBUTE = "sluicegate.stage"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ConversionError(ValueError):
    """A Span event that cannot be an OpenTelemetry span (bad ids); it is skipped, not retried."""


def _hex_id(value: str | None, width: int, what: str) -> int:
    """A W3C id as the integer OpenTelemetry wants; all-zero ids are invalid in W3C too."""
    if value is None or len(value) != width:
        raise ConversionError(f"{what} {value!r} is not {width} hex characters")
    try:
        number = int(value, 16)
    except ValueError:
        raise ConversionError(f"{what} {value!r} is not hexadecimal") from None
    if number == 0:
        raise ConversionError(f"{what} is all zeros")
    return number


def epoch_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exactly (float seconds would lose the microseconds).

    Avro timestamps decode as aware UTC datetimes; a naive one is taken as UTC too."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


class SpanConverter:
    """Span event → ReadableSpan. One Resource per producer, reused, so the OTLP request groups
    the spans of a stage under one resource instead of repeating it per span."""

    def __init__(self, service_name: str = "sluicegate") -> None:
        self._service_name = service_name
        self._resources: dict[str, Resource] = {}

    def resource(self, producer: str) -> Resource:
        resource = self._resources.get(producer)
        if resource is None:
            # Not Resource.create(): its detectors would add this exporter's own random
            # service.instance.id, which describes the wrong process.
            resource = Resource({"service.name": self._service_name, STAGE_ATTRIBUTE: producer})
            self._resources[producer] = resource
        return resource

    def convert(self, span: Span) -> ReadableSpan:
        """Raises ConversionError when the ids cannot be OpenTelemetry ids."""
        trace_id = _hex_id(span.trace_id, 32, "trace_id")
        context = SpanContext(
            trace_id=trace_id,
            span_id=_hex_id(span.span_id, 16, "span_id"),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        parent = None
        if span.parent_span_id:
            parent = SpanContext(
                trace_id=trace_id,
                span_id=_hex_id(span.parent_span_id, 16, "parent_span_id"),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        start = epoch_ns(span.start_ms)
        end = max(start, epoch_ns(span.end_ms))  # clocks of two hosts: never a negative span
        attributes: dict[str, str] = dict(span.attributes)
        attributes["sluicegate.tenant_id"] = span.tenant_id
        attributes["sluicegate.request_id"] = span.request_id
        attributes["sluicegate.event_id"] = span.event_id
        if span.run_id is not None:
            attributes["sluicegate.run_id"] = span.run_id
        return ReadableSpan(
            name=span.name,
            context=context,
            parent=parent,
            resource=self.resource(span.producer),
            attributes=attributes,
            # The root span is the bridge answering an HTTP call; the stages are internal.
            kind=SpanKind.SERVER if parent is None else SpanKind.INTERNAL,
            status=_status(span),
            start_time=start,
            end_time=end,
            instrumentation_scope=SCOPE,
        )


def _status(span: Span) -> Status:
    if span.status == "ok":
        return Status(StatusCode.OK)
    # "error", or any other word a stage may use: not ok. The reason, when a stage gave one.
    reason = span.attributes.get("error_class") or span.attributes.get("decision")
    if span.status != "error":
        reason = f"{span.status}: {reason}" if reason else span.status
    return Status(StatusCode.ERROR, reason)


@runtime_checkable
class TraceExporter(Protocol):
    """Sends one batch of converted spans; the consumer commits only after True."""

    def export(self, spans: Sequence[ReadableSpan]) -> bool:
        """True once the receiver accepted the whole batch; False to retry it later."""
        ...

    def close(self) -> None: ...


class OtlpHttpExporter:
    """The OTLP/HTTP (protobuf) adapter: the SDK's exporter, used directly, without a processor.

    The SDK exporter retries 429/502/503/504 and connection errors itself within `timeout_s`;
    what still fails comes back as False and the caller retries the batch with its own backoff.
    """

    def __init__(self, settings: TracingSettings) -> None:
        self.endpoint = settings.otlp_endpoint
        self._exporter = OTLPSpanExporter(
            endpoint=settings.otlp_endpoint,
            headers={name: value.get_secret_value() for name, value in settings.headers.items()},
            timeout=settings.timeout_s,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> bool:
        if not spans:
            return True
        try:
            return self._exporter.export(spans) is SpanExportResult.SUCCESS
        except Exception:  # an exporter bug must look like a failed export, not kill the loop
            log.exception("otel export: exporter raised")
            return False

    def close(self) -> None:
        self._exporter.shutdown()
