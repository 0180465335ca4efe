"""The health stage: inference outcomes in → breaker and latency state, published as events.

It folds every InferenceResult / InferenceFailed of a deployment into that deployment's state
(processors/resilience.py) and publishes a DeploymentHealth to the compacted sg.health topic
whenever the breaker moves, and at most once per `publish_interval_ms` for latency-only changes,
so routers everywhere see fresh latencies without one health event per request.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from sluicegate.processors.envelope import Emit, child_envelope
from sluicegate.processors.resilience import HealthTracker, Observation
from sluicegate.schemas.models import (
    DeploymentHealth,
    InferenceFailed,
    InferenceResult,
    ProbeStarted,
)
from sluicegate.settings import ResilienceSettings

PRODUCER = "health"
# Not calls: the worker refused them itself, so they say nothing new about the deployment.
NOT_OBSERVATIONS = frozenset({"circuit_open"})


class HealthStage:
    def __init__(
        self,
        *,
        settings: ResilienceSettings,
        store: MutableMapping[str, dict[str, Any]],
        publish_interval_ms: int = 1000,
    ) -> None:
        self._tracker = HealthTracker(settings, store)
        self._interval_ms = publish_interval_ms
        self._published_ms: dict[str, int] = {}

    def observe(self, event: InferenceResult | InferenceFailed | ProbeStarted) -> list[Emit]:
        # The event's own time, not the wall clock: replaying the log rebuilds the same state.
        at_ms = int(event.occurred_at.timestamp() * 1000)
        if isinstance(event, ProbeStarted):
            # Half-open: the probe's lease is published, so every router and worker holds off.
            observation = self._tracker.probe_dispatched(event.deployment, at_ms)
        elif isinstance(event, InferenceResult):
            observation = self._tracker.observe_success(
                event.deployment, event.latency_ms, event.ttft_ms, at_ms
            )
        elif event.error_class in NOT_OBSERVATIONS:
            return []
        else:
            observation = self._tracker.observe_failure(event.deployment, event.error_class, at_ms)
        last = self._published_ms.get(event.deployment)
        if not observation.changed and last is not None and at_ms - last < self._interval_ms:
            return []
        self._published_ms[event.deployment] = at_ms
        return [self._event(event, observation)]

    @staticmethod
    def _event(
        cause: InferenceResult | InferenceFailed | ProbeStarted, observation: Observation
    ) -> Emit:
        snapshot = observation.snapshot
        health = DeploymentHealth(
            **child_envelope(cause, producer=PRODUCER),
            deployment=snapshot.deployment,
            breaker=snapshot.breaker,
            previous_breaker=observation.previous,
            open_until_ms=snapshot.open_until_ms,
            latency_ewma_ms=snapshot.latency_ewma_ms,
            ttft_ewma_ms=snapshot.ttft_ewma_ms,
            reason=observation.reason,
        )
        return Emit("health", snapshot.deployment, health)
