"""EventMetrics folds published events into Prometheus metrics: each test feeds events (hand-built,
or the real stages' Emits so the counting rules are checked against what is really published)
and reads the samples back from the registry."""

from __future__ import annotations

import urllib.request
from datetime import timedelta

import pytest

from sluicegate.connectors.ports import Completion
from sluicegate.errors import BackendError
from sluicegate.processors.admission import Admission
from sluicegate.processors.cache import ResponseCache
from sluicegate.processors.cache_fill import CacheFiller
from sluicegate.processors.envelope import Emit, now
from sluicegate.processors.finish import Finisher
from sluicegate.processors.resilience import Fallback, GiveUp, Retry
from sluicegate.schemas.models import (
    BudgetAlert,
    CacheFill,
    CostEntry,
    DeploymentHealth,
    DriftDetected,
    InferenceFailed,
    InferenceResult,
    RequestRejected,
    Span,
    TokenChunk,
    TokenUsage,
)
from sluicegate.serving.event_metrics import EventMetrics, start_metrics_server
from sluicegate.settings import Deployment, LimitRule, LimitsSettings, ModelAlias, Settings
from tests.builders import envelope, request, task

pytestmark = pytest.mark.unit


def value(metrics: EventMetrics, metric: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def span(name: str, *, ms: float, status: str = "ok", **attributes: str) -> Span:
    start = now()
    return Span(
        **envelope(),
        name=name,
        start_ms=start,
        end_ms=start + timedelta(milliseconds=ms),
        status=status,
        attributes=attributes,
    )


def result(deployment: str = "a", *, latency_ms: float, ttft_ms: float | None) -> InferenceResult:
    return InferenceResult(
        **envelope(),
        deployment=deployment,
        provider_model="gpt-x",
        message={"role": "assistant", "content": "hi"},
        finish_reason="stop",
        usage=TokenUsage(prompt_tokens=12, completion_tokens=3, total_tokens=15),
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
    )


def cost(
    *, usd: float, tenant: str = "acme", cache_hit: bool = False, saved: float = 0.0
) -> CostEntry:
    return CostEntry(
        **envelope(tenant_id=tenant),
        model="chat",
        deployment="a",
        prompt_tokens=10,
        completion_tokens=5,
        usd=usd,
        pricing_version="v1",
        cache_hit=cache_hit,
        usd_saved=saved,
    )


def health(breaker: str, *, latency_ms: float | None = 250.0) -> DeploymentHealth:
    return DeploymentHealth(
        **envelope(),
        deployment="a",
        breaker=breaker,
        previous_breaker="closed",
        latency_ewma_ms=latency_ms,
    )


def test_spans_time_each_stage_by_name_and_status() -> None:
    metrics = EventMetrics()
    metrics.observe(Emit("traces", "t", span("admission", ms=0.8)))
    metrics.observe(Emit("traces", "t", span("inference", ms=1500)))
    metrics.observe(Emit("traces", "t", span("inference", ms=40, status="error")))
    count = "sluicegate_stage_duration_seconds_count"
    assert value(metrics, count, name="admission", status="ok") == 1
    assert value(metrics, count, name="inference", status="ok") == 1
    assert value(metrics, count, name="inference", status="error") == 1
    assert value(
        metrics, "sluicegate_stage_duration_seconds_sum", name="inference", status="ok"
    ) == pytest.approx(1.5)
    bucket = "sluicegate_stage_duration_seconds_bucket"
    assert value(metrics, bucket, name="admission", status="ok", le="0.001") == 1
    assert value(metrics, bucket, name="admission", status="ok", le="0.0005") == 0


def test_results_feed_latency_ttft_and_tokens_per_deployment() -> None:
    metrics = EventMetrics()
    metrics.observe(Emit("inference.results", "a", result(latency_ms=800, ttft_ms=120)))
    metrics.observe(Emit("inference.results", "a", result(latency_ms=400, ttft_ms=None)))
    assert value(metrics, "sluicegate_inference_latency_seconds_count", deployment="a") == 2
    assert value(
        metrics, "sluicegate_inference_latency_seconds_sum", deployment="a"
    ) == pytest.approx(1.2)
    assert value(metrics, "sluicegate_inference_ttft_seconds_count", deployment="a") == 1
    assert value(metrics, "sluicegate_inference_ttft_seconds_sum", deployment="a") == 0.12
    tokens = "sluicegate_inference_tokens_total"
    assert value(metrics, tokens, deployment="a", kind="prompt") == 24
    assert value(metrics, tokens, deployment="a", kind="completion") == 6


def test_failures_retries_fallbacks_and_give_ups_from_the_finishers_events() -> None:
    deployments = {
        name: Deployment(name=name, backend="openai", provider_model=name) for name in ("a", "b")
    }
    finisher = Finisher(deployments=deployments)
    metrics = EventMetrics()
    first = task("a", fallbacks=("b",))
    error = BackendError("busy", error_class="rate_limited", status_code=429, retriable=True)
    failure, emits = finisher.failed(first, error, started=now(), latency_ms=30.0)
    retry = finisher.next_attempt(first, failure, Retry("a", 0.1, "retriable", 0))
    for emit in [*emits, retry]:
        metrics.observe(emit)
    second = retry.event
    error = BackendError("down", error_class="server_error", status_code=503, retriable=True)
    failure, emits = finisher.failed(second, error, started=now(), latency_ms=20.0)
    fallback = finisher.next_attempt(second, failure, Fallback("b", (), "next of the chain"))
    for emit in [*emits, fallback]:
        metrics.observe(emit)
    third = fallback.event
    error = BackendError("timeout", error_class="timeout")
    failure, emits = finisher.failed(third, error, started=now(), latency_ms=9000.0)
    for emit in [*emits, finisher.gave_up(third, failure, GiveUp("timeout", 504, "gave up"))]:
        metrics.observe(emit)

    failures = "sluicegate_inference_failures_total"
    assert value(metrics, failures, deployment="a", error_class="rate_limited") == 1
    assert value(metrics, failures, deployment="a", error_class="server_error") == 1
    assert value(metrics, failures, deployment="b", error_class="timeout") == 1
    assert value(metrics, "sluicegate_inference_retries_total", deployment="a") == 1
    assert value(metrics, "sluicegate_inference_fallbacks_total", deployment="b") == 1
    assert value(metrics, "sluicegate_inference_fallbacks_total", deployment="a") is None
    rejections = "sluicegate_rejections_total"
    assert value(metrics, rejections, stage="inference", code="timeout", http_status="504") == 1
    spans = "sluicegate_stage_duration_seconds_count"
    assert value(metrics, spans, name="inference", status="error") == 3


def test_a_successful_call_counts_its_response_and_cost() -> None:
    deployment = Deployment(
        name="a",
        backend="openai",
        provider_model="gpt-x",
        input_usd_per_mtok=1.0,
        output_usd_per_mtok=2.0,
    )
    metrics = EventMetrics()
    completion = Completion("hi", "stop", 1000, 500, "gpt-x")
    for emit in Finisher(deployments={"a": deployment}).succeeded(
        task("a"), completion, started=now(), latency_ms=300.0, ttft_ms=None
    ):
        metrics.observe(emit)
    assert value(metrics, "sluicegate_responses_total", model="smollm2-135m", source="inference")
    usd = value(
        metrics, "sluicegate_cost_usd_total", model="smollm2-135m", deployment="a", tenant="acme"
    )
    assert usd == pytest.approx(0.002)
    assert (
        value(metrics, "sluicegate_inference_tokens_total", deployment="a", kind="prompt") == 1000
    )


def limited_settings() -> Settings:
    return Settings(
        deployments=[
            Deployment(name="a", backend="openai", provider_model="gpt-x", priority=0),
            Deployment(name="b", backend="openai", provider_model="gpt-y", priority=1),
        ],
        models=[ModelAlias(name="chat", deployments=["a", "b"])],
        limits=LimitsSettings(keys={"key-1": LimitRule(requests_per_minute=1)}),
    )


def test_admission_counts_routing_cache_misses_hits_and_rejections_once_each() -> None:
    settings = limited_settings()
    cache = ResponseCache(settings.cache, {})
    admission = Admission(settings=settings, cache=cache)
    metrics = EventMetrics()

    def admit(model: str = "chat", **kwargs: object) -> list[Emit]:
        emits = admission.run(request(model, **kwargs))
        assert isinstance(emits, list)
        for emit in emits:
            metrics.observe(emit)
        return emits

    missed = admit()  # temperature 0: cacheable, looked up, not found
    fill = CacheFill(
        **envelope(tenant_id="acme"),
        cache_key_json=missed[0].event.cache_key,
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
    admit(stream=True)  # the same question: an exact hit
    admit(api_key_id="key-1", tenant_id="globex")  # another tenant's scope: a miss
    admit(api_key_id="key-1", tenant_id="globex")  # over the key's 1/min: 429
    admit("nope")  # no such alias: 404

    assert value(metrics, "sluicegate_cache_misses_total") == 2
    assert value(metrics, "sluicegate_cache_hits_total", tier="exact") == 1
    assert value(metrics, "sluicegate_cache_bypassed_total") == 0
    saved = value(
        metrics, "sluicegate_cache_usd_saved_total", model="chat", deployment="a", tenant="acme"
    )
    assert saved == pytest.approx(0.002)
    assert value(metrics, "sluicegate_responses_total", model="chat", source="cache") == 1
    routed = "sluicegate_routing_decisions_total"
    assert value(metrics, routed, strategy="priority", deployment="a") == 2
    rejections = "sluicegate_rejections_total"  # admission writes each twice; counted once
    limited = {"stage": "admission", "code": "rate_limit_exceeded", "http_status": "429"}
    assert value(metrics, rejections, **limited) == 1
    missing = {"stage": "admission", "code": "model_not_found", "http_status": "404"}
    assert value(metrics, rejections, **missing) == 1
    spans = "sluicegate_stage_duration_seconds_count"
    assert value(metrics, spans, name="admission", status="ok") == 3
    assert value(metrics, spans, name="admission", status="error") == 2


def test_requests_not_cacheable_are_bypasses_not_misses() -> None:
    metrics = EventMetrics()
    first = task("a")
    assert first.cache_key is None and first.attempt == 1
    metrics.observe(Emit("inference.default", first.request_id, first))
    assert value(metrics, "sluicegate_cache_bypassed_total") == 1
    assert value(metrics, "sluicegate_cache_misses_total") == 0


def test_semantic_hits_are_counted_by_tier() -> None:
    metrics = EventMetrics()
    metrics.observe(Emit("traces", "t", span("admission", ms=1, cache="semantic")))
    assert value(metrics, "sluicegate_cache_hits_total", tier="semantic") == 1
    assert value(metrics, "sluicegate_routing_decisions_total", strategy="priority") is None


def test_rejections_without_a_code_and_from_other_stages() -> None:
    metrics = EventMetrics()
    rejected = RequestRejected(
        **envelope(),
        stage="guard",
        error_type="invalid_request_error",
        message="no",
        http_status=400,
    )
    metrics.observe(Emit("responses", rejected.request_id, rejected))
    labels = {"stage": "guard", "code": "", "http_status": "400"}
    assert value(metrics, "sluicegate_rejections_total", **labels) == 1


def test_cost_by_model_and_deployment_with_and_without_tenant_labels() -> None:
    metrics = EventMetrics()
    metrics.observe(Emit("cost", "acme", cost(usd=0.01)))
    metrics.observe(Emit("cost", "acme", cost(usd=0.02)))
    metrics.observe(Emit("cost", "globex", cost(usd=0.5, tenant="globex")))
    name = "sluicegate_cost_usd_total"
    assert value(metrics, name, model="chat", deployment="a", tenant="acme") == pytest.approx(0.03)
    assert value(metrics, name, model="chat", deployment="a", tenant="globex") == 0.5

    untenanted = EventMetrics(tenant_labels=False)
    for tenant, usd in (("acme", 0.01), ("globex", 0.5)):
        untenanted.observe(Emit("cost", tenant, cost(usd=usd, tenant=tenant)))
    untenanted.observe(Emit("cost", "acme", cost(usd=0, cache_hit=True, saved=0.3)))
    assert value(untenanted, name, model="chat", deployment="a") == pytest.approx(0.51)
    saved = value(untenanted, "sluicegate_cache_usd_saved_total", model="chat", deployment="a")
    assert saved == 0.3
    assert "tenant=" not in untenanted.render()


def test_a_free_deployment_shows_up_at_zero_cost() -> None:
    metrics = EventMetrics()
    metrics.observe(Emit("cost", "acme", cost(usd=0.0)))
    labels = {"model": "chat", "deployment": "a", "tenant": "acme"}
    assert value(metrics, "sluicegate_cost_usd_total", **labels) == 0


def test_health_sets_the_breaker_and_latency_gauges() -> None:
    metrics = EventMetrics()
    metrics.observe(Emit("health", "a", health("open")))
    assert value(metrics, "sluicegate_deployment_breaker_state", deployment="a") == 2
    assert value(metrics, "sluicegate_deployment_latency_ewma_seconds", deployment="a") == 0.25
    metrics.observe(Emit("health", "a", health("half_open", latency_ms=None)))
    assert value(metrics, "sluicegate_deployment_breaker_state", deployment="a") == 1
    assert value(metrics, "sluicegate_deployment_latency_ewma_seconds", deployment="a") == 0.25
    metrics.observe(Emit("health", "a", health("closed", latency_ms=100.0)))
    assert value(metrics, "sluicegate_deployment_breaker_state", deployment="a") == 0
    assert value(metrics, "sluicegate_deployment_latency_ewma_seconds", deployment="a") == 0.1


def test_budget_alerts_by_subject_kind_and_threshold() -> None:
    metrics = EventMetrics()
    for threshold in (0.5, 0.8, 1.0):
        alert = BudgetAlert(
            **envelope(),
            subject_kind="tenant",
            subject_id="acme",
            period="day",
            period_start="2025-01-01",
            threshold=threshold,
            budget_usd=1.0,
            spent_usd=threshold,
        )
        metrics.observe(Emit("alerts", "acme", alert))
    name = "sluicegate_budget_alerts_total"
    labels = {"subject_kind": "tenant", "period": "day", "tenant": "acme"}
    assert value(metrics, name, threshold="0.8", **labels) == 1
    assert value(metrics, name, threshold="1", **labels) == 1


def test_drift_findings_count_and_show_their_latest_statistic() -> None:
    metrics = EventMetrics()
    for value_ in (0.31, 0.45):
        finding = DriftDetected(
            **envelope(),
            metric="latency_ms",
            statistic="psi",
            value=value_,
            threshold=0.2,
            window_start_ms=now() - timedelta(minutes=5),
            window_end_ms=now(),
        )
        metrics.observe(Emit("drift", "latency_ms", finding))
    labels = {"metric": "latency_ms", "statistic": "psi", "tenant": "acme"}
    assert value(metrics, "sluicegate_drift_detected_total", **labels) == 2
    assert value(metrics, "sluicegate_drift_statistic", kind="value", **labels) == 0.45
    assert value(metrics, "sluicegate_drift_statistic", kind="threshold", **labels) == 0.2


def test_events_no_metric_reads_are_ignored_and_bad_ones_never_raise() -> None:
    metrics = EventMetrics()
    chunk = TokenChunk(**envelope(), index=0, delta="hi", model="chat")
    metrics.observe(Emit("stream", "r", chunk))
    broken = InferenceFailed.model_construct(**envelope(), error_class="timeout")  # no deployment
    metrics.observe(Emit("inference.results", "a", broken))  # logged, not raised
    assert "sluicegate_inference_failures_total{" not in metrics.render()


def test_two_instances_do_not_share_samples() -> None:
    one, other = EventMetrics(), EventMetrics()
    one.observe(Emit("cost", "acme", cost(usd=1.0)))
    labels = {"model": "chat", "deployment": "a", "tenant": "acme"}
    assert value(one, "sluicegate_cost_usd_total", **labels) == 1
    assert value(other, "sluicegate_cost_usd_total", **labels) is None


def test_the_server_answers_metrics_over_http() -> None:
    metrics = EventMetrics()
    metrics.observe(Emit("health", "a", health("open")))
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = answer.read().decode()
        assert answer.status == 200
        assert 'sluicegate_deployment_breaker_state{deployment="a"} 2.0' in body
    finally:
        server.close()


def test_guard_spans_count_decisions_by_stage_action_and_rule() -> None:
    metrics = EventMetrics()
    decided = {"policy_rule": "settings.pii", "policy_action": "mask", "pii": "email:1"}
    for name, attributes in (("guard", decided), ("guard", {}), ("output_guard", decided)):
        metrics.observe(Emit("traces", "t", span(name, ms=0.2, **attributes)))
    name = "sluicegate_guardrail_decisions_total"
    assert value(metrics, name, stage="input", action="mask", rule="settings.pii") == 1
    assert value(metrics, name, stage="input", action="allow", rule="default") == 1
    assert value(metrics, name, stage="output", action="mask", rule="settings.pii") == 1
