"""Events → analytics rows: one pure function per event type, flattening it into its table's row.

No I/O here: the sink (`serving/analytics_sink.py`) decodes records, calls `rows_for` and inserts
what it returns. Columns follow `connectors/analytics_ddl/`: the envelope first, then the
event's own fields. The bytes of a DeadLetter are not kept (the `.dlq` topic has them).

Not stored: InferenceTask (the attempt it starts is stored as its outcome in
`inference_results`, and its prompt is already in `requests`), and ProbeStarted (the
half-open probe it announces is the `open → half_open` row the health agent writes to
`deployment_health` in answer to it; as an `inference_results` row it would count as an
attempt that has no outcome).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sluicegate.schemas.models import (
    AuditRecord,
    BudgetAlert,
    CostEntry,
    DeadLetter,
    DeploymentHealth,
    DriftDetected,
    EvalCaseResult,
    EvalRunCompleted,
    Event,
    InferenceFailed,
    InferenceResult,
    RequestReceived,
    RequestRejected,
    ResponseReady,
    Span,
)

Row = dict[str, Any]

ENVELOPE = tuple(Event.model_fields)  # the envelope columns, in schema order


def envelope(event: Event) -> Row:
    return {name: getattr(event, name) for name in ENVELOPE}


def request_row(event: RequestReceived) -> Row:
    return {
        **envelope(event),
        "model": event.model,
        "message_count": len(event.messages),
        "prompt_chars": sum(len(m.content or "") for m in event.messages),
        "user": event.user,
        "api_key_id": event.api_key_id,
        "stream": event.stream,
        "temperature": event.params.temperature,
        "max_tokens": event.params.max_tokens,
        "metadata": dict(event.metadata),
    }


def response_row(event: ResponseReady) -> Row:
    return {
        **envelope(event),
        "status": "ok",
        "http_status": 200,
        "model": event.model,
        "deployment": event.deployment,
        "provider_model": event.provider_model,
        "finish_reason": event.finish_reason,
        "prompt_tokens": event.usage.prompt_tokens,
        "completion_tokens": event.usage.completion_tokens,
        "latency_ms": event.latency_ms,
        "cache_hit": event.cache_hit,
        "usd_saved": event.usd_saved,
        "prompt_ref": event.prompt_ref,
        "stage": "",
        "error_type": "",
        "error_code": None,
        "error_message": "",
        "retry_after_s": None,
        "headers": {},
    }


def rejection_row(event: RequestRejected) -> Row:
    return {
        **envelope(event),
        "status": "rejected",
        "http_status": event.http_status,
        "model": "",
        "deployment": "",
        "provider_model": "",
        "finish_reason": "",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "latency_ms": None,
        "cache_hit": False,
        "usd_saved": 0.0,
        "prompt_ref": None,
        "stage": event.stage,
        "error_type": event.error_type,
        "error_code": event.code,
        "error_message": event.message,
        "retry_after_s": event.retry_after_s,
        "headers": dict(event.headers),
    }


def inference_result_row(event: InferenceResult) -> Row:
    return {
        **envelope(event),
        "status": "ok",
        "deployment": event.deployment,
        "provider_model": event.provider_model,
        "finish_reason": event.finish_reason,
        "error_class": "",
        "error_message": "",
        "status_code": None,
        "latency_ms": event.latency_ms,
        "ttft_ms": event.ttft_ms,
        "prompt_tokens": event.usage.prompt_tokens,
        "completion_tokens": event.usage.completion_tokens,
        "attempt": event.attempt,
    }


def inference_failed_row(event: InferenceFailed) -> Row:
    return {
        **envelope(event),
        "status": "failed",
        "deployment": event.deployment,
        "provider_model": "",
        "finish_reason": "",
        "error_class": event.error_class,
        "error_message": event.message,
        "status_code": event.status_code,
        "latency_ms": event.latency_ms,
        "ttft_ms": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "attempt": event.attempt,
    }


def span_row(event: Span) -> Row:
    return {
        **envelope(event),
        "name": event.name,
        "start": event.start_ms,
        "end": event.end_ms,
        "duration_ms": (event.end_ms - event.start_ms).total_seconds() * 1000.0,
        "status": event.status,
        "attributes": dict(event.attributes),
    }


def cost_row(event: CostEntry) -> Row:
    return {
        **envelope(event),
        "model": event.model,
        "deployment": event.deployment,
        "api_key_id": event.api_key_id,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "usd": event.usd,
        "pricing_version": event.pricing_version,
        "user": event.user,
        "feature": event.feature,
        "estimated_tokens": event.estimated_tokens,
        "cache_hit": event.cache_hit,
        "usd_saved": event.usd_saved,
        "latency_ms": event.latency_ms,
        "prompt_ref": event.prompt_ref,
    }


def dead_letter_row(event: DeadLetter) -> Row:
    return {
        **envelope(event),
        "topic": event.original_topic,
        "partition": event.original_partition,
        "offset": event.original_offset,
        "error_class": event.error_class,
        "error_message": event.error_message,
        "stage": event.stage,
    }


def deployment_health_row(event: DeploymentHealth) -> Row:
    open_until = event.open_until_ms
    return {
        **envelope(event),
        "deployment": event.deployment,
        "breaker": event.breaker,
        "previous_breaker": event.previous_breaker,
        "open_until": None
        if open_until is None
        else datetime.fromtimestamp(open_until / 1000, tz=UTC),
        "latency_ewma_ms": event.latency_ewma_ms,
        "ttft_ewma_ms": event.ttft_ewma_ms,
        "reason": event.reason,
    }


def budget_alert_row(event: BudgetAlert) -> Row:
    return {
        **envelope(event),
        "subject_kind": event.subject_kind,
        "subject_id": event.subject_id,
        "period": event.period,
        "period_start": date.fromisoformat(event.period_start),
        "threshold": event.threshold,
        "budget_usd": event.budget_usd,
        "spent_usd": event.spent_usd,
    }


def eval_result_row(event: EvalCaseResult) -> Row:
    return {
        **envelope(event),
        "dataset": event.dataset,
        "case_id": event.case_id,
        "metric": event.metric,
        "score": event.score,
        "passed": event.passed,
        "detail": event.detail,
        "output": event.output,
        "model": event.model,
        "prompt_ref": event.prompt_ref,
        "latency_ms": event.latency_ms,
        "cost_usd": event.cost_usd,
        "judge_usd": event.judge_usd,
        "subject_request_id": event.subject_request_id,
        "original_request_id": event.original_request_id,
    }


def eval_run_row(event: EvalRunCompleted) -> Row:
    return {
        **envelope(event),
        "dataset": event.dataset,
        "cases": event.cases,
        "scores": dict(event.scores),
        "baseline_run_id": event.baseline_run_id,
        "model": event.model,
        "prompt_ref": event.prompt_ref,
        "pass_rates": dict(event.pass_rates),
        "cost_usd": event.cost_usd,
        "judge_usd": event.judge_usd,
        "failed": event.failed,
    }


def audit_row(event: AuditRecord) -> Row:
    return {
        **envelope(event),
        "actor": event.actor,
        "action": event.action,
        "resource": event.resource,
        "detail_json": event.detail_json,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def drift_row(event: DriftDetected) -> Row:
    return {
        **envelope(event),
        "metric": event.metric,
        "statistic": event.statistic,
        "value": event.value,
        "threshold": event.threshold,
        "window_start": event.window_start_ms,
        "window_end": event.window_end_ms,
        "reference_start": event.reference_start_ms,
        "reference_end": event.reference_end_ms,
        "p_value": event.p_value,
        "reference_count": event.reference_count,
        "current_count": event.current_count,
        "reference_mean": event.reference_mean,
        "current_mean": event.current_mean,
    }


MAPPERS: dict[type[Event], tuple[str, Callable[[Any], Row]]] = {
    RequestReceived: ("requests", request_row),
    ResponseReady: ("responses", response_row),
    RequestRejected: ("responses", rejection_row),
    InferenceResult: ("inference_results", inference_result_row),
    InferenceFailed: ("inference_results", inference_failed_row),
    Span: ("spans", span_row),
    CostEntry: ("cost", cost_row),
    DeadLetter: ("dead_letters", dead_letter_row),
    DeploymentHealth: ("deployment_health", deployment_health_row),
    BudgetAlert: ("budget_alerts", budget_alert_row),
    EvalCaseResult: ("eval_results", eval_result_row),
    EvalRunCompleted: ("eval_runs", eval_run_row),
    AuditRecord: ("audit", audit_row),
    DriftDetected: ("drift", drift_row),
}

TABLES = tuple(sorted({table for table, _ in MAPPERS.values()}))


SINK_SPAN = "sink"


def sink_spans(response_rows: list[Row], stored_at: datetime) -> list[Row]:
    """A `sink` span per answer (ok or rejected) in a batch: from the answer's event to the
    moment its batch was handed to the store, under the span that produced the answer, so the
    waterfall shows when a request became queryable.

    Its event_id is derived from the answer's, so a redelivered batch writes the same span row
    again and ReplacingMergeTree collapses it.
    """
    rows = []
    for answer in response_rows:
        start = answer["occurred_at"]
        span = Span(
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"sink:{answer['event_id']}")),
            occurred_at=stored_at,
            tenant_id=answer["tenant_id"],
            request_id=answer["request_id"],
            trace_id=answer["trace_id"],
            span_id=hashlib.blake2b(answer["event_id"].encode(), digest_size=8).hexdigest(),
            parent_span_id=answer["span_id"],
            run_id=answer["run_id"],
            producer=SINK_SPAN,
            name=SINK_SPAN,
            start_ms=start,
            end_ms=max(stored_at, start),
            status="ok",
            attributes={"table": "responses"},
        )
        rows.append(span_row(span))
    return rows


def rows_for(event: Event) -> tuple[str, Row] | None:
    """The table and row for `event`, or None for events analytics does not store."""
    mapper = MAPPERS.get(type(event))
    if mapper is None:
        return None
    table, to_row = mapper
    return table, to_row(event)
