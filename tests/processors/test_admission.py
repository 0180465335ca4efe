from __future__ import annotations

import pytest

from sluicegate.processors.admission import Admission, AwaitingEmbedding
from sluicegate.processors.cache import ResponseCache
from sluicegate.processors.cache_fill import CacheFiller
from sluicegate.processors.health import HealthSnapshot
from sluicegate.processors.routing import needs_of
from sluicegate.processors.spend import Spend
from sluicegate.schemas.models import (
    BudgetAlert,
    CacheFill,
    ChatMessage,
    CostEntry,
    InferenceTask,
    RequestAdmitted,
    RequestReceived,
    RequestRejected,
    ResponseReady,
    Span,
)
from sluicegate.settings import (
    BatchSettings,
    Deployment,
    GuardrailsSettings,
    LimitRule,
    LimitsSettings,
    ModelAlias,
    Settings,
)
from tests.builders import envelope, request

pytestmark = pytest.mark.unit


def settings() -> Settings:
    return Settings(
        deployments=[
            Deployment(name="a", backend="openai", provider_model="gpt-x", pool="gpu"),
            Deployment(name="b", backend="llamacpp", provider_model="local"),
        ],
        models=[ModelAlias(name="chat", deployments=["a", "b"])],
    )


def test_admits_and_routes_to_the_first_deployment_of_the_alias() -> None:
    incoming = request("chat", stream=True, api_key_id="key-abc")
    emits = Admission(settings=settings()).run(incoming)
    # The guard (injection flagging is on by default) has a span of its own under admission's.
    assert [e.topic for e in emits] == ["inference.gpu", "admitted", "traces", "traces"]
    guard = emits[2].event
    assert guard.name == "guard" and guard.parent_span_id == emits[3].event.span_id
    assert guard.attributes["injection_score"] == "0.00"
    task = emits[0].event
    assert isinstance(task, InferenceTask)
    assert (task.deployment, task.provider_model, task.pool) == ("a", "gpt-x", "gpu")
    assert task.request_id == incoming.request_id == emits[0].key
    assert task.parent_span_id == incoming.span_id and task.trace_id == incoming.trace_id
    assert task.messages == incoming.messages and task.stream is True
    assert task.api_key_id == incoming.api_key_id == "key-abc"
    assert isinstance(emits[1].event, RequestAdmitted) and emits[1].key == "acme"
    span = emits[3].event
    assert isinstance(span, Span) and span.attributes["deployment"] == "a"
    assert span.start_ms <= span.end_ms and span.span_id == task.span_id


def test_unknown_model_is_rejected_with_404_to_the_caller() -> None:
    emits = Admission(settings=settings()).run(request("nope"))
    rejected = next(e for e in emits if e.topic == "responses").event
    assert isinstance(rejected, RequestRejected)
    assert rejected.http_status == 404 and rejected.code == "model_not_found"
    assert not any(e.topic.startswith("inference.") for e in emits)


def test_settings_refuse_an_alias_naming_an_unknown_deployment() -> None:
    with pytest.raises(ValueError, match="unknown deployments"):
        Settings(
            deployments=[Deployment(name="a", backend="openai", provider_model="m")],
            models=[ModelAlias(name="chat", deployments=["zzz"])],
        )


def limited_settings() -> Settings:
    return Settings(
        deployments=[
            Deployment(name="a", backend="openai", provider_model="gpt-x", priority=0),
            Deployment(name="b", backend="openai", provider_model="gpt-y", priority=1),
        ],
        models=[ModelAlias(name="chat", deployments=["a", "b"])],
        limits=LimitsSettings(
            keys={"key-1": LimitRule(requests_per_minute=2)},
            tenants={"acme": LimitRule(usd_per_day=0.01)},
        ),
    )


def test_the_task_carries_the_fallback_chain_and_the_span_the_routing_reason() -> None:
    emits = Admission(settings=limited_settings()).run(request("chat"))
    task, span = emits[0].event, emits[-1].event
    assert (task.deployment, task.fallbacks) == ("a", ["b"])
    assert task.estimated_tokens > 0 and task.admitted_at_ms > 0
    assert span.attributes["strategy"] == "priority" and span.attributes["fallbacks"] == "b"


def test_an_open_breaker_routes_to_the_next_deployment() -> None:
    far = 2**62
    health = {"a": HealthSnapshot("a", "open", open_until_ms=far)}
    admission = Admission(settings=limited_settings(), health=lambda: health)
    task = admission.run(request("chat"))[0].event
    assert (task.deployment, task.fallbacks) == ("b", [])


def test_the_key_limit_answers_429_with_openai_rate_limit_headers() -> None:
    clock = [1_000_000]
    admission = Admission(settings=limited_settings(), clock_ms=lambda: clock[0])
    for _ in range(2):
        assert admission.run(request("chat", api_key_id="key-1"))[0].topic == "inference.default"
    emits = admission.run(request("chat", api_key_id="key-1"))
    rejected = next(e.event for e in emits if e.topic == "responses")
    assert isinstance(rejected, RequestRejected)
    assert (rejected.http_status, rejected.code) == (429, "rate_limit_exceeded")
    assert rejected.headers["x-ratelimit-limit-requests"] == "2"
    assert rejected.headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < rejected.retry_after_s <= 30
    other = admission.run(request("chat", api_key_id="key-2"))
    assert other[0].topic == "inference.default"  # another key is not limited
    clock[0] += 30_000  # half a minute refills one request at 2/min
    assert admission.run(request("chat", api_key_id="key-1"))[0].topic == "inference.default"


def test_spend_past_the_tenant_budget_stops_admission_and_alerts() -> None:
    admission = Admission(settings=limited_settings())
    spend = Spend(limiter=admission.limiter)
    alerts = spend.run(cost_entry(usd=0.006))
    assert [a.event.threshold for a in alerts] == [0.5]
    assert admission.run(request("chat"))[0].topic == "inference.default"
    alerts = spend.run(cost_entry(usd=0.005))
    assert [a.event.threshold for a in alerts] == [0.8, 1.0]
    assert all(isinstance(a.event, BudgetAlert) and a.key == "acme" for a in alerts)
    rejected = next(e.event for e in admission.run(request("chat")) if e.topic == "responses")
    assert (rejected.http_status, rejected.code) == (429, "budget_exceeded")
    assert rejected.error_type == "insufficient_quota"


def test_admission_holds_the_priciest_cost_of_the_chain_and_spend_releases_it() -> None:
    settings = limited_settings()
    priced = [
        settings.deployment("a").model_copy(update={"input_usd_per_mtok": 1.0}),
        settings.deployment("b").model_copy(update={"output_usd_per_mtok": 100.0}),
    ]
    settings = settings.model_copy(update={"deployments": priced})
    state: dict = {}
    admission = Admission(settings=settings, limits_state=state)
    task = admission.run(request("chat"))[0].event
    # The fallback `b` prices the completion at $100/M: the hold is what `b` would cost.
    needs = needs_of(request("chat"))
    assert task.reserved_usd == pytest.approx(needs.completion_tokens * 100.0 / 1e6)
    assert task.reserved_usd > needs.prompt_tokens * 1.0 / 1e6
    held = state["hold:tenant:acme"]["buckets"]
    assert sum(n for _, n in held) == round(task.reserved_usd * 1e9)
    entry = cost_entry(usd=0.0001).model_copy(
        update={"reserved_usd": task.reserved_usd, "admitted_at_ms": task.admitted_at_ms}
    )
    Spend(limiter=admission.limiter).run(entry)
    assert state["hold:tenant:acme"] == {"buckets": []}


def test_an_answer_from_the_guard_releases_the_hold_at_once() -> None:
    settings = limited_settings().model_copy(
        update={"guardrails": GuardrailsSettings(pii_action="block")}
    )
    settings = settings.model_copy(
        update={
            "deployments": [
                d.model_copy(update={"output_usd_per_mtok": 10.0}) for d in settings.deployments
            ]
        }
    )
    state: dict = {}
    admission = Admission(settings=settings, limits_state=state)
    pii = request("chat").model_copy(
        update={"messages": [ChatMessage(role="user", content="mail me at jane.doe@example.com")]}
    )
    emits = admission.run(pii)
    assert next(e.event for e in emits if e.topic == "responses").code == "pii_detected"
    assert state["hold:tenant:acme"] == {"buckets": []}


def test_a_cached_answer_is_served_without_inference_and_records_the_saving() -> None:
    settings = limited_settings()
    cache = ResponseCache(settings.cache, {})
    admission = Admission(settings=settings, cache=cache)
    first = admission.run(request("chat"))  # temperature 0: cacheable
    task = first[0].event
    assert task.cache_key is not None
    fill = CacheFill(
        **envelope(tenant_id="acme"),
        cache_key_json=task.cache_key,
        content="hello",
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=1,
        deployment="a",
        provider_model="gpt-x",
        usd=0.002,
        latency_ms=12.0,
    )
    CacheFiller(cache=cache).run(fill)
    again = admission.run(request("chat", stream=True))
    topics = ["stream", "responses", "cost", "traces", "traces", "traces"]
    assert [e.topic for e in again] == topics  # guard, cache, then admission's span
    response, cost = again[1].event, again[2].event
    assert isinstance(response, ResponseReady) and response.cache_hit
    assert response.message.content == "hello" and response.usd_saved == 0.002
    assert cost.cache_hit and cost.usd == 0 and cost.usd_saved == 0.002
    cache_span, admission_span = again[4].event, again[5].event
    assert (cache_span.name, cache_span.attributes["result"]) == ("cache", "hit:exact")
    assert cache_span.parent_span_id == admission_span.span_id
    assert admission_span.attributes["cache"] == "exact"
    other_tenant = admission.run(request("chat", tenant_id="globex"))
    assert other_tenant[0].topic == "inference.default"  # caches never cross tenants


def cost_entry(*, usd: float) -> CostEntry:
    return CostEntry(
        **envelope(),
        model="chat",
        deployment="a",
        prompt_tokens=10,
        completion_tokens=5,
        usd=usd,
        pricing_version="v1",
    )


def test_a_deferred_semantic_lookup_pauses_for_the_embedding_then_hits() -> None:
    import numpy as np

    vectors = {"Say hi": np.array([1.0, 0.0]), "Say hello": np.array([0.99, 0.14])}
    settings = limited_settings()
    cache = ResponseCache(
        settings.cache.model_copy(update={"similarity_threshold": 0.9}),
        {},
        lambda text: vectors[text],
    )
    admission = Admission(settings=settings, cache=cache, defer_embedding=True)
    first = admission.run(request("chat"))
    assert isinstance(first, list)  # an empty scope: nothing to compare, no embedding needed
    fill = CacheFill(
        **envelope(tenant_id="acme"),
        cache_key_json=first[0].event.cache_key,
        content="hello",
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=1,
        deployment="a",
        provider_model="gpt-x",
        usd=0.001,
        latency_ms=5.0,
    )
    filler = CacheFiller(cache=cache)
    assert filler.text_to_embed(fill) == "Say hi"
    filler.run(fill, vector=vectors["Say hi"])
    paraphrase = request("chat")
    paraphrase = paraphrase.model_copy(
        update={"messages": [paraphrase.messages[0].model_copy(update={"content": "Say hello"})]}
    )
    paused = admission.run(paraphrase)
    assert isinstance(paused, AwaitingEmbedding) and paused.text == "Say hello"
    emits = paused.resume(vectors["Say hello"])
    assert emits[0].topic == "responses" and emits[0].event.cache_hit
    assert emits[-1].event.attributes["cache"] == "semantic"


# -- the batch lane (processors/priority.py) -------------------------------------------------------


def priced_settings() -> Settings:
    return Settings(
        deployments=[
            Deployment(
                name="dear",
                backend="openai",
                provider_model="big",
                pool="gpu",
                input_usd_per_mtok=5,
                output_usd_per_mtok=15,
            ),
            Deployment(
                name="cheap",
                backend="openai",
                provider_model="small",
                input_usd_per_mtok=0.1,
                output_usd_per_mtok=0.2,
            ),
        ],
        models=[ModelAlias(name="chat", deployments=["dear", "cheap"])],
    )


def with_priority(priority: str) -> RequestReceived:
    incoming = request("chat")
    extra = f'{{"sluicegate": {{"priority": "{priority}"}}}}'
    return incoming.model_copy(
        update={"params": incoming.params.model_copy(update={"extra_json": extra})}
    )


def test_a_batch_request_goes_to_the_cheapest_deployment_on_the_batch_lane() -> None:
    admission = Admission(settings=priced_settings())
    interactive = admission.run(request("chat"))
    assert interactive[0].topic == "inference.gpu" and interactive[0].event.deployment == "dear"
    assert "priority" not in interactive[-1].event.attributes

    emits = admission.run(with_priority("batch"))
    task, span = emits[0].event, emits[-1].event
    assert emits[0].topic == "inference.batch"
    assert isinstance(task, InferenceTask)
    assert (task.deployment, task.pool, task.fallbacks) == ("cheap", "batch", ["dear"])
    # The priority rides on the task's params, as the caller sent it.
    assert task.params.extra_json == '{"sluicegate": {"priority": "batch"}}'
    assert span.attributes["priority"] == "batch" and span.attributes["pool"] == "batch"
    assert span.attributes["strategy"] == "cost"


def test_the_batch_pool_is_configurable() -> None:
    settings = priced_settings().model_copy(update={"batch": BatchSettings(pool="overnight")})
    assert Admission(settings=settings).run(with_priority("batch"))[0].topic == (
        "inference.overnight"
    )


def test_an_unknown_priority_is_rejected_with_400() -> None:
    emits = Admission(settings=priced_settings()).run(with_priority("whenever"))
    rejected = next(e for e in emits if e.topic == "responses").event
    assert isinstance(rejected, RequestRejected)
    assert (rejected.http_status, rejected.code) == (400, "invalid_override")
    assert "unknown priority 'whenever'" in rejected.message
    assert not any(e.topic.startswith("inference.") for e in emits)
