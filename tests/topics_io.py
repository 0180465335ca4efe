"""Read and write topics from tests with plain confluent-kafka clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Producer, TopicPartition

from sluicegate.schemas.models import Event
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings


def produce(settings: Settings, topic: str, key: bytes | None, value: bytes) -> None:
    producer = Producer(
        {
            **settings.kafka.client_config(),  # the bootstrap address and any SASL/TLS keys
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


def wait_for(
    settings: Settings,
    topic: str,
    match: Callable[[bytes | None, bytes], bool],
    *,
    timeout_s: float = 30.0,
) -> tuple[bytes | None, bytes]:
    """The first record of `topic` (from the beginning) for which `match(key, value)` holds."""
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, -2) for p in metadata.partitions])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            if match(message.key(), message.value()):
                return message.key(), message.value()
        raise AssertionError(f"no matching record on {topic} within {timeout_s}s")
    finally:
        consumer.close()


def wait_for_event(
    settings: Settings,
    serde: AvroSerde,
    topic: str,
    kind: type[Event],
    request_id: str,
    *,
    timeout_s: float = 30.0,
) -> Event:
    def match(_key: bytes | None, value: bytes) -> bool:
        try:
            event = serde.decode(value)
        except Exception:
            return False
        return isinstance(event, kind) and event.request_id == request_id

    return serde.decode(wait_for(settings, topic, match, timeout_s=timeout_s)[1])


def drop_topics(settings: Settings) -> None:
    """Delete the topics of one test run (its prefix, and its Faust changelogs), so runs do not
    pile partitions (and open files) onto a long-lived local broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka.client_config())
    names = [
        name
        for name in admin.list_topics(timeout=10).topics
        if name.startswith(settings.kafka.topic_prefix)
        or name.startswith(f"{settings.worker.app_id}-")
    ]
    if not names:
        return
    for future in admin.delete_topics(names, operation_timeout=30).values():
        try:
            future.result(30)
        except Exception:  # already gone, or the broker is stopping: nothing to keep
            pass
