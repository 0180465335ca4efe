"""Dead letters: a record a stage cannot process is kept whole, with the reason, on `<topic>.dlq`.

This is flow control, not an error path: the stage publishes the DeadLetter and moves on, so one
bad record never stops a worker and nothing is silently dropped.
"""

from __future__ import annotations

from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.schemas.models import DeadLetter


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    error: BaseException,
    stage: str,
) -> DeadLetter:
    return DeadLetter(
        event_id=new_event_id(),
        occurred_at=now(),
        tenant_id="unknown",
        request_id=(key or b"").decode("utf-8", "replace"),
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        producer=stage,
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        original_key=key,
        original_value=value or b"",
        error_class=type(error).__name__,
        error_message=str(error)[:4000],
        stage=stage,
    )
