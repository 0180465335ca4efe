"""One future for a task's records: resolved once all are acknowledged, or failed by the first
error — checked against the real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from sluicegate.errors import BrokerError
from sluicegate.serving.kafka_io import AsyncProducer

pytestmark = pytest.mark.integration


async def test_a_group_resolves_after_every_record_is_acknowledged(kafka_bootstrap: str) -> None:
    topic = f"group-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = AsyncProducer(bootstrap_servers=kafka_bootstrap, loop=asyncio.get_running_loop())
    try:
        acks = producer.group()
        for i in range(5):
            acks.publish(topic, "k", f"v{i}".encode())
        await asyncio.wait_for(acks.done(), 30)
        empty = producer.group()
        await asyncio.wait_for(empty.done(), 1)  # nothing to wait for
    finally:
        producer.close()
        admin.delete_topics([topic])


async def test_a_failed_delivery_fails_the_group(kafka_bootstrap: str) -> None:
    producer = AsyncProducer(bootstrap_servers=kafka_bootstrap, loop=asyncio.get_running_loop())
    try:
        acks = producer.group()
        acks.publish(f"missing-{uuid.uuid4().hex[:8]}.__invalid__/", "k", b"x")
        with pytest.raises(BrokerError):
            await asyncio.wait_for(acks.done(), 60)
    finally:
        producer.close(timeout_s=1)


async def test_a_group_spans_a_lingering_producer_and_waits_for_its_records_too(
    kafka_bootstrap: str,
) -> None:
    """The inference worker's side records (span, cost, ...) go through a producer that
    lingers; the task's offset may only be stored once they are acknowledged as well."""
    topic = f"group-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    loop = asyncio.get_running_loop()
    hot = AsyncProducer(bootstrap_servers=kafka_bootstrap, loop=loop)
    side = AsyncProducer(bootstrap_servers=kafka_bootstrap, loop=loop, linger_ms=300)
    try:
        await asyncio.wait_for(loop.run_in_executor(None, side.ready), 30)
        acks = hot.group()
        acks.publish(topic, "k", b"answer")
        acks.publish(topic, "k", b"span", via=side)
        started = loop.time()
        await asyncio.wait_for(acks.done(), 30)
        assert loop.time() - started >= 0.25  # it waited for the lingering record's ack
    finally:
        hot.close()
        side.close()
        admin.delete_topics([topic])
