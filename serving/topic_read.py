"""Reading a topic's past: from the beginning (or a point in time) to the end it has now.

Replays (`sluicegate replay`, `sluicegate rag --reindex`) and run comparisons read recorded
events with a fresh consumer, an explicit assignment and no committed offsets, so reading
never moves any live consumer group and the same slice can be read again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, Message, TopicPartition

from sluicegate.errors import BrokerError
from sluicegate.settings import Settings


def read_to_end(
    settings: Settings,
    topic: str,
    *,
    since_ms: int | None = None,
    batch: int = 500,
    timeout_s: float = 30.0,
    strict: bool = False,
) -> Iterator[list[Message]]:
    """Batches of a topic's records from `since_ms` (broker timestamps; None: the beginning) to
    the end it had when called (or until nothing came for `timeout_s`). `strict` is for readers
    that verify the log (the chaos soak): a consumer error, or an end not reached, raises
    `BrokerError` instead of ending the read short."""
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"sluicegate-read-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        ends: dict[int, int] = {}
        starts: dict[int, int] = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if high > low:
                ends[partition], starts[partition] = high, low
        if since_ms is not None and ends:
            wanted = [TopicPartition(topic, p, since_ms) for p in ends]
            for found in consumer.offsets_for_times(wanted, timeout=timeout_s):
                if found.offset < 0:  # nothing at or after since_ms
                    ends.pop(found.partition)
                else:
                    starts[found.partition] = found.offset
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        ends = {p: end for p, end in ends.items() if starts[p] < end}
        idle_since = time.monotonic()
        while ends and time.monotonic() - idle_since < timeout_s:
            records = []
            for message in consumer.consume(num_messages=batch, timeout=1.0):
                idle_since = time.monotonic()
                error = message.error()
                if error is not None:
                    if strict:
                        raise BrokerError(f"reading {topic}: {error}", topic=topic)
                    continue
                end = ends.get(message.partition())
                if end is None or message.offset() >= end:
                    continue
                records.append(message)
                if message.offset() + 1 >= end:
                    ends.pop(message.partition())
            if records:
                yield records
        if ends and strict:
            raise BrokerError(
                f"reading {topic}: nothing for {timeout_s:g} s before the end: {ends}", topic=topic
            )
    finally:
        consumer.close()
