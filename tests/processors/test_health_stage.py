from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sluicegate.processors.health_stage import HealthStage
from sluicegate.schemas.models import (
    ChatMessage,
    DeploymentHealth,
    InferenceFailed,
    InferenceResult,
    ProbeStarted,
    TokenUsage,
)
from sluicegate.settings import ResilienceSettings
from tests.builders import envelope

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SETTINGS = ResilienceSettings(breaker_failures=3, breaker_window_s=10, breaker_cooldown_s=5)


def failed(at_s: float, error_class: str = "server_error") -> InferenceFailed:
    return InferenceFailed(
        **envelope(occurred_at=T0 + timedelta(seconds=at_s)),
        deployment="d",
        error_class=error_class,
        message="boom",
        retriable=True,
        latency_ms=5.0,
        attempt=1,
    )


def succeeded(at_s: float, latency_ms: float = 10.0) -> InferenceResult:
    return InferenceResult(
        **envelope(occurred_at=T0 + timedelta(seconds=at_s)),
        deployment="d",
        provider_model="p",
        message=ChatMessage(role="assistant", content="hi"),
        finish_reason="stop",
        usage=TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
        latency_ms=latency_ms,
        attempt=1,
    )


def test_failures_open_the_breaker_and_the_transition_is_published() -> None:
    stage = HealthStage(settings=SETTINGS, store={})
    published = [e for i in range(3) for e in stage.observe(failed(i * 0.1))]
    last = published[-1]
    assert last.topic == "health" and last.key == "d"
    assert isinstance(last.event, DeploymentHealth)
    assert (last.event.previous_breaker, last.event.breaker) == ("closed", "open")
    assert last.event.open_until_ms == int((T0 + timedelta(seconds=5.2)).timestamp() * 1000)


def test_latency_only_updates_are_throttled() -> None:
    stage = HealthStage(settings=SETTINGS, store={}, publish_interval_ms=1000)
    counts = [len(stage.observe(succeeded(t))) for t in (0.0, 0.2, 0.4, 1.1)]
    assert counts == [1, 0, 0, 1]


def test_circuit_open_refusals_are_not_observations() -> None:
    stage = HealthStage(settings=SETTINGS, store={})
    for i in range(5):
        assert stage.observe(failed(i, "circuit_open")) == []


def test_state_in_the_store_survives_a_new_stage() -> None:
    store: dict = {}
    first = HealthStage(settings=SETTINGS, store=store)
    for i in range(3):
        first.observe(failed(i * 0.1))
    again = HealthStage(settings=SETTINGS, store=store)  # a restarted worker, same table
    emitted = again.observe(succeeded(1.0))
    assert emitted[0].event.breaker == "open"  # still cooling down: a late success changes nothing


def test_a_started_probe_turns_the_breaker_half_open_with_a_lease() -> None:
    stage = HealthStage(settings=SETTINGS, store={})
    for i in range(3):
        stage.observe(failed(i * 0.1))
    probe = ProbeStarted(
        **envelope(occurred_at=T0 + timedelta(seconds=6)), deployment="d", attempt=1
    )
    emitted = stage.observe(probe)
    assert (emitted[0].event.previous_breaker, emitted[0].event.breaker) == ("open", "half_open")
    lease_end = int((T0 + timedelta(seconds=11)).timestamp() * 1000)
    assert emitted[0].event.open_until_ms == lease_end
    closed = stage.observe(succeeded(6.5))
    assert closed[0].event.breaker == "closed"
