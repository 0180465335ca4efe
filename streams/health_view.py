"""Every process's local copy of the deployments' health (breakers, latency), read from sg.health.

The health agent is the one writer (its table is keyed by deployment); routers in admission and
the inference workers only read. They need every deployment, not their partitions' share, so this
reads all partitions of the compacted topic without a consumer group — what a Faust GlobalTable
would do, without its known recovery bugs (faust #212, robinhood/faust #716).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from sluicegate.processors.health import HealthSnapshot
from sluicegate.schemas.models import DeploymentHealth
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.kafka_io import fetch_ready
from sluicegate.settings import Settings

log = logging.getLogger(__name__)


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
        self._settings = settings
        self._serde = serde
        self._snapshots: dict[str, HealthSnapshot] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"sluicegate-health-view-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "socket.nagle.disable": True,
            }
        )
        self._running = False
        self._thread = threading.Thread(target=self._run, name="health-view", daemon=True)

    @property
    def snapshots(self) -> Mapping[str, HealthSnapshot]:
        return self._snapshots

    def start(self, timeout_s: float = 30.0) -> None:
        topic = self._settings.topic("health")
        metadata = self._consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        )
        self._running = True
        self._thread.start()

    def close(self) -> None:
        self._running = False
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._consumer.close()

    def apply(self, value: bytes) -> None:
        """Fold one record in (also how tests feed the view without a broker)."""
        event = self._serde.decode_as(value, DeploymentHealth)
        # A new dict, swapped in whole: readers on other threads never see a half update.
        self._snapshots = {**self._snapshots, event.deployment: snapshot_of(event)}

    def _run(self) -> None:
        while self._running:
            for message in fetch_ready(self._consumer, wait_s=0.2, max_records=500, who="health"):
                try:
                    self.apply(message.value() or b"")
                except Exception as error:  # a bad record must not blind the router
                    log.warning("health view: skipped a record: %s", error)
