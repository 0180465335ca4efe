"""The health stage: inference outcomes in → breaker and latency state, published as events.

It folds the inference workers' DeploymentOutcomes summaries (processors/outcomes.py; single
InferenceResult / InferenceFailed events too) of a deployment into that deployment's state
(processors/resilience.py) and publishes a DeploymentHealth to the compacted sg.health topic
whenever the breaker moves, and at most once per `publish_interval_ms` for latency-only changes,
so routers everywhere see fresh latencies without one health event per request.

The tracker works on an in-process copy of the state; the changelog-backed table gets the
state exactly when a DeploymentHealth is published. Writing the table on every outcome would
cost one changelog record per request (the EWMA moves each time); this way a restart resumes
from the last published state, at most one interval of latency samples behind, and breaker
moves are always written at once.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from typing import Any

from sluicegate.processors.envelope import Emit, child_envelope
from sluicegate.processors.resilience import NOT_CALLS, HealthTracker, Observation
from sluicegate.schemas.models import (
    DeploymentHealth,
    DeploymentOutcomes,
    InferenceFailed,
    InferenceResult,
    ProbeStarted,
)
from sluicegate.settings import ResilienceSettings

PRODUCER = "health"
# Not calls: the worker refused them itself, so they say nothing new about the deployment.
NOT_OBSERVATIONS = NOT_CALLS


class HealthStage:
    def __init__(
        self,
        *,
        settings: ResilienceSettings,
        store: MutableMapping[str, dict[str, Any]],
        publish_interval_ms: int = 1000,
    ) -> None:
        self._table = store
        self._local: dict[str, dict[str, Any]] = {}
        self._tracker = HealthTracker(settings, self._local)
        self._interval_ms = publish_interval_ms
        self._published_ms: dict[str, int] = {}

    def observe(
        self, event: DeploymentOutcomes | InferenceResult | InferenceFailed | ProbeStarted
    ) -> list[Emit]:
        """Fold one input in; a DeploymentHealth out when the breaker moved or one is due."""
        # The events' own times, not the wall clock: replaying the log rebuilds the same state.
        at_ms = int(event.occurred_at.timestamp() * 1000)
        if event.deployment not in self._local:  # first sight since start: resume the table's
            saved = self._table.get(event.deployment)
            if saved is not None:
                self._local[event.deployment] = saved
        observations = list(self._fold(event, at_ms))
        if not observations:
            return []
        changed = [o for o in observations if o.changed]
        shown = changed[-1] if changed else observations[-1]
        last = self._published_ms.get(event.deployment)
        if not changed and last is not None and at_ms - last < self._interval_ms:
            return []
        self._published_ms[event.deployment] = at_ms
        self._table[event.deployment] = self._local[event.deployment]
        return [self._event(event, replace(shown, snapshot=observations[-1].snapshot))]

    def _fold(
        self,
        event: DeploymentOutcomes | InferenceResult | InferenceFailed | ProbeStarted,
        at_ms: int,
    ) -> Iterator[Observation]:
        tracker, deployment = self._tracker, event.deployment
        if isinstance(event, ProbeStarted):
            # Half-open: the probe's lease is published, so every router and worker holds off.
            yield tracker.probe_dispatched(deployment, at_ms)
        elif isinstance(event, InferenceResult):
            yield tracker.observe_success(deployment, event.latency_ms, event.ttft_ms, at_ms)
        elif isinstance(event, InferenceFailed):
            if event.error_class not in NOT_OBSERVATIONS:
                yield tracker.observe_failure(deployment, event.error_class, at_ms)
        else:
            # A summary: its calls replayed one by one at its last time (within a quarter
            # second), successes with the mean latency; then the failures, which is the order
            # that cannot hide a failing deployment behind its successes.
            when = event.last_at_ms
            if event.successes:
                latency = event.latency_ms_sum / event.successes
                ttft = event.ttft_ms_sum / event.ttft_count if event.ttft_count else None
                for _ in range(event.successes):
                    yield tracker.observe_success(deployment, latency, ttft, when)
            for error_class, count in sorted(event.failures.items()):
                if error_class in NOT_OBSERVATIONS:
                    continue
                for _ in range(count):
                    yield tracker.observe_failure(deployment, error_class, when)

    @staticmethod
    def _event(
        cause: DeploymentOutcomes | InferenceResult | InferenceFailed | ProbeStarted,
        observation: Observation,
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
