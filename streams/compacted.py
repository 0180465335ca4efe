"""Read a whole compacted topic into process memory and keep following it.

Several views need every partition of a small compacted topic in every process, not a consumer
group's share: the deployments' health (sg.health) and the model catalogue (sg.catalogue). This
is what a Faust GlobalTable would do, without its known recovery bugs (faust #212,
robinhood/faust #716), and it works in processes that are not Faust workers (the inference
worker, the bridge).

`start()` first reads up to the end offsets it finds (bounded by a timeout), so a process starts
with the current state instead of serving its first requests on a stale one; then a daemon
thread follows new records.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from sluicegate.serving.kafka_io import fetch_ready

log = logging.getLogger(__name__)
# What a partition answers in the moments after its topic was created.
_NOT_READY_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


class CompactedTopicReader:
    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        on_record: Callable[[bytes], None] | None = None,
        client_config: Mapping[str, str] | None = None,
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        """`on_record` gets each record's value; a view that needs the key, partition or offset
        too (sg.idempotency reads its own writes back by offset) passes `on_message` instead."""
        if on_message is None:
            if on_record is None:
                raise ValueError("pass on_record or on_message")
            on_value = on_record

            def on_message(message: Message) -> None:
                on_value(message.value() or b"")

        self._topic = topic
        self._on_message = on_message
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                **(client_config or {}),
                "group.id": f"sluicegate-view-{uuid.uuid4()}",
                "enable.auto.commit": False,
                # A long poll costs no latency (the broker answers as soon as a record
                # arrives) and saves the broker ~20 empty fetches a second per view.
                "fetch.wait.max.ms": 500,
                "socket.nagle.disable": True,
            }
        )
        self._running = False
        self._thread = threading.Thread(target=self._run, name=f"view-{topic}", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        metadata = self._consumer.list_topics(self._topic, timeout=timeout_s).topics[self._topic]
        partitions = [TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        self._consumer.assign(partitions)
        self._catch_up(partitions, timeout_s)
        self._running = True
        self._thread.start()

    def close(self) -> None:
        self._running = False
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._consumer.close()

    def _catch_up(self, partitions: list[TopicPartition], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        ends = {tp.partition: self._end_offset(tp, deadline) for tp in partitions}
        pending = {p for p, end in ends.items() if end > 0}
        while pending and time.monotonic() < deadline:
            for message in self._fetch():
                if message.offset() + 1 >= ends[message.partition()]:
                    pending.discard(message.partition())
        if pending:
            log.warning("%s: not caught up after %.0f s; following anyway", self._topic, timeout_s)

    def _end_offset(self, tp: TopicPartition, deadline: float) -> int:
        """The partition's high watermark, retried while its leader is not known yet: right
        after a topic is created, metadata can lag and the broker answers NOT_LEADER."""
        while True:
            try:
                return self._consumer.get_watermark_offsets(tp, timeout=5.0)[1]
            except KafkaException as error:
                kafka_error = error.args[0]
                transient = kafka_error.retriable() or kafka_error.code() in _NOT_READY_YET
                if time.monotonic() > deadline or not transient:
                    raise
                log.info("%s[%s]: %s; retrying", self._topic, tp.partition, error)
                time.sleep(0.2)

    def _run(self) -> None:
        while self._running:
            self._fetch()

    def _fetch(self) -> list[Message]:
        messages = fetch_ready(self._consumer, wait_s=0.2, max_records=500, who=self._topic)
        for message in messages:
            try:
                self._on_message(message)
            except Exception as error:  # one bad record must not blind the view
                log.warning("%s: skipped a record: %s", self._topic, error)
        return messages
