"""Every process's local copy of the deployments' health (breakers, latency), read from sg.health.

The health agent is the one writer (its table is keyed by deployment); routers in admission and
the inference workers only read, and they need every deployment, not their partitions' share.
"""

from __future__ import annotations

from collections.abc import Mapping

from sluicegate.processors.health import HealthSnapshot
from sluicegate.schemas.models import DeploymentHealth
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from sluicegate.streams.compacted import CompactedTopicReader


def snapshot_of(event: DeploymentHealth) -> HealthSnapshot:
    return HealthSnapshot(
        deployment=event.deployment,
        breaker=event.breaker,  # type: ignore[arg-type]  # written by the health agent only
        open_until_ms=event.open_until_ms,
        latency_ewma_ms=event.latency_ewma_ms,
        ttft_ewma_ms=event.ttft_ewma_ms,
    )


class HealthView:
    """A dict of HealthSnapshot by deployment, kept current by a background thread."""

    def __init__(self, *, settings: Settings, serde: AvroSerde) -> None:
        self._serde = serde
        self._snapshots: dict[str, HealthSnapshot] = {}
        self._reader = CompactedTopicReader(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            client_config=settings.kafka.client_config(),
            topic=settings.topic("health"),
            on_record=self.apply,
        )

    @property
    def snapshots(self) -> Mapping[str, HealthSnapshot]:
        return self._snapshots

    def start(self, timeout_s: float = 30.0) -> None:
        self._reader.start(timeout_s)

    def close(self) -> None:
        self._reader.close()

    def apply(self, value: bytes) -> None:
        """Fold one record in (also how tests feed the view without a broker)."""
        event = self._serde.decode_as(value, DeploymentHealth)
        # A new dict, swapped in whole: readers on other threads never see a half update.
        self._snapshots = {**self._snapshots, event.deployment: snapshot_of(event)}
