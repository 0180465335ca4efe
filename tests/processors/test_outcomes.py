from __future__ import annotations

import pytest

from sluicegate.processors.health_stage import HealthStage
from sluicegate.processors.outcomes import OutcomeAggregator
from sluicegate.schemas.models import DeploymentOutcomes
from sluicegate.settings import ResilienceSettings
from tests.processors.test_health_stage import failed, succeeded

pytestmark = pytest.mark.unit


def test_outcomes_are_summed_per_deployment_and_the_tally_restarts_after_a_flush() -> None:
    outcomes = OutcomeAggregator()
    for event in (succeeded(0.0, 10.0), succeeded(0.1, 30.0), failed(0.2), failed(0.3, "timeout")):
        outcomes.add(event)
    [emit] = outcomes.flush()
    summary = emit.event
    assert emit.topic == "health.outcomes" and emit.key == "d"
    assert isinstance(summary, DeploymentOutcomes)
    assert (summary.successes, summary.latency_ms_sum) == (2, 40.0)
    assert summary.failures == {"server_error": 1, "timeout": 1}
    assert summary.last_at_ms - summary.first_at_ms == 300
    assert outcomes.flush() == []


def test_a_summary_of_failures_opens_the_breaker_like_the_single_events_would() -> None:
    settings = ResilienceSettings(breaker_failures=3, breaker_window_s=10, breaker_cooldown_s=5)
    outcomes = OutcomeAggregator()
    for i in range(3):
        outcomes.add(failed(i * 0.05))
    outcomes.add(succeeded(0.2))
    stage = HealthStage(settings=settings, store={})
    [published] = stage.observe(outcomes.flush()[0].event)
    assert (published.event.previous_breaker, published.event.breaker) == ("closed", "open")


def test_a_summary_feeds_the_latency_ewma() -> None:
    outcomes = OutcomeAggregator()
    for latency in (10.0, 20.0, 30.0):
        outcomes.add(succeeded(0.0, latency))
    stage = HealthStage(settings=ResilienceSettings(), store={})
    [published] = stage.observe(outcomes.flush()[0].event)
    assert published.event.breaker == "closed"
    assert published.event.latency_ewma_ms == pytest.approx(20.0)


def test_circuit_open_refusals_in_a_summary_are_not_observations() -> None:
    outcomes = OutcomeAggregator()
    for i in range(6):
        outcomes.add(failed(i * 0.01, "circuit_open"))
    stage = HealthStage(settings=ResilienceSettings(breaker_failures=3), store={})
    assert stage.observe(outcomes.flush()[0].event) == []
