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
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from sluicegate.serving.kafka_io import fetch_ready

log = logging.getLogger(__name__)


class CompactedTopicReader:
    def __init__(
        self, *, bootstrap_servers: str, topic: str, on_record: Callable[[bytes], None]
    ) -> None:
        self._topic = topic
        self._on_record = on_record
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"sluicegate-view-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
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
        ends = {
            tp.partition: self._consumer.get_watermark_offsets(tp, timeout=timeout_s)[1]
            for tp in partitions
        }
        pending = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for message in self._fetch():
                if message.offset() + 1 >= ends[message.partition()]:
                    pending.discard(message.partition())
        if pending:
            log.warning("%s: not caught up after %.0f s; following anyway", self._topic, timeout_s)

    def _run(self) -> None:
        while self._running:
            self._fetch()

    def _fetch(self) -> list[Message]:
        messages = fetch_ready(self._consumer, wait_s=0.2, max_records=500, who=self._topic)
        for message in messages:
            try:
                self._on_record(message.value() or b"")
            except Exception as error:  # one bad record must not blind the view
                log.warning("%s: skipped a record: %s", self._topic, error)
        return messages
