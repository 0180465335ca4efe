"""The bridge's two Kafka ends: the journal producer and the reply router.

Both use confluent-kafka (librdkafka) with a background thread each, handing results to the
event loop with `call_soon_threadsafe`, so the loop never blocks on the broker and per-request
cost is one C-level produce plus a dict lookup on the way back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Mapping

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from sluicegate.errors import BrokerError
from sluicegate.schemas.models import Event
from sluicegate.schemas.serde import AvroSerde

log = logging.getLogger(__name__)

# The linger of the producers for records nobody waits on (spans, results, costs): they travel
# in a few batches a second instead of one produce request each, which costs the broker less and
# wakes their consumers less often. Records a caller waits on go through a producer that does
# not linger.
SIDE_LINGER_MS = 20


def fetch_ready(consumer: Consumer, *, wait_s: float, max_records: int, who: str) -> list[Message]:
    """Block for one record, then take whatever else is already fetched.

    `consume()` waits for the whole batch or the timeout, which would add its timeout to every
    request's latency at low load. Error records are dropped (partition EOF silently, the rest
    logged), so callers see data records only.
    """
    first = consumer.poll(wait_s)
    if first is None:
        return []
    ready = []
    for message in [first, *consumer.consume(num_messages=max_records, timeout=0)]:
        error = message.error()
        if error is None:
            ready.append(message)
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("%s: %s", who, error)
    return ready


class AsyncProducer:
    """Idempotent, acks=all producer; `publish` resolves once the broker has the record.

    The bridge journals requests with it; the inference worker publishes its answers with it.
    Partitioning is murmur2, Java's and aiokafka's default, so a tenant's records land on the same
    partition whether librdkafka or Faust wrote them: the co-partitioned agents depend on it.

    A fatal error of the idempotent producer (librdkafka gives up on the sequence numbers it can
    no longer vouch for, e.g. after the broker lost or fenced its producer state) leaves it
    unable to produce ever again. The next `produce` then re-creates the producer: records still
    queued in the old one fail (their callers see an error: whether they were written is not
    known, so the bridge answers 503 and the inference worker leaves its offset uncommitted).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        loop: asyncio.AbstractEventLoop,
        client_config: Mapping[str, str] | None = None,
        linger_ms: int = 0,
    ) -> None:
        self._loop = loop
        self._config = {
            "bootstrap.servers": bootstrap_servers,
            **(client_config or {}),
            "enable.idempotence": True,
            "acks": "all",
            # 0 by default, not librdkafka's 5 ms: a request waits on the journal's ack and on
            # the answer's. Records produced while one is in flight still share the next
            # request. Records nobody waits on may linger, to travel in fewer, larger batches.
            "linger.ms": linger_ms,
            "socket.nagle.disable": True,
            "partitioner": "murmur2_random",
            "error_cb": self._on_error,
        }
        self._fatal: KafkaError | None = None
        self._swap = threading.Lock()
        self.recreated = 0  # how often a fatal error replaced the producer
        self._producer = Producer(self._config)
        self._running = True
        self._thread = threading.Thread(target=self._poll, name="journal-poll", daemon=True)
        self._thread.start()

    def publish(self, topic: str, key: str | bytes | None, value: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(error: KafkaError | None, _message: Message) -> None:
            self._loop.call_soon_threadsafe(_settle, future, error, topic)

        self.produce_raw(topic, key, value, delivered)
        return future

    def group(self) -> DeliveryGroup:
        """Records produced at once, acknowledged together: one wake-up of the event loop for
        the lot instead of one per record (the inference worker writes 4 or 5 per task)."""
        return DeliveryGroup(self)

    def produce_raw(
        self, topic: str, key: str | bytes | None, value: bytes, on_delivery: Callable[..., None]
    ) -> None:
        if isinstance(key, str):
            key = key.encode()
        if self._fatal is not None:
            self._recreate()
        try:
            self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        except BufferError as exc:
            raise BrokerError(
                "the producer's local queue is full", topic=topic, retriable=True
            ) from exc
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.fatal()):
                raise
            self._fatal = error  # raised before the error callback ran: same remedy
            self._recreate()
            self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (on the poll thread): remember a fatal error."""
        if error.fatal():
            log.error("producer: fatal error, it will be re-created: %s", error)
            self._fatal = error
        else:
            log.debug("producer: %s", error)

    def _recreate(self) -> None:
        """Replace a producer that hit a fatal error; fail whatever it still held."""
        with self._swap:
            if self._fatal is None:  # another caller did it meanwhile
                return
            old, self._producer = self._producer, Producer(self._config)
            self._fatal = None
            self.recreated += 1
        try:
            old.purge(in_queue=True, in_flight=True)
            old.poll(0)  # their delivery callbacks (errors) run now
        except Exception as exc:  # a fatal producer may refuse even that
            log.warning("producer: purging the failed producer: %s", exc)
        log.warning("producer: re-created after a fatal error")

    def ready(self, timeout_s: float = 5.0) -> bool:
        try:
            self._producer.list_topics(timeout=timeout_s)
            return True
        except Exception:
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
        self._running = False
        self._thread.join(timeout_s)

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.05)


class DeliveryGroup:
    """Records sent right away (a streamed chunk must not wait), one future for all their acks.

    `publish` may be called until `done()`; the future it returns resolves once every record
    is acknowledged, or fails with the first delivery error. Delivery callbacks run on the
    producer's poll thread, hence the lock; the loop is woken once, at the end.
    """

    def __init__(self, producer: AsyncProducer) -> None:
        self._producer = producer
        self._loop = producer._loop
        self._lock = threading.Lock()
        self._outstanding = 0
        self._sealed = False
        self._error: tuple[KafkaError, str] | None = None
        self._future: asyncio.Future[None] = self._loop.create_future()

    def publish(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        *,
        via: AsyncProducer | None = None,
    ) -> None:
        """Send one record, through `via` if given (a lingering producer for records nobody
        waits on), else through the group's producer."""
        with self._lock:
            self._outstanding += 1

        def delivered(error: KafkaError | None, _message: Message) -> None:
            with self._lock:
                self._outstanding -= 1
                if error is not None and self._error is None:
                    self._error = (error, topic)
                finished = self._sealed and self._outstanding == 0
            if finished:
                self._loop.call_soon_threadsafe(self._resolve)

        try:
            (via or self._producer).produce_raw(topic, key, value, delivered)
        except BaseException:
            with self._lock:
                self._outstanding -= 1
            raise

    def done(self) -> asyncio.Future[None]:
        """No more records: the future of all acknowledgements."""
        with self._lock:
            self._sealed = True
            finished = self._outstanding == 0
        if finished:
            self._resolve()
        return self._future

    def _resolve(self) -> None:
        if self._error is None:
            _settle(self._future, None, "")
        else:
            _settle(self._future, *self._error)


def _settle(future: asyncio.Future[None], error: KafkaError | None, topic: str) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(
            BrokerError(
                f"write to {topic} failed: {error.str()}", topic=topic, retriable=error.retriable()
            )
        )


Listener = Callable[[str, Event], None]


class ReplyRouter:
    """Reads sg.responses and sg.stream from their current end and routes events by request_id.

    Partitions are assigned explicitly (no consumer group, nothing to rebalance), starting at
    the high watermark read before `start` returns, so every answer to a request journaled
    after start-up is seen. Only records whose key is awaited here are decoded.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topics: list[str],
        serde: AvroSerde,
        loop: asyncio.AbstractEventLoop,
        client_config: Mapping[str, str] | None = None,
    ) -> None:
        self._loop = loop
        self._serde = serde
        self._topics = topics
        self._listeners: dict[str, Listener] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                **(client_config or {}),
                "group.id": f"sluicegate-bridge-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "fetch.min.bytes": 1,
                "socket.nagle.disable": True,
            }
        )
        self._running = False
        self._thread = threading.Thread(target=self._run, name="reply-router", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        metadata = self._consumer.list_topics(timeout=timeout_s)
        partitions: list[TopicPartition] = []
        for topic in self._topics:
            if topic not in metadata.topics:
                raise BrokerError(
                    f"topic {topic} does not exist; run `sluicegate topics`", topic=topic
                )
            for partition in metadata.topics[topic].partitions:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s
                )
                partitions.append(
                    TopicPartition(topic, partition, high if high >= 0 else OFFSET_END)
                )
        self._consumer.assign(partitions)
        self._running = True
        self._thread.start()

    def listen(self, request_id: str, listener: Listener) -> None:
        self._listeners[request_id] = listener

    def forget(self, request_id: str) -> None:
        self._listeners.pop(request_id, None)

    def close(self) -> None:
        self._running = False
        if self._thread.is_alive():
            self._thread.join(5)
        self._consumer.close()

    def _run(self) -> None:
        while self._running:
            messages = fetch_ready(self._consumer, wait_s=0.1, max_records=500, who="reply router")
            wanted: list[tuple[Listener, Event]] = []
            for message in messages:
                key = message.key()
                listener = self._listeners.get(key.decode()) if key else None
                if listener is None:
                    continue
                try:
                    wanted.append((listener, self._serde.decode(message.value())))
                except Exception:
                    log.exception(
                        "reply router: undecodable record at %s[%s]@%s",
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    )
            if wanted:
                self._loop.call_soon_threadsafe(_deliver, wanted)


def _deliver(batch: list[tuple[Listener, Event]]) -> None:
    for listener, event in batch:
        listener(event.request_id, event)
