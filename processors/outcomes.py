"""Outcome summaries: an inference worker's results per deployment, folded over a short interval.

The health agent needs every call's outcome (breakers, latency EWMAs), but reading each
InferenceResult on the stateful Faust worker cost as much CPU as admission itself. The inference
worker already sees every outcome it produces, so it sums them per deployment and publishes one
DeploymentOutcomes every `interval` (a quarter second by default): the breaker still reacts
within that interval, and the full results stay on sg.inference.results for analytics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sluicegate.processors.envelope import Emit, system_envelope
from sluicegate.schemas.models import DeploymentOutcomes, InferenceFailed, InferenceResult

PRODUCER = "inference"


@dataclass(slots=True)
class _Tally:
    first_at_ms: int
    last_at_ms: int
    successes: int = 0
    latency_ms_sum: float = 0.0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    failures: dict[str, int] = field(default_factory=dict)


class OutcomeAggregator:
    """add() every result or failure as it is published; flush() returns the summaries."""

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}

    def add(self, event: InferenceResult | InferenceFailed) -> None:
        at_ms = int(event.occurred_at.timestamp() * 1000)
        tally = self._tallies.get(event.deployment)
        if tally is None:
            tally = self._tallies[event.deployment] = _Tally(at_ms, at_ms)
        tally.first_at_ms = min(tally.first_at_ms, at_ms)
        tally.last_at_ms = max(tally.last_at_ms, at_ms)
        if isinstance(event, InferenceResult):
            tally.successes += 1
            tally.latency_ms_sum += event.latency_ms
            if event.ttft_ms is not None:
                tally.ttft_ms_sum += event.ttft_ms
                tally.ttft_count += 1
        else:
            tally.failures[event.error_class] = tally.failures.get(event.error_class, 0) + 1

    def flush(self) -> list[Emit]:
        tallies, self._tallies = self._tallies, {}
        return [_summary(deployment, tally) for deployment, tally in tallies.items()]


def _summary(deployment: str, tally: _Tally) -> Emit:
    event = DeploymentOutcomes(
        **system_envelope(producer=PRODUCER),
        deployment=deployment,
        first_at_ms=tally.first_at_ms,
        last_at_ms=tally.last_at_ms,
        successes=tally.successes,
        latency_ms_sum=tally.latency_ms_sum,
        ttft_ms_sum=tally.ttft_ms_sum,
        ttft_count=tally.ttft_count,
        failures=tally.failures,
    )
    return Emit("health.outcomes", deployment, event)
