"""Each event type flattens into its analytics row: envelope first, then its own fields."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sluicegate.processors.analytics_rows import ENVELOPE, TABLES, rows_for
from sluicegate.schemas.models import (
    ChatMessage,
    CostEntry,
    DeadLetter,
    InferenceFailed,
    InferenceResult,
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


def test_events_analytics_does_not_store() -> None:
    assert rows_for(RequestAdmitted(**envelope(), model="m")) is None
    assert set(TABLES) == {
        "requests",
        "responses",
        "inference_results",
        "spans",
        "cost",
        "dead_letters",
    }
