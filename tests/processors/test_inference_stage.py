from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from sluicegate.connectors.ports import Completion, Delta
from sluicegate.errors import BackendError
from sluicegate.processors.health import HealthSnapshot
from sluicegate.processors.inference import InferenceStage
from sluicegate.schemas.models import (
    InferenceFailed,
    InferenceResult,
    InferenceTask,
    ProbeStarted,
    RequestRejected,
    ResponseReady,
    TokenChunk,
)
from sluicegate.settings import Deployment, ResilienceSettings
from tests.builders import task

pytestmark = pytest.mark.unit


class ScriptedBackend:
    def __init__(self, *, words: list[str], error: BackendError | None = None) -> None:
        self.words = words
        self.error = error
        self.calls = 0

    async def complete(self, task: InferenceTask) -> Completion:
        self.calls += 1
        if self.error:
            raise self.error
        return Completion(
            text=" ".join(self.words),
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=len(self.words),
            provider_model="scripted",
        )

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        self.calls += 1
        for word in self.words:
            yield Delta(text=word)
        if self.error:
            raise self.error
        yield Delta(
            text="",
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=len(self.words),
            provider_model="scripted",
        )

    async def aclose(self) -> None:
        return None


async def collect(stage: InferenceStage, t: InferenceTask) -> list:
    return [emit async for emit in stage.run(t)]


async def test_completion_becomes_response_result_and_span() -> None:
    backend = ScriptedBackend(words=["hello", "there"])
    emits = await collect(InferenceStage(backends={"local-smollm2": backend}), task())
    assert [e.topic for e in emits] == ["responses", "inference.results", "traces"]
    response, result = emits[0].event, emits[1].event
    assert isinstance(response, ResponseReady) and isinstance(result, InferenceResult)
    assert response.message.content == "hello there"
    assert response.usage.total_tokens == 5 and result.usage == response.usage
    assert response.request_id == emits[0].key


async def test_streaming_emits_ordered_chunks_then_a_final_chunk_and_the_response() -> None:
    backend = ScriptedBackend(words=["a", "b", "c"])
    emits = await collect(InferenceStage(backends={"local-smollm2": backend}), task(stream=True))
    chunks = [e.event for e in emits if e.topic == "stream"]
    assert all(isinstance(c, TokenChunk) for c in chunks)
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [c.delta for c in chunks] == ["a", "b", "c", ""]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens == 3
    response = next(e.event for e in emits if e.topic == "responses")
    assert response.message.content == "abc"
    assert emits.index(next(e for e in emits if e.topic == "responses")) > 3


NO_RETRIES = ResilienceSettings(max_retries=0)
DEPLOYMENTS = {
    name: Deployment(name=name, backend="openai", provider_model=f"p-{name}", pool=pool)
    for name, pool in (("local-smollm2", "default"), ("backup", "other"), ("third", "default"))
}


def failing(error: BackendError, **kwargs: object) -> InferenceStage:
    return InferenceStage(
        backends={"local-smollm2": ScriptedBackend(words=[], error=error)},
        deployments=DEPLOYMENTS,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_failure_with_nowhere_to_go_answers_the_caller_with_a_mapped_error() -> None:
    error = BackendError(
        "slow down", error_class="rate_limited", status_code=429, retriable=True, retry_after_s=2.0
    )
    emits = await collect(failing(error, resilience=NO_RETRIES), task())
    assert [e.topic for e in emits] == ["inference.results", "traces", "responses"]
    failed, rejected = emits[0].event, emits[2].event
    assert isinstance(rejected, RequestRejected) and isinstance(failed, InferenceFailed)
    assert (rejected.http_status, rejected.error_type, rejected.retry_after_s) == (
        429,
        "rate_limit_error",
        2.0,
    )
    assert failed.error_class == "rate_limited" and failed.retriable
    assert emits[0].key == "local-smollm2"  # results are keyed by deployment (health agent)


async def test_a_retryable_failure_is_retried_as_a_new_task_after_the_backoff() -> None:
    error = BackendError(
        "slow down", error_class="rate_limited", status_code=429, retriable=True, retry_after_s=3.0
    )
    before = int(time.time() * 1000)
    emits = await collect(failing(error), task())
    retry = emits[-1]
    assert retry.topic == "inference.default" and isinstance(retry.event, InferenceTask)
    assert retry.event.deployment == "local-smollm2"
    assert (retry.event.attempt, retry.event.deployment_attempt) == (2, 2)
    assert retry.event.not_before_ms >= before + 3000  # honours Retry-After
    assert retry.event.parent_span_id == emits[0].event.span_id  # chained in the trace


async def test_a_waiting_retry_sleeps_until_its_not_before_time() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    backend = ScriptedBackend(words=["ok"])
    stage = InferenceStage(backends={"local-smollm2": backend}, sleep=sleep)
    later = task().model_copy(update={"not_before_ms": int(time.time() * 1000) + 2000})
    emits = await collect(stage, later)
    assert 1.5 < slept[0] <= 2.0 and emits[0].topic == "responses"


async def test_exhausted_retries_fall_back_along_the_chain_into_the_other_pool() -> None:
    error = BackendError("down", error_class="server_error", status_code=503, retriable=True)
    emits = await collect(
        failing(error, resilience=NO_RETRIES), task(fallbacks=("backup", "third"))
    )
    fallback = emits[-1]
    assert fallback.topic == "inference.other"
    assert fallback.event.deployment == "backup" and fallback.event.provider_model == "p-backup"
    assert fallback.event.fallbacks == ["third"] and fallback.event.deployment_attempt == 1


async def test_a_batch_requests_fallback_stays_on_the_batch_lane() -> None:
    error = BackendError("down", error_class="server_error", status_code=503, retriable=True)
    batch = task(fallbacks=("backup",))
    params = batch.params.model_copy(update={"extra_json": '{"sluicegate": {"priority": "batch"}}'})
    batch = batch.model_copy(update={"params": params, "pool": "batch"})
    fallback = (await collect(failing(error, resilience=NO_RETRIES), batch))[-1]
    assert fallback.event.deployment == "backup"
    assert fallback.topic == "inference.batch" and fallback.event.pool == "batch"


async def test_a_content_policy_refusal_is_not_retried_anywhere() -> None:
    error = BackendError("no", error_class="content_policy", status_code=400)
    emits = await collect(failing(error), task(fallbacks=("backup",)))
    assert emits[-1].topic == "responses" and emits[-1].event.http_status == 400


async def test_an_open_breaker_is_not_called_and_the_task_falls_back() -> None:
    backend = ScriptedBackend(words=["x"])
    far = int(time.time() * 1000) + 60_000
    health = {"local-smollm2": HealthSnapshot("local-smollm2", "open", open_until_ms=far)}
    stage = InferenceStage(
        backends={"local-smollm2": backend}, deployments=DEPLOYMENTS, health=lambda: health
    )
    emits = await collect(stage, task(fallbacks=("third",)))
    assert backend.calls == 0
    assert emits[0].event.error_class == "circuit_open"
    assert emits[-1].topic == "inference.default" and emits[-1].event.deployment == "third"


async def test_failure_mid_stream_is_not_retried_and_still_answers() -> None:
    error = BackendError("boom", error_class="server_error", status_code=500, retriable=True)
    backend = ScriptedBackend(words=["a"], error=error)
    stage = InferenceStage(backends={"local-smollm2": backend}, deployments=DEPLOYMENTS)
    emits = await collect(stage, task(stream=True, fallbacks=("backup",)))
    assert [e.topic for e in emits] == ["stream", "inference.results", "traces", "responses"]
    assert emits[-1].event.http_status == 502


async def test_expired_deadline_skips_the_backend() -> None:
    backend = ScriptedBackend(words=["x"])
    past = int(time.time() * 1000) - 1
    emits = await collect(
        InferenceStage(backends={"local-smollm2": backend}), task(deadline_ms=past)
    )
    assert backend.calls == 0
    # Its own class: an outage's backlog expiring must not open a healthy deployment's breaker.
    assert emits[0].event.error_class == "expired"
    assert emits[-1].event.http_status == 504 and emits[-1].event.error_type == "timeout"
    from sluicegate.processors.resilience import counts_against_breaker

    assert not counts_against_breaker("expired") and counts_against_breaker("timeout")


async def test_unknown_deployment_is_answered_not_dropped() -> None:
    emits = await collect(InferenceStage(backends={}), task("ghost"))
    assert emits[0].event.error_class == "unavailable" and emits[-1].event.http_status == 502


async def test_a_priced_deployment_answers_with_a_cost_entry() -> None:
    from sluicegate.schemas.models import CostEntry
    from sluicegate.settings import Deployment

    priced = Deployment(
        name="local-smollm2",
        backend="openai",
        provider_model="p",
        input_usd_per_mtok=2.0,
        output_usd_per_mtok=8.0,
        pricing_version="v7",
    )
    stage = InferenceStage(
        backends={"local-smollm2": ScriptedBackend(words=["a", "b"])},
        deployments={"local-smollm2": priced},
    )
    emits = await collect(stage, task())
    cost = next(e for e in emits if e.topic == "cost")
    assert isinstance(cost.event, CostEntry) and cost.key == cost.event.tenant_id == "acme"
    assert (cost.event.prompt_tokens, cost.event.completion_tokens) == (3, 2)
    assert cost.event.usd == pytest.approx((3 * 2.0 + 2 * 8.0) / 1_000_000)
    assert cost.event.pricing_version == "v7" and cost.event.model == "smollm2-135m"
    result = next(e.event for e in emits if e.topic == "inference.results")
    assert cost.event.request_id == result.request_id and cost.event.span_id == result.span_id
    # Drift and anomaly detection read the attempt's latency from the tenant-keyed ledger.
    assert cost.event.latency_ms == round(result.latency_ms)


async def test_failures_cost_nothing() -> None:
    from sluicegate.settings import Deployment

    error = BackendError("down", error_class="server_error", status_code=500, retriable=True)
    stage = InferenceStage(
        backends={"local-smollm2": ScriptedBackend(words=[], error=error)},
        deployments={
            "local-smollm2": Deployment(
                name="local-smollm2", backend="openai", provider_model="p", input_usd_per_mtok=1.0
            )
        },
    )
    assert not [e for e in await collect(stage, task()) if e.topic == "cost"]


async def test_after_the_cool_down_only_one_task_probes_and_the_others_fall_back() -> None:
    now = int(time.time() * 1000)
    health = {"local-smollm2": HealthSnapshot("local-smollm2", "open", open_until_ms=now - 1)}
    backend = ScriptedBackend(words=["ok"])
    stage = InferenceStage(
        backends={"local-smollm2": backend}, deployments=DEPLOYMENTS, health=lambda: health
    )
    probe = stage.run(task(fallbacks=("third",)))
    first = await anext(probe)  # the probe is claimed before its call starts
    assert first.topic == "health.outcomes" and isinstance(first.event, ProbeStarted)
    meanwhile = await collect(stage, task(fallbacks=("third",)))
    assert meanwhile[0].event.error_class == "circuit_open"
    assert meanwhile[-1].event.deployment == "third"
    rest = [emit async for emit in probe]
    assert rest[0].topic == "responses" and backend.calls == 1
    # The health view moves on (the probe closed the breaker): calls flow again.
    health["local-smollm2"] = HealthSnapshot("local-smollm2", "closed")
    assert (await collect(stage, task()))[0].topic == "responses"


def guarded_stage(words: list[str], **guardrails: object) -> InferenceStage:
    from sluicegate.processors.guard_output import OutputGuard
    from sluicegate.settings import GuardrailsSettings

    priced = Deployment(
        name="local-smollm2", backend="openai", provider_model="p", output_usd_per_mtok=8.0
    )
    return InferenceStage(
        backends={"local-smollm2": ScriptedBackend(words=words)},
        deployments={"local-smollm2": priced},
        output_guard=OutputGuard(settings=GuardrailsSettings(**guardrails)),
    )


async def test_the_output_guard_masks_pii_in_what_the_caller_and_the_log_see() -> None:
    stage = guarded_stage(["write", "to", "jane.doe@example.com"], output_pii_action="mask")
    cacheable = task().model_copy(update={"cache_key": '{"k": 1}'})
    emits = await collect(stage, cacheable)
    by_topic = {e.topic: e.event for e in emits}
    response, result = by_topic["responses"], by_topic["inference.results"]
    assert isinstance(response, ResponseReady)
    assert "jane.doe@example.com" not in (response.message.content or "")
    assert response.message == result.message
    assert "jane.doe@example.com" not in by_topic["cache"].content
    spans = {e.event.name: e.event for e in emits if e.topic == "traces"}
    guard, inference = spans["output_guard"], spans["inference"]
    assert guard.parent_span_id == inference.span_id and guard.status == "ok"
    assert guard.attributes["output_pii"] == "email:1"
    assert guard.attributes["policy_rule"] == "settings.output_pii"


async def test_a_blocked_answer_is_withheld_with_502_still_costed_and_not_cached() -> None:
    from sluicegate.settings import BannedTopic

    topic = BannedTopic(name="weapons", keywords=["detonator"])
    stage = guarded_stage(["build", "a", "detonator"], banned_topics=[topic])
    cacheable = task().model_copy(update={"cache_key": '{"k": 1}'})
    emits = await collect(stage, cacheable)
    topics = [e.topic for e in emits]
    assert "cache" not in topics and topics.count("responses") == 1
    withheld = next(e.event for e in emits if e.topic == "responses")
    assert isinstance(withheld, RequestRejected)
    assert (withheld.stage, withheld.http_status, withheld.code) == (
        "output_guard",
        502,
        "banned_topic",
    )
    assert "detonator" not in withheld.message and "weapons" in withheld.message
    cost = next(e.event for e in emits if e.topic == "cost")
    assert cost.usd == pytest.approx(3 * 8.0 / 1e6)  # the model was called: it was paid for
    guard = next(e.event for e in emits if e.topic == "traces" and e.event.name == "output_guard")
    assert guard.status == "error" and guard.attributes["topics"] == "weapons"


async def test_without_output_rules_no_guard_runs() -> None:
    emits = await collect(guarded_stage(["jane.doe@example.com"]), task())
    assert (
        "jane.doe@example.com"
        in next(e.event for e in emits if e.topic == "responses").message.content
    )
    assert not [e for e in emits if e.topic == "traces" and e.event.name == "output_guard"]
