"""AsyncProducer re-creates its librdkafka producer after a fatal (idempotence) error, and the
records the old one still held fail instead of hanging (serving/kafka_io.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException

from sluicegate.errors import BrokerError
from sluicegate.serving import kafka_io

pytestmark = pytest.mark.unit

FATAL = KafkaError(KafkaError._FATAL, "fenced: out of order sequence", fatal=True)


class FakeProducer:
    """Stands in for confluent_kafka.Producer: records produce() calls, acks on poll()."""

    made: ClassVar[list[FakeProducer]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.pending: list[Any] = []
        self.produced: list[bytes] = []
        self.refuse_with: KafkaError | None = None
        self.purged = False
        FakeProducer.made.append(self)

    def produce(self, topic: str, *, key: Any, value: bytes, on_delivery: Any) -> None:
        if self.refuse_with is not None:
            raise KafkaException(self.refuse_with)
        self.produced.append(value)
        self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        served, self.pending = self.pending, []
        if not served:
            time.sleep(min(timeout, 0.01))  # like librdkafka: wait a little when idle
        error = KafkaError(KafkaError._PURGE_QUEUE, "purged") if self.purged else None
        for callback in served:
            callback(error, None)
        return len(served)

    def purge(self, in_queue: bool = True, in_flight: bool = True) -> None:
        self.purged = True

    def flush(self, _timeout: float) -> int:
        self.poll(0)
        return 0

    def list_topics(self, timeout: float) -> None:
        return None


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    FakeProducer.made = []
    monkeypatch.setattr(kafka_io, "Producer", FakeProducer)
    return FakeProducer


async def test_a_fatal_error_callback_makes_the_next_publish_use_a_new_producer(
    fake: type[FakeProducer],
) -> None:
    producer = kafka_io.AsyncProducer(
        bootstrap_servers="127.0.0.1:1", loop=asyncio.get_running_loop()
    )
    try:
        await asyncio.wait_for(producer.publish("t", "k", b"one"), 5)
        first = fake.made[0]
        first.config["error_cb"](FATAL)  # what librdkafka reports on its poll thread
        await asyncio.wait_for(producer.publish("t", "k", b"two"), 5)
        assert len(fake.made) == 2 and producer.recreated == 1
        assert first.produced == [b"one"] and fake.made[1].produced == [b"two"]
        assert first.purged
    finally:
        producer.close(1)


async def test_records_the_failed_producer_still_held_fail_rather_than_hang(
    fake: type[FakeProducer],
) -> None:
    producer = kafka_io.AsyncProducer(
        bootstrap_servers="127.0.0.1:1", loop=asyncio.get_running_loop()
    )
    try:
        producer._running = False  # no poll thread: keep the record queued in the old producer
        producer._thread.join(1)
        stuck = producer.publish("t", "k", b"queued")
        fake.made[0].config["error_cb"](FATAL)
        producer.publish("t", "k", b"after")  # re-creates; the old one's records are purged
        with pytest.raises(BrokerError, match="purged"):
            await asyncio.wait_for(stuck, 5)
    finally:
        producer.close(1)


async def test_a_produce_refused_as_fatal_is_sent_again_on_a_new_producer(
    fake: type[FakeProducer],
) -> None:
    producer = kafka_io.AsyncProducer(
        bootstrap_servers="127.0.0.1:1", loop=asyncio.get_running_loop()
    )
    try:
        fake.made[0].refuse_with = FATAL  # raised by produce() before error_cb ran
        await asyncio.wait_for(producer.publish("t", "k", b"v"), 5)
        assert len(fake.made) == 2 and fake.made[1].produced == [b"v"]
    finally:
        producer.close(1)


async def test_a_non_fatal_refusal_is_not_a_reason_to_re_create(fake: type[FakeProducer]) -> None:
    producer = kafka_io.AsyncProducer(
        bootstrap_servers="127.0.0.1:1", loop=asyncio.get_running_loop()
    )
    try:
        fake.made[0].refuse_with = KafkaError(KafkaError._UNKNOWN_TOPIC, "no such topic")
        with pytest.raises(KafkaException):
            producer.publish("t", "k", b"v")
        producer._on_error(KafkaError(KafkaError._TRANSPORT, "broker down"))  # not fatal
        assert len(fake.made) == 1 and producer.recreated == 0
    finally:
        producer.close(1)
