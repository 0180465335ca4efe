"""Publishing from the command line: events journaled the way the bridge journals them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sluicegate.errors import BrokerError
from sluicegate.settings import Settings


def publish_events(settings: Settings, topic: str, events: Iterable[tuple[str, Any]]) -> None:
    """Append (key, event) pairs to the catalogue topic `topic`, in order, with an idempotent
    acks=all producer and the murmur2 partitioner every producer here uses; raise BrokerError
    when any is not acknowledged."""
    from confluent_kafka import Producer

    from sluicegate.connectors.schema_registry import build_serde

    serde = build_serde(settings)
    producer = Producer(
        {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    name = settings.topic(topic)
    for key, event in events:
        producer.produce(name, key=key.encode(), value=serde.encode(event), on_delivery=delivered)
    if producer.flush(30) != 0 or failures:
        raise BrokerError(f"{name}: events not written: {failures or 'flush timed out'}")
