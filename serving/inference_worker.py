"""The inference worker: consumes `sg.inference.<pool>` and runs each task on its backend.

Serving replicas are stateless, so they need no Faust tables; they run on librdkafka
(confluent-kafka) directly, which costs far less CPU per record than Faust's aiokafka path and
leaves the Faust worker's core to the stateful stages. Ray Serve replicas (issue 8) wrap this
same loop.

Many tasks run at once (`worker.inference_concurrency`); offsets are stored only up to the
oldest task still running, and only after its answer is acknowledged by the broker, so a crash
re-delivers unfinished tasks (at-least-once) and never skips one.

A redelivered task must not answer its request twice. Tasks come back after a crash of this
worker (offsets stored but not yet committed) and after a crash of the Faust worker (admission
runs the RequestReceived again and writes a second attempt-1 task). So a task is skipped when its
request already has a final result on sg.responses (`AnsweredRequests`, which follows that
topic's keys — the request ids — from `ANSWERED_WINDOW_S` back, caught up before the first task
is taken), or when this process already started the same (request_id, attempt).

Retries and fallbacks are decided here (processors/inference.py) with the breakers' state read
from sg.health, and leave as new tasks; a retry's backoff is waited out by the worker that
picks the retry up, holding one concurrency slot.

The batch lane (`sg.inference.<batch.pool>`, processors/priority.py) is consumed beside the
pools by default. Its tasks have slots of their own (`batch.concurrency`), wait in a local queue
until `batch_lane` lets them start, and the lane's partitions are paused while interactive work
presses (or the queue is full), so batch tasks use only the capacity interactive ones leave
idle and never hold up an interactive task behind them. A queued task is not started, so its
offset is not stored either: tasks of one partition start in offset order, so the offset stored
for a partition is never past a queued task, and a crash or rebalance re-delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.ports import InferenceBackend
from sluicegate.processors.envelope import Emit
from sluicegate.processors.guard_output import OutputGuard
from sluicegate.processors.inference import InferenceStage
from sluicegate.processors.outcomes import OutcomeAggregator
from sluicegate.processors.priority import LaneState, batch_lane
from sluicegate.processors.rejection import internal_error
from sluicegate.schemas.models import (
    InferenceFailed,
    InferenceResult,
    InferenceTask,
    RequestRejected,
    ResponseReady,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.event_metrics import serve_metrics
from sluicegate.serving.kafka_io import SIDE_LINGER_MS, AsyncProducer, DeliveryGroup, fetch_ready
from sluicegate.serving.lag_metrics import register_lag_metrics
from sluicegate.settings import Catalogue, Settings
from sluicegate.streams.catalogue_view import CatalogueView
from sluicegate.streams.dlq import dead_letter
from sluicegate.streams.health_view import HealthView

log = logging.getLogger(__name__)
STAGE = "inference"
SHUTDOWN_GRACE_S = 5.0
OUTCOMES_INTERVAL_S = 0.25
# Records of a task that nobody waits on (its span, result, cost and cache fill) go through a
# second producer that lingers (SIDE_LINGER_MS); on 150 req/s the Faust worker's consumer of
# sg.cost woke per CostEntry. The answer, stream chunks, retries and dead letters keep the
# producer that sends at once.
SIDE_TOPICS = ("traces", "inference.results", "cost", "cache")
# How far back a redelivered task's request is looked up on sg.responses; longer than any
# request's deadline (the bridge's request_timeout_s, 120 s by default) with room to spare.
ANSWERED_WINDOW_S = 900.0
# How long a rebalance may wait for the revoked partitions' running tasks (see _on_revoke).
REVOKE_WAIT_S = 10.0
STARTED_MEMORY = 100_000  # (request_id, attempt) pairs this process remembers having started
FETCH_RECORDS = 256  # records taken from the consumer at once (more when the batch lane asks)


def pool_topics(settings: Settings, pools: list[str] | None) -> list[str]:
    """The topics a worker consumes: the pools named, else every deployment's pool and the
    batch lane (unless `batch.consume` is off)."""
    if pools is None:
        pools = [*settings.pools, *([settings.batch.pool] if settings.batch.consume else [])]
    return [settings.topic(f"inference.{pool}") for pool in dict.fromkeys(pools)]


class OffsetTracker:
    """Per partition: the offsets in progress; what may be committed is the oldest of them."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, int], set[int]] = {}
        self._next: dict[tuple[str, int], int] = {}

    def start(self, topic: str, partition: int, offset: int) -> None:
        self._running.setdefault((topic, partition), set()).add(offset)
        key = (topic, partition)
        self._next[key] = max(self._next.get(key, 0), offset + 1)

    def finish(self, topic: str, partition: int, offset: int) -> int | None:
        """The offset to commit now for this partition, or None if nothing advanced."""
        commit = self.commit_after(topic, partition, offset)
        running = self._running.get((topic, partition))
        if running is not None:
            running.discard(offset)
        return commit

    def commit_after(self, topic: str, partition: int, offset: int) -> int | None:
        """What `finish` will return for this offset, without finishing it: the worker hands
        the offset over for storing first (`PendingOffsets`, stored by `_on_revoke` after its
        wait), so a rebalance never sees a task done whose offset is not stored."""
        running = self._running.get((topic, partition))
        if running is None or offset not in running:
            return None  # revoked meanwhile
        if offset != min(running):
            return None
        later = [o for o in running if o != offset]
        return min(later) if later else self._next[(topic, partition)]

    def running(self, partitions: list[TopicPartition]) -> bool:
        """Whether any task of these partitions is still running."""
        return any(self._running.get((tp.topic, tp.partition)) for tp in partitions)

    def forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._running.pop((tp.topic, tp.partition), None)
            self._next.pop((tp.topic, tp.partition), None)


class PendingOffsets:
    """Offsets to store, handed from the event loop to the consumer's own (fetcher) thread.

    The consumer is called from the fetcher thread only. A call from another thread while a
    rebalance callback runs inside that thread's poll() blocks until the callback returns: a
    `store_offsets` on the event loop then froze every running task, `_on_revoke`'s wait for
    them ran out, and their partitions moved with the offsets unstored, so the new owner
    answered those requests a second time (the replica-kill test's rare duplicate). Now a
    finished task only records its offset here; the fetcher thread stores it right after,
    before each poll, and in `_on_revoke` once the running tasks are done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offsets: dict[tuple[str, int], int] = {}

    def put(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            key = (topic, partition)
            self._offsets[key] = max(self._offsets.get(key, -1), offset)

    def take(self) -> list[TopicPartition]:
        with self._lock:
            offsets, self._offsets = self._offsets, {}
        return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


def _names(partitions: list[TopicPartition]) -> str:
    """`topic[partition]@offset, …` for the logs (offset only when one is set)."""
    return ", ".join(
        f"{tp.topic}[{tp.partition}]" + (f"@{tp.offset}" if tp.offset >= 0 else "")
        for tp in partitions
    )


def static_membership(instance_id: str | None) -> dict[str, str]:
    """librdkafka's `group.instance.id` when one is configured (see `worker.group_instance_id`).

    A static member is not removed when its process dies: the restarted process rejoins under
    the same id and gets the same partitions without waiting out `session.timeout.ms` (the 45 s
    stall the chaos soak measured). The price: a clean stop does not leave the group either, so
    a process that is stopped for good holds its partitions until the session timeout.
    """
    return {} if instance_id is None else {"group.instance.id": instance_id}


class AnsweredRequests:
    """The request ids with a final result on sg.responses over the last `window_s`.

    sg.responses is keyed by request_id, so only keys are read (nothing is decoded). `start`
    assigns every partition from `window_s` ago and returns once it has read up to the high
    watermarks of that moment; a thread then follows the topic. `add` records a final result
    this process published, before the topic shows it.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        window_s: float = ANSWERED_WINDOW_S,
        clock: Callable[[], float] = time.time,
        client_config: Mapping[str, str] | None = None,
    ) -> None:
        self._topic = topic
        self._window_s = window_s
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # request_id → when seen, oldest first
        self._lock = threading.Lock()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                **(client_config or {}),
                "group.id": f"sluicegate-answered-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,
            }
        )
        self._running = False
        self._thread = threading.Thread(target=self._follow, name="answered-view", daemon=True)

    def __contains__(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._seen

    def add(self, request_id: str) -> None:
        with self._lock:
            self._seen[request_id] = self._clock()
            self._seen.move_to_end(request_id)

    def start(self, timeout_s: float = 30.0) -> None:
        metadata = self._consumer.list_topics(self._topic, timeout=timeout_s).topics[self._topic]
        since_ms = int((self._clock() - self._window_s) * 1000)
        wanted = [TopicPartition(self._topic, p, since_ms) for p in metadata.partitions]
        starts = self._consumer.offsets_for_times(wanted, timeout=timeout_s)
        highs: dict[int, int] = {}
        for tp in starts:
            _low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s)
            if tp.offset < 0:  # nothing that recent: start at the end
                tp.offset = high
            if high > tp.offset:
                highs[tp.partition] = high
        self._consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        while highs and time.monotonic() < deadline:
            for message in self._consumer.consume(num_messages=1000, timeout=0.2):
                if self._take(message) and message.offset() + 1 >= highs.get(
                    message.partition(), 0
                ):
                    highs.pop(message.partition(), None)
        if highs:
            log.warning("inference: sg.responses not read up to its end in %ss", timeout_s)
        self._running = True
        self._thread.start()

    def close(self) -> None:
        self._running = False
        if self._thread.is_alive():
            self._thread.join(5)
        self._consumer.close()

    def _follow(self) -> None:
        while self._running:
            for message in self._consumer.consume(num_messages=1000, timeout=0.2):
                self._take(message)
            self._forget_old()

    def _take(self, message: Message) -> bool:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("inference: reading sg.responses: %s", error)
            return False
        key = message.key()
        if key:
            self.add(key.decode(errors="replace"))
        return True

    def _forget_old(self) -> None:
        horizon = self._clock() - self._window_s
        with self._lock:
            while self._seen:
                request_id, seen_at = next(iter(self._seen.items()))
                if seen_at >= horizon:
                    break
                del self._seen[request_id]


class InferenceWorker:
    def __init__(
        self,
        *,
        settings: Settings,
        serde: AvroSerde,
        backends: Mapping[str, InferenceBackend],
        pools: list[str] | None = None,
    ) -> None:
        self._settings = settings
        self._serde = serde
        self._backends = dict(backends)
        self._pools = pools
        self._health = HealthView(settings=settings, serde=serde)
        self._catalogue = CatalogueView(settings=settings, serde=serde)
        self._new_topics: list[str] | None = None
        self._stage = InferenceStage(
            backends=self._backends,
            deployments={d.name: d for d in settings.deployments},
            resilience=settings.resilience,
            health=lambda: self._health.snapshots,
            output_guard=OutputGuard(settings=settings.guardrails),
        )
        self._topics = pool_topics(settings, pools)
        self._tracker = OffsetTracker()
        # The batch lane: queued tasks (shared with _on_revoke, on the fetcher thread), the
        # counts batch_lane decides on, the pause wanted and the pause applied to the consumer.
        self._batch_topic = settings.topic(f"inference.{settings.batch.pool}")
        self._batch_queue: deque[Message] = deque()
        self._batch_lock = threading.Lock()
        self._interactive_in_flight = 0
        self._interactive_waiting = False
        self._batch_in_flight = 0
        self._batch_open = True  # False once stopping: no more batch tasks start
        self._pause_batch = False
        self._batch_paused = False
        self._reassigned = False
        self._revoked = False  # set by _on_revoke, read by _fetch (both on the fetcher thread)
        self._answered = AnsweredRequests(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            topic=settings.topic("responses"),
            client_config=settings.kafka.client_config(),
        )
        self._started: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._pending = PendingOffsets()
        self.revokes_cut_short = 0  # rebalances that moved partitions with tasks still running
        self.skipped = 0  # redelivered tasks not run again
        self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="inference-fetch")
        self._consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": f"{settings.worker.app_id}-inference",
                "client.id": f"inference-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "socket.nagle.disable": True,
                **static_membership(settings.worker.group_instance_id),
            }
        )
        self._producer: AsyncProducer | None = None
        self._side_producer: AsyncProducer | None = None
        self._side_topics: frozenset[str] = frozenset()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outcomes = OutcomeAggregator()
        self._metrics, self._metrics_server = serve_metrics(
            settings.worker.metrics_host, settings.worker.inference_metrics_port
        )
        group = f"{settings.worker.app_id}-inference"
        self._lag = register_lag_metrics(
            self._metrics.registry, settings, [group], topics={group: self._topics}
        )

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._producer = AsyncProducer(
            bootstrap_servers=self._settings.kafka.bootstrap_servers,
            loop=loop,
            client_config=self._settings.kafka.client_config(),
        )
        self._side_producer = AsyncProducer(
            bootstrap_servers=self._settings.kafka.bootstrap_servers,
            loop=loop,
            client_config=self._settings.kafka.client_config(),
            linger_ms=SIDE_LINGER_MS,
        )
        self._side_topics = frozenset(self._settings.topic(name) for name in SIDE_TOPICS)
        await loop.run_in_executor(None, self._health.start)
        await loop.run_in_executor(None, self._answered.start)
        self._catalogue.subscribe(lambda c: loop.call_soon_threadsafe(self._reconfigure, c))
        await loop.run_in_executor(None, self._catalogue.start)
        self._consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        slots = asyncio.Semaphore(self._settings.worker.inference_concurrency)
        summaries = asyncio.create_task(self._publish_outcomes(stop))

        def interactive_done(_task: asyncio.Task[None]) -> None:
            slots.release()
            self._interactive_in_flight -= 1
            self._steer()

        try:
            while not stop.is_set():
                for message in await loop.run_in_executor(self._fetcher, self._fetch):
                    if message.topic() == self._batch_topic:
                        with self._batch_lock:
                            self._batch_queue.append(message)
                        continue
                    if slots.locked():  # interactive backlog: the batch lane waits
                        self._interactive_waiting = True
                        self._steer()
                    await slots.acquire()
                    self._interactive_waiting = False
                    self._interactive_in_flight += 1
                    self._start(message).add_done_callback(interactive_done)
                self._steer()
        finally:
            with self._batch_lock:  # queued batch tasks stay unstored: redelivered later
                self._batch_open = False
                self._batch_queue.clear()
            summaries.cancel()
            for emit in self._outcomes.flush():  # what the last interval saw
                self._publish(emit)
            if self._tasks:  # unfinished tasks are not committed: another worker redoes them
                _done, stuck = await asyncio.wait(self._tasks, timeout=SHUTDOWN_GRACE_S)
                for task in stuck:
                    task.cancel()
            await loop.run_in_executor(self._fetcher, self._close_consumer)
            await loop.run_in_executor(None, self._producer.close)
            await loop.run_in_executor(None, self._side_producer.close)
            await loop.run_in_executor(None, self._health.close)
            await loop.run_in_executor(None, self._catalogue.close)
            await loop.run_in_executor(None, self._answered.close)
            self._lag.close()
            if self._metrics_server is not None:
                self._metrics_server.close()
            self._fetcher.shutdown(wait=False)

    @property
    def backends(self) -> Mapping[str, InferenceBackend]:
        return self._backends

    def _reconfigure(self, catalogue: Catalogue) -> None:
        """A new catalogue, on the event loop: backends for new or changed deployments, the old
        ones closed once nothing new uses them, the pool topics followed if pools changed."""
        settings = self._settings.with_catalogue(catalogue)
        old = {d.name: d for d in self._settings.deployments}
        backends: dict[str, InferenceBackend] = {}
        for deployment in settings.deployments:
            kept = self._backends.get(deployment.name)
            if kept is not None and old.get(deployment.name) == deployment:
                backends[deployment.name] = kept
            else:
                backends[deployment.name] = build_backend(deployment)
        retired = [b for name, b in self._backends.items() if backends.get(name) is not b]
        self._stage.reconfigure(
            backends=backends, deployments={d.name: d for d in settings.deployments}
        )
        self._settings, self._backends = settings, backends
        for backend in retired:  # tasks already running on it finish first (SDK clients allow it)
            task = asyncio.get_running_loop().create_task(_close_later(backend))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        topics = pool_topics(settings, self._pools)
        if sorted(topics) != sorted(self._topics):
            self._topics, self._new_topics = topics, topics
        log.info("inference: catalogue %s applied", catalogue.version)

    def _start(self, message: Message) -> asyncio.Task[None]:
        self._tracker.start(message.topic(), message.partition(), message.offset())
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _steer(self) -> None:
        """Take the batch lane's decision (on the event loop): start what it allows now, and
        leave the pause it wants for the fetcher thread to apply."""
        batch = self._settings.batch
        with self._batch_lock:
            decision = batch_lane(
                LaneState(
                    interactive_in_flight=self._interactive_in_flight,
                    batch_in_flight=self._batch_in_flight,
                    batch_queued=len(self._batch_queue),
                    interactive_waiting=self._interactive_waiting,
                ),
                concurrency=batch.concurrency,
                fetch_batch=batch.fetch_batch,
                pause_when_interactive_in_flight=batch.pause_when_interactive_in_flight,
            )
            self._pause_batch = decision.pause
            for _ in range(decision.start if self._batch_open else 0):
                self._batch_in_flight += 1
                self._start(self._batch_queue.popleft()).add_done_callback(self._batch_done)

    def _batch_done(self, _task: asyncio.Task[None]) -> None:
        self._batch_in_flight -= 1
        self._steer()

    def _store_pending(self) -> None:
        """Store the offsets finished tasks left in `_pending` (on the fetcher thread only)."""
        offsets = self._pending.take()
        if not offsets:
            return
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException:  # one of them revoked meanwhile: store the others one by one
            for tp in offsets:
                try:
                    self._consumer.store_offsets(offsets=[tp])
                except KafkaException as error:
                    log.debug("inference: offset %s not stored: %s", _names([tp]), error)

    def _close_consumer(self) -> None:
        self._store_pending()
        self._consumer.close()  # commits what is stored

    def _fetch(self) -> list[Message]:
        self._store_pending()
        topics, self._new_topics = self._new_topics, None
        if topics is not None:  # subscribe from the consumer's own thread
            self._consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._pause_lane()
        ready = fetch_ready(
            self._consumer,
            wait_s=0.2,
            max_records=max(FETCH_RECORDS, self._settings.batch.fetch_batch),
            who="inference consumer",
        )
        if self._revoked:
            # A rebalance ran inside this fetch: records poll() returned before it may belong
            # to partitions another member now reads from their committed offsets. Running
            # them here too would answer twice; dropping them loses nothing (a partition that
            # came back to us restarts at its committed offset as well).
            self._revoked = False
            assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            ready = [m for m in ready if (m.topic(), m.partition()) in assigned]
        return ready

    def _pause_lane(self) -> None:
        """Pause or resume the batch lane's partitions as `_steer` last wanted, on the fetcher
        thread; again after every rebalance (a new assignment starts unpaused)."""
        wanted = self._pause_batch
        if wanted == self._batch_paused and not self._reassigned:
            return
        self._reassigned = False
        lane = [tp for tp in self._consumer.assignment() if tp.topic == self._batch_topic]
        if lane:
            (self._consumer.pause if wanted else self._consumer.resume)(lane)
        self._batch_paused = wanted

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._reassigned = True
        log.info("inference: assigned %s", _names(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before the partitions go to another member, let their running tasks finish (bounded
        by REVOKE_WAIT_S): their answers are then on sg.responses and their offsets stored, so
        the new owner skips them instead of answering a second time. Their queued batch tasks
        are dropped first (never started, so never stored: the new owner runs them). Runs on
        the fetcher thread inside poll(); the tasks finish on the event loop meanwhile.

        Then their stored offsets are committed, synchronously: the new owner starts from the
        committed offsets, and an answer published a moment ago may not have reached its
        view of sg.responses yet, so the handoff must not rely on the redelivery check."""
        self._revoked = True
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        with self._batch_lock:
            kept = [m for m in self._batch_queue if (m.topic(), m.partition()) not in revoked]
            self._batch_queue = deque(kept)
        deadline = time.monotonic() + REVOKE_WAIT_S
        while self._tasks and self._tracker.running(partitions) and time.monotonic() < deadline:
            time.sleep(0.02)
        still_running = self._tracker.running(partitions)
        if still_running:
            self.revokes_cut_short += 1
        self._store_pending()
        self._tracker.forget(partitions)
        try:
            committed = self._consumer.commit(asynchronous=False)
        except KafkaException as error:  # nothing stored since the last commit, or leaving
            committed = None
            if error.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("inference: offsets not committed on revoke: %s", error)
        log.info(
            "inference: revoked %s%s; committed %s",
            _names(partitions),
            " with tasks still running" if still_running else "",
            _names(committed or []),
        )

    async def _process(self, message: Message) -> None:
        value = message.value() or b""
        task: InferenceTask | None = None
        assert self._producer is not None
        acks = self._producer.group()
        answered: str | None = None
        try:
            try:
                task = self._serde.decode_as(value, InferenceTask)
                if self._redelivered(task):
                    self.skipped += 1
                    log.info(
                        "inference: skipped %s attempt %s at %s[%s]@%s: already answered or "
                        "started (a redelivery)",
                        task.request_id,
                        task.attempt,
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    )
                else:
                    async for emit in self._stage.run(task):
                        self._send(acks, emit)
                        if isinstance(emit.event, ResponseReady | RequestRejected):
                            answered = emit.event.request_id
            except Exception as error:  # one bad record must never stop the worker
                self._send_dead_letter(acks, message, error)
                if task is not None:
                    self._send(acks, internal_error(task, stage=STAGE, error=error))
                    answered = task.request_id
            await acks.done()
            if answered is not None:
                self._answered.add(answered)
        except Exception:
            # Not acknowledged by the broker: leave the offset unstored so the task comes back,
            # and forget it was started so that it is run when it does.
            if task is not None:
                self._started.pop((task.request_id, task.attempt), None)
            log.exception(
                "inference: could not publish the outcome of %s[%s]@%s",
                message.topic(),
                message.partition(),
                message.offset(),
            )
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        commit = self._tracker.commit_after(topic, partition, offset)
        if commit is not None:
            self._pending.put(topic, partition, commit)
            with contextlib.suppress(RuntimeError):  # stopping: closing stores what is pending
                self._fetcher.submit(self._store_pending)
        self._tracker.finish(topic, partition, offset)  # done only once its offset is pending

    def _redelivered(self, task: InferenceTask) -> bool:
        """Whether this task was answered or started already; if not, it is started now."""
        if task.request_id in self._answered:
            return True
        key = (task.request_id, task.attempt)
        if key in self._started:
            return True
        self._started[key] = None
        while len(self._started) > STARTED_MEMORY:
            self._started.popitem(last=False)
        return False

    def _send(self, acks: DeliveryGroup, emit: Emit) -> None:
        topic = self._settings.topic(emit.topic)
        side = self._side_producer if topic in self._side_topics else None
        acks.publish(topic, emit.key, self._serde.encode(emit.event), via=side)
        self._observe(emit)

    def _publish(self, emit: Emit) -> asyncio.Future[None]:
        """One record on its own (the outcome summaries, and a shutdown's last flush)."""
        assert self._producer is not None
        future = self._producer.publish(
            self._settings.topic(emit.topic), emit.key, self._serde.encode(emit.event)
        )
        self._observe(emit)
        return future

    def _observe(self, emit: Emit) -> None:
        if isinstance(emit.event, InferenceResult | InferenceFailed):
            self._outcomes.add(emit.event)
        self._metrics.observe(emit)

    async def _publish_outcomes(self, stop: asyncio.Event) -> None:
        """The health agent's input: this worker's outcomes per deployment, every interval.
        Best effort — a crash loses at most one interval of health samples, never a result."""
        while not stop.is_set():
            await asyncio.sleep(OUTCOMES_INTERVAL_S)
            for emit in self._outcomes.flush():
                self._publish(emit).add_done_callback(_log_failure)

    def _send_dead_letter(
        self, acks: DeliveryGroup, message: Message, error: BaseException
    ) -> None:
        record = dead_letter(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=message.key(),
            value=message.value() or b"",
            error=error,
            stage=STAGE,
        )
        log.warning(
            "dead-lettered %s[%s]@%s: %s",
            message.topic(),
            message.partition(),
            message.offset(),
            error,
        )
        acks.publish(f"{message.topic()}.dlq", message.key(), self._serde.encode(record))


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("inference: an outcome summary was not published: %s", future.exception())


async def _close_later(backend: InferenceBackend, grace_s: float = 60.0) -> None:
    await asyncio.sleep(grace_s)
    await backend.aclose()


async def serve(
    settings: Settings, serde: AvroSerde, backends: Mapping[str, InferenceBackend]
) -> None:
    """Run until SIGINT/SIGTERM."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = InferenceWorker(settings=settings, serde=serde, backends=backends)
    try:
        await worker.run(stop)
    finally:
        for backend in worker.backends.values():  # the live ones, after any catalogue reload
            await backend.aclose()
