"""Each event type flattens into its analytics row: envelope first, then its own fields."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from sluicegate.processors.analytics_rows import ENVELOPE, TABLES, rows_for
from sluicegate.schemas.models import (
    AuditRecord,
    BudgetAlert,
    ChatMessage,
    CostEntry,
    DeadLetter,
    DeploymentHealth,
    DriftDetected,
    EvalCaseResult,
    EvalRunCompleted,
    InferenceFailed,
    InferenceResult,
    InferenceTask,
    ProbeStarted,
    RequestAdmitted,
    RequestReceived,
    RequestRejected,
    ResponseReady,
    SamplingParams,
    Span,
    TokenUsage,
)
from tests.builders import envelope

pytestmark = pytest.mark.unit

USAGE = TokenUsage(prompt_tokens=5, completion_tokens=7, total_tokens=12)
ANSWER = ChatMessage(role="assistant", content="hi there")


def _envelope_kept(event, row) -> None:
    assert list(row)[: len(ENVELOPE)] == list(ENVELOPE)
    for name in ENVELOPE:
        assert row[name] == getattr(event, name)


def test_request_received() -> None:
    event = RequestReceived(
        **envelope(),
        model="gpt-fake",
        messages=[
            ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content="hello"),
            ChatMessage(role="assistant", content=None, tool_calls_json="[]"),
        ],
        params=SamplingParams(temperature=0.5, max_tokens=32),
        stream=True,
        user="u1",
        api_key_id="key-1",
        metadata={"feature": "chat"},
    )
    table, row = rows_for(event)
    assert table == "requests"
    _envelope_kept(event, row)
    assert row["model"] == "gpt-fake"
    assert row["message_count"] == 3
    assert row["prompt_chars"] == len("be brief") + len("hello")
    assert (row["user"], row["api_key_id"], row["stream"]) == ("u1", "key-1", True)
    assert (row["temperature"], row["max_tokens"]) == (0.5, 32)
    assert row["metadata"] == {"feature": "chat"}


def test_response_ready_and_rejection_share_one_shape() -> None:
    ready = ResponseReady(
        **envelope(),
        model="gpt-fake",
        deployment="fake",
        provider_model="fake-model",
        message=ANSWER,
        finish_reason="stop",
        usage=USAGE,
        latency_ms=12.5,
        cache_hit=True,
        usd_saved=0.01,
    )
    rejected = RequestRejected(
        **envelope(),
        stage="inference",
        error_type="rate_limit_error",
        code="rate_limited",
        message="slow down",
        http_status=429,
        retry_after_s=1.0,
    )
    (t1, ok), (t2, bad) = rows_for(ready), rows_for(rejected)
    assert t1 == t2 == "responses"
    assert list(ok) == list(bad)
    _envelope_kept(ready, ok)
    _envelope_kept(rejected, bad)
    assert (ok["status"], ok["http_status"], ok["deployment"]) == ("ok", 200, "fake")
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["latency_ms"]) == (5, 7, 12.5)
    assert (ok["cache_hit"], ok["usd_saved"], ok["finish_reason"]) == (True, 0.01, "stop")
    assert (bad["status"], bad["http_status"], bad["stage"]) == ("rejected", 429, "inference")
    assert (bad["error_type"], bad["error_code"]) == ("rate_limit_error", "rate_limited")
    assert bad["error_message"] == "slow down" and bad["latency_ms"] is None
    assert (ok["retry_after_s"], ok["headers"]) == (None, {})


def test_rejection_keeps_what_the_caller_was_told() -> None:
    rejected = RequestRejected(
        **envelope(),
        stage="admission",
        error_type="rate_limit_error",
        code="tokens_limit_exceeded",
        message="key k1: 1000 tokens/min",
        http_status=429,
        retry_after_s=2.5,
        headers={"x-ratelimit-remaining-tokens": "0", "retry-after": "3"},
    )
    _, row = rows_for(rejected)
    assert (row["stage"], row["error_code"], row["retry_after_s"]) == (
        "admission",
        "tokens_limit_exceeded",
        2.5,
    )
    assert row["headers"] == {"x-ratelimit-remaining-tokens": "0", "retry-after": "3"}


def test_inference_result_and_failure_share_one_shape() -> None:
    result = InferenceResult(
        **envelope(),
        deployment="fake",
        provider_model="fake-model",
        message=ANSWER,
        finish_reason="length",
        usage=USAGE,
        latency_ms=40.0,
        ttft_ms=3.0,
        attempt=2,
    )
    failed = InferenceFailed(
        **envelope(),
        deployment="fake",
        error_class="timeout",
        message="took too long",
        status_code=None,
        retriable=True,
        latency_ms=30000.0,
        attempt=3,
    )
    (t1, ok), (t2, bad) = rows_for(result), rows_for(failed)
    assert t1 == t2 == "inference_results"
    assert list(ok) == list(bad)
    assert (ok["status"], ok["attempt"], ok["ttft_ms"], ok["completion_tokens"]) == (
        "ok",
        2,
        3.0,
        7,
    )
    assert (bad["status"], bad["error_class"], bad["attempt"]) == ("failed", "timeout", 3)
    assert bad["latency_ms"] == 30000.0 and bad["error_message"] == "took too long"


def test_span_duration() -> None:
    env = envelope()
    start = env["occurred_at"] - timedelta(milliseconds=250)
    event = Span(
        **env,
        name="inference",
        start_ms=start,
        end_ms=env["occurred_at"],
        status="ok",
        attributes={"deployment": "fake"},
    )
    table, row = rows_for(event)
    assert table == "spans"
    _envelope_kept(event, row)
    assert row["duration_ms"] == 250.0
    assert (row["start"], row["end"]) == (start, env["occurred_at"])
    assert row["attributes"] == {"deployment": "fake"} and row["name"] == "inference"


def test_cost_entry() -> None:
    event = CostEntry(
        **envelope(),
        model="gpt-fake",
        deployment="fake",
        api_key_id=None,
        prompt_tokens=10,
        completion_tokens=20,
        usd=0.003,
        pricing_version="2026-11",
    )
    table, row = rows_for(event)
    assert table == "cost"
    assert (row["usd"], row["prompt_tokens"], row["pricing_version"]) == (0.003, 10, "2026-11")


def test_dead_letter_drops_the_bytes() -> None:
    event = DeadLetter(
        **envelope(),
        original_topic="sg.requests",
        original_partition=2,
        original_offset=41,
        original_key=b"acme",
        original_value=b"\x00garbage",
        error_class="SerializationError",
        error_message="bad magic byte",
        stage="admission",
    )
    table, row = rows_for(event)
    assert table == "dead_letters"
    assert (row["topic"], row["partition"], row["offset"]) == ("sg.requests", 2, 41)
    assert (row["error_class"], row["stage"]) == ("SerializationError", "admission")
    assert not any(isinstance(v, bytes) for v in row.values())


def test_cost_entry_attribution_and_cache_savings() -> None:
    event = CostEntry(
        **envelope(),
        model="gpt-fake",
        deployment="fake",
        api_key_id="k1",
        prompt_tokens=0,
        completion_tokens=0,
        usd=0.0,
        pricing_version="cache",
        user="u1",
        feature="search",
        estimated_tokens=40,
        cache_hit=True,
        usd_saved=0.02,
    )
    _, row = rows_for(event)
    assert (row["api_key_id"], row["user"], row["feature"]) == ("k1", "u1", "search")
    assert (row["estimated_tokens"], row["cache_hit"], row["usd_saved"]) == (40, True, 0.02)


def test_deployment_health_open_until_becomes_a_timestamp() -> None:
    until = datetime(2026, 11, 24, 12, 0, 30, 250_000, tzinfo=UTC)
    event = DeploymentHealth(
        **envelope(parent_span_id="b" * 16),
        deployment="fake",
        breaker="open",
        previous_breaker="closed",
        open_until_ms=int(until.timestamp() * 1000),
        latency_ewma_ms=None,
        ttft_ewma_ms=12.5,
        reason="server_error: 5/5 failures in the window",
    )
    table, row = rows_for(event)
    assert table == "deployment_health"
    _envelope_kept(event, row)
    assert row["parent_span_id"] == "b" * 16  # the cause: how reprocessed copies are collapsed
    assert (row["deployment"], row["previous_breaker"], row["breaker"]) == (
        "fake",
        "closed",
        "open",
    )
    assert row["open_until"] == until
    assert (row["latency_ewma_ms"], row["ttft_ewma_ms"]) == (None, 12.5)
    assert row["reason"] == "server_error: 5/5 failures in the window"

    closed = event.model_copy(update={"breaker": "closed", "open_until_ms": None})
    assert rows_for(closed)[1]["open_until"] is None


def test_budget_alert_period_start_becomes_a_date() -> None:
    event = BudgetAlert(
        **envelope(),
        subject_kind="key",
        subject_id="k1",
        period="month",
        period_start="2026-11-01",
        threshold=0.8,
        budget_usd=100.0,
        spent_usd=80.5,
    )
    table, row = rows_for(event)
    assert table == "budget_alerts"
    _envelope_kept(event, row)
    assert (row["subject_kind"], row["subject_id"], row["period"]) == ("key", "k1", "month")
    assert row["period_start"] == date(2026, 11, 1)
    assert (row["threshold"], row["budget_usd"], row["spent_usd"]) == (0.8, 100.0, 80.5)


def test_drift_finding_keeps_its_window_and_means() -> None:
    ref_start, start, end = (
        datetime(2026, 11, 24, 9, 55, tzinfo=UTC),
        datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 24, 10, 5, tzinfo=UTC),
    )
    event = DriftDetected(
        **envelope(),
        metric="latency_ms",
        statistic="ks",
        value=0.31,
        threshold=0.001,
        window_start_ms=start,
        window_end_ms=end,
        reference_start_ms=ref_start,
        reference_end_ms=start,
        p_value=1e-9,
        reference_count=400,
        current_count=380,
        reference_mean=210.0,
        current_mean=290.0,
    )
    table, row = rows_for(event)
    assert table == "drift"
    _envelope_kept(event, row)
    assert (row["window_start"], row["window_end"]) == (start, end)
    assert (row["reference_start"], row["reference_end"]) == (ref_start, start)
    assert (row["statistic"], row["value"], row["p_value"]) == ("ks", 0.31, 1e-9)
    assert (row["reference_count"], row["current_count"]) == (400, 380)
    assert (row["reference_mean"], row["current_mean"]) == (210.0, 290.0)


def test_eval_and_audit_rows() -> None:
    case = EvalCaseResult(
        **envelope(), dataset="faq", case_id="c1", metric="exact", score=0.0, passed=False
    )
    table, row = rows_for(case)
    assert table == "eval_results"
    assert (row["case_id"], row["score"], row["passed"], row["detail"]) == ("c1", 0.0, False, None)
    run = EvalRunCompleted(**envelope(), dataset="faq", cases=2, scores={"exact": 0.5})
    assert rows_for(run)[0] == "eval_runs" and rows_for(run)[1]["scores"] == {"exact": 0.5}
    record = AuditRecord(
        **envelope(),
        actor="key:a",
        action="key.revoke",
        resource="key:k1",
        detail_json='{"reason": "leaked"}',
        prev_hash="p",
        hash="h",
    )
    table, row = rows_for(record)
    assert table == "audit"
    assert (row["action"], row["prev_hash"], row["hash"]) == ("key.revoke", "p", "h")


def test_events_analytics_does_not_store() -> None:
    assert rows_for(RequestAdmitted(**envelope(), model="m")) is None
    # The probe is stored as the open → half_open DeploymentHealth it causes; the task as its
    # outcome in inference_results.
    assert rows_for(ProbeStarted(**envelope(), deployment="fake", attempt=2)) is None
    task = InferenceTask(
        **envelope(),
        model="m",
        deployment="fake",
        provider_model="fake-model",
        pool="default",
        messages=[ChatMessage(role="user", content="hi")],
        params=SamplingParams(),
    )
    assert rows_for(task) is None
    assert set(TABLES) == {
        "requests",
        "responses",
        "inference_results",
        "spans",
        "cost",
        "dead_letters",
        "deployment_health",
        "budget_alerts",
        "eval_results",
        "eval_runs",
        "audit",
        "drift",
    }


def test_each_answer_gets_a_sink_span_that_a_redelivery_writes_identically() -> None:
    from sluicegate.processors.analytics_rows import sink_spans

    answer = rows_for(
        ResponseReady(
            **envelope(),
            model="m",
            deployment="d",
            provider_model="p",
            message=ChatMessage(role="assistant", content="hi"),
            finish_reason="stop",
            usage=TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
            latency_ms=3.0,
        )
    )[1]
    stored = answer["occurred_at"] + timedelta(milliseconds=250)
    [span] = sink_spans([answer], stored)
    assert (span["name"], span["parent_span_id"], span["trace_id"]) == (
        "sink",
        answer["span_id"],
        answer["trace_id"],
    )
    assert (
        span["duration_ms"] == pytest.approx(250.0) and span["request_id"] == answer["request_id"]
    )
    again = sink_spans([answer], stored + timedelta(seconds=5))[0]
    assert (again["event_id"], again["span_id"]) == (span["event_id"], span["span_id"])
