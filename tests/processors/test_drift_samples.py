"""Drift samples from events: request tokens, cost and latency, eval scores, prompt embeddings,
and which requests are sampled for embedding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from sluicegate.processors.drift_samples import (
    MAX_PROMPT_CHARS,
    DriftSample,
    embedding_sample,
    last_user_text,
    metric_family,
    prompt_to_embed,
    sampled,
    samples_from_cost,
    samples_from_eval,
    samples_from_response,
)
from sluicegate.processors.drift_stats import DriftInputError
from sluicegate.processors.envelope import Emit
from sluicegate.schemas.models import (
    ChatMessage,
    CostEntry,
    EvalCaseResult,
    RequestAdmitted,
    RequestRejected,
    ResponseReady,
    TokenUsage,
)
from tests.builders import envelope, request

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 24, 12, 0, 1, 500_000, tzinfo=UTC)
AT_MS = int(AT.timestamp() * 1000)


def cost(**overrides: Any) -> CostEntry:
    fields: dict[str, Any] = {
        "model": "m",
        "deployment": "d",
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "usd": 0.0021,
        "pricing_version": "v1",
        "latency_ms": 830,
    }
    return CostEntry(**envelope(occurred_at=AT), **(fields | overrides))


def test_samples_from_cost() -> None:
    samples = {s.metric: s for s in samples_from_cost(cost())}
    assert {m: s.value for m, s in samples.items()} == {
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "usd": 0.0021,
        "latency_ms": 830,
    }
    assert {(s.tenant_id, s.at_ms) for s in samples.values()} == {("acme", AT_MS)}


def test_cache_hits_give_tokens_only_and_replays_nothing() -> None:
    hit = samples_from_cost(cost(cache_hit=True, usd=0.0, latency_ms=None))
    assert sorted(s.metric for s in hit) == ["completion_tokens", "prompt_tokens"]
    assert samples_from_cost(cost(run_id="backtest-1")) == []
    no_latency = samples_from_cost(cost(latency_ms=None))
    assert "latency_ms" not in {s.metric for s in no_latency}


def test_samples_from_response_and_eval() -> None:
    response = ResponseReady(
        **envelope(occurred_at=AT),
        model="m",
        deployment="d",
        provider_model="p",
        message=ChatMessage(role="assistant", content="hi"),
        finish_reason="stop",
        usage=TokenUsage(prompt_tokens=7, completion_tokens=3, total_tokens=10),
        latency_ms=412.5,
    )
    assert {s.metric: s.value for s in samples_from_response(response)} == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "latency_ms": 412.5,
    }
    cached = response.model_copy(update={"cache_hit": True})
    assert "latency_ms" not in {s.metric for s in samples_from_response(cached)}
    result = EvalCaseResult(
        **envelope(occurred_at=AT, run_id="r1"),
        dataset="faq",
        case_id="c1",
        metric="faithfulness",
        score=0.75,
        passed=True,
    )
    (sample,) = samples_from_eval(result)
    assert (sample.metric, sample.value, sample.at_ms) == ("eval:faithfulness", 0.75, AT_MS)
    assert metric_family(sample.metric) == "eval" and metric_family("usd") == "usd"


def test_a_sample_is_a_value_or_a_vector() -> None:
    with pytest.raises(DriftInputError):
        DriftSample(tenant_id="t", metric="m", at_ms=0)
    with pytest.raises(DriftInputError):
        DriftSample(tenant_id="t", metric="m", at_ms=0, value=1.0, vector=(1.0,))
    with pytest.raises(DriftInputError):
        DriftSample(tenant_id="t", metric="prompt_embedding", at_ms=0, vector=())
    sample = embedding_sample("t", np.array([[0.6, 0.8]], dtype=np.float32), 5)
    assert sample.vector == pytest.approx((0.6, 0.8)) and sample.metric == "prompt_embedding"


# --- which prompts are embedded -----------------------------------------------------------------


def test_sampling_is_a_deterministic_share_of_request_ids() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    chosen = [i for i in ids if sampled(i, 0.1)]
    assert 0.09 < len(chosen) / len(ids) < 0.11
    assert chosen == [i for i in ids if sampled(i, 0.1)]  # a replay samples the same requests
    assert set(chosen) <= {i for i in ids if sampled(i, 0.3)}  # a higher rate adds, never swaps
    assert not any(sampled(i, 0.0) for i in ids) and all(sampled(i, 1.0) for i in ids)


def test_the_last_user_message_is_embedded() -> None:
    conversation = request(tenant_id="acme").model_copy(
        update={
            "messages": [
                ChatMessage(role="system", content="You are terse."),
                ChatMessage(role="user", content="  What is PSI?  "),
                ChatMessage(role="assistant", content=None, tool_calls_json="[]"),
                ChatMessage(role="tool", content="{}", tool_call_id="c1"),
            ]
        }
    )
    assert last_user_text(conversation) == "What is PSI?"
    long = request().model_copy(
        update={"messages": [ChatMessage(role="user", content="x" * (MAX_PROMPT_CHARS + 10))]}
    )
    assert last_user_text(long) == "x" * MAX_PROMPT_CHARS
    images = request().model_copy(
        update={"messages": [ChatMessage(role="user", content_parts_json="[]")]}
    )
    assert last_user_text(images) is None


def _admitted(live: Any) -> list[Emit]:
    return [Emit("admitted", live.tenant_id, RequestAdmitted(**envelope(), model="m", checks=[]))]


def test_only_admitted_live_sampled_requests_are_embedded() -> None:
    live = request(occurred_at=AT)
    prompt = prompt_to_embed(live, _admitted(live), 1.0)
    assert prompt is not None and (prompt.tenant_id, prompt.at_ms, prompt.text) == (
        "acme",
        AT_MS,
        "Say hi",
    )
    rejected = RequestRejected(
        **envelope(), stage="admission", error_type="x", message="no", http_status=429
    )
    assert prompt_to_embed(live, [Emit("responses", live.request_id, rejected)], 1.0) is None
    assert prompt_to_embed(live, _admitted(live), 0.0) is None
    replay = request(run_id="replay-1")
    assert prompt_to_embed(replay, _admitted(replay), 1.0) is None
