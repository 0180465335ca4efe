"""Envelope helpers: every stage derives its events' envelope from the event it reacts to."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sluicegate.schemas.models import Event, Span


@dataclass(frozen=True, slots=True)
class Emit:
    """An event a processor wants published: `topic` is the catalogue name without prefix."""

    topic: str
    key: str
    event: Event


def now() -> datetime:
    """The current time at the millisecond precision Avro's timestamp-millis keeps."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def new_span_id() -> str:
    return secrets.token_hex(8)


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_event_id() -> str:
    return str(uuid.uuid4())


def origin_envelope(tenant_id: str, *, producer: str) -> dict[str, Any]:
    """Envelope of an event no request caused (an identity record, a submitted or deleted
    document): a request and trace of its own, so correlation fields are never empty."""
    return {
        "event_id": new_event_id(),
        "occurred_at": now(),
        "tenant_id": tenant_id,
        "request_id": new_event_id(),
        "trace_id": new_trace_id(),
        "span_id": new_span_id(),
        "producer": producer,
    }


def system_envelope(*, producer: str) -> dict[str, Any]:
    """Envelope of an event of no tenant (a catalogue version, a health summary)."""
    return origin_envelope("system", producer=producer)


def child_envelope(parent: Event, *, producer: str, span_id: str | None = None) -> dict[str, Any]:
    """Envelope of an event caused by `parent`: same request, trace and run; a child span."""
    return {
        "event_id": new_event_id(),
        "occurred_at": now(),
        "tenant_id": parent.tenant_id,
        "request_id": parent.request_id,
        "trace_id": parent.trace_id,
        "span_id": span_id or new_span_id(),
        "parent_span_id": parent.span_id,
        "run_id": parent.run_id,
        "producer": producer,
    }


def sibling_envelope(event: Event, *, producer: str) -> dict[str, Any]:
    """Envelope of another event of the same stage and span (e.g. a decision beside its output)."""
    return {
        "event_id": new_event_id(),
        "occurred_at": now(),
        "tenant_id": event.tenant_id,
        "request_id": event.request_id,
        "trace_id": event.trace_id,
        "span_id": event.span_id,
        "parent_span_id": event.parent_span_id,
        "run_id": event.run_id,
        "producer": producer,
    }


def span_emit(
    envelope: Mapping[str, Any],
    *,
    name: str,
    started: datetime,
    status: str,
    attributes: Mapping[str, str],
) -> Emit:
    """A stage's Span, ending now, for sg.traces (keyed by trace, so a trace stays together)."""
    span = Span(
        **envelope,
        name=name,
        start_ms=started,
        end_ms=now(),
        status=status,
        attributes=dict(attributes),
    )
    return Emit("traces", span.trace_id, span)
