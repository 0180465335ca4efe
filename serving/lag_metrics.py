"""Consumer lag per group, topic and partition, as Prometheus metrics.

Lag is the one number that says whether a worker keeps up with its input: records on the log
that its consumer group has not committed yet. The workers' own metrics (event_metrics.py) are
folds over what they publish, so a stuck or slow worker is invisible there; the broker, which
holds both ends of the gap, is asked instead.

Kafka is never called while Prometheus scrapes: a daemon thread refreshes a snapshot every
`interval_s` and `collect()` only reads it, so a scrape costs a dict copy whatever the broker
does. Every Kafka call of a refresh shares one deadline of `timeout_s` per group, so a pass
cannot hang; a group whose pass fails (broker down, timeout, a partition without a leader) keeps
its last good numbers, its error counter goes up, and its last-success timestamp stops moving,
which is what an alert on stale lag should watch:

    time() - sluicegate_consumer_lag_last_success_timestamp_seconds > 120

How lag is counted, per partition, and why:

- lag = high watermark - next offset the group would read, never below 0.
- The next offset is the committed one, but never below the low watermark: records under it
  were deleted by retention, and every sluicegate consumer resets to `earliest`, so that is where
  the group would resume.
- A partition without a committed offset counts from the low watermark (the same `earliest`
  reset): the whole retained partition is still to be read. This matters for partitions that
  had no traffic since the group started: their backlog is real, and is shown.
- The partitions reported are all partitions of every topic the group has committed to at least
  once, plus those of topics declared for it (`topics=`): a group that never committed anything
  shows no series at all, not 0, unless its topics are declared. Topics a group is merely
  assigned (Faust assigns table changelogs, which it reads but never commits) are not counted.
- The high watermark is the read_uncommitted one (the log end), as `kafka-consumer-groups`
  reports it; sluicegate does not use transactions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sluicegate.settings import Settings

log = logging.getLogger(__name__)

LAG = "sluicegate_consumer_lag_records"
COLLECT_SECONDS = "sluicegate_consumer_lag_collect_seconds"
ERRORS = "sluicegate_consumer_lag_errors"
LAST_SUCCESS = "sluicegate_consumer_lag_last_success_timestamp_seconds"

DEFAULT_INTERVAL_S = 15.0  # Prometheus' usual scrape interval: fresher numbers are not read
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    lag: int


class _Deadline:
    """One time budget shared by the Kafka calls of a group's pass, so the pass as a whole is
    bounded, not each call on its own (four calls of `timeout_s` would be four times it)."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def left(self) -> float:
        left = self._end - self._clock()
        if left <= 0:
            raise TimeoutError("consumer lag: out of time")
        return left


class LagCollector:
    """A prometheus_client collector of the lag of some consumer groups, from a cached snapshot.

    `admin` is a confluent_kafka AdminClient (or anything with its `list_consumer_group_offsets`,
    `list_topics` and `list_offsets`). `start()` runs `refresh()` every `interval_s` on a daemon
    thread; without it, call `refresh()` yourself (tests, one-shot tools).
    """

    def __init__(
        self,
        admin: Any,
        groups: Sequence[str],
        *,
        topics: Mapping[str, Sequence[str]] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout_s <= 0 or interval_s <= 0:
            raise ValueError("interval_s and timeout_s must be positive")
        self._admin = admin
        self.groups = list(dict.fromkeys(groups))
        self._declared = {group: list((topics or {}).get(group, ())) for group in self.groups}
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._lags: dict[str, list[PartitionLag]] = {}
        self._errors = dict.fromkeys(self.groups, 0)
        self._last_success: dict[str, float] = {}
        self._failing: set[str] = set()
        self._collect_seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the refresh side (background thread) ---------------------------------------------------

    def start(self) -> None:
        """Refresh now and then every `interval_s`, on a daemon thread (it never blocks exit)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="consumer-lag", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the thread; waits at most for the pass under way (bounded by the deadlines)."""
        self._stop.set()
        if self._thread is not None:
            wait = timeout_s if timeout_s is not None else self.timeout_s * len(self.groups) + 1
            self._thread.join(wait)
        closing = getattr(self._admin, "close", None)
        if closing is not None and (self._thread is None or not self._thread.is_alive()):
            closing()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # refresh() catches per group; this is a bug, not the broker
                log.exception("consumer lag: refresh failed")
            self._stop.wait(self.interval_s)

    def refresh(self) -> None:
        """One pass over every group; a group that fails keeps its previous numbers. Never
        raises for a Kafka error, and returns within `timeout_s` per group."""
        started = self._clock()
        for group in self.groups:
            try:
                lags = self._group_lag(group, _Deadline(self.timeout_s, self._clock))
            except Exception as error:
                self._failed(group, error)
                continue
            with self._lock:
                self._lags[group] = lags
                self._last_success[group] = self._wall_clock()
            if group in self._failing:
                self._failing.discard(group)
                log.info("consumer lag: group %s readable again", group)
        with self._lock:
            self._collect_seconds = self._clock() - started

    def _failed(self, group: str, error: Exception) -> None:
        with self._lock:
            self._errors[group] += 1
        # Once per failure streak: a broker down for an hour must not log every 15 s.
        if group not in self._failing:
            self._failing.add(group)
            log.warning(
                "consumer lag: cannot read group %s (%r); keeping last numbers", group, error
            )
        else:
            log.debug("consumer lag: group %s still unreadable (%r)", group, error)

    def _group_lag(self, group: str, deadline: _Deadline) -> list[PartitionLag]:
        reader = getattr(self._admin, "committed_offsets", None)
        if reader is None:  # an AdminClient alone: committed topics are discovered too
            committed = self._committed(group, deadline)
            topics = sorted({topic for topic, _ in committed} | set(self._declared[group]))
        else:
            topics = sorted(self._declared[group])
        if not topics:
            return []
        if reader is not None:
            metadata = self._admin.topic_metadata(group, topics, deadline.left())
        else:
            metadata = self._admin.list_topics(timeout=deadline.left()).topics
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            if topic in metadata and metadata[topic].error is None  # deleted, or not created yet
            for partition in sorted(metadata[topic].partitions)
        ]
        if not partitions:
            return []
        if reader is not None:
            committed = reader(group, partitions, deadline.left())
        high = self._offsets(partitions, OffsetSpec.latest(), deadline)
        low = self._offsets(partitions, OffsetSpec.earliest(), deadline)
        lags = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            position = max(committed.get(key, low[key]), low[key])
            lags.append(PartitionLag(tp.topic, tp.partition, max(high[key] - position, 0)))
        return lags

    def _committed(self, group: str, deadline: _Deadline) -> dict[tuple[str, int], int]:
        """The group's committed offsets; a group that never committed (or does not exist)
        has none. Negative offsets (OFFSET_INVALID) mean "no commit" and are dropped."""
        request = [ConsumerGroupTopicPartitions(group)]
        futures = self._admin.list_consumer_group_offsets(request, request_timeout=deadline.left())
        result = futures[group].result(timeout=deadline.left())
        committed = {}
        for tp in result.topic_partitions or ():
            if tp.error is not None:
                raise RuntimeError(f"{tp.topic}[{tp.partition}]: {tp.error}")
            if tp.offset >= 0:
                committed[(tp.topic, tp.partition)] = tp.offset
        return committed

    def _offsets(
        self, partitions: list[TopicPartition], spec: OffsetSpec, deadline: _Deadline
    ) -> dict[tuple[str, int], int]:
        futures = self._admin.list_offsets(
            {tp: spec for tp in partitions}, request_timeout=deadline.left()
        )
        return {
            (tp.topic, tp.partition): future.result(timeout=deadline.left()).offset
            for tp, future in futures.items()
        }

    # -- the scrape side ------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """The families' names, so registering twice on one registry fails loudly."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The last snapshot; no Kafka call, so a scrape never waits on the broker."""
        with self._lock:
            lags = {group: list(rows) for group, rows in self._lags.items()}
            errors = dict(self._errors)
            last_success = dict(self._last_success)
            collect_seconds = self._collect_seconds
        lag, seconds, error_count, success = self._families()
        for group, rows in lags.items():
            for row in rows:
                lag.add_metric([group, row.topic, str(row.partition)], row.lag)
        seconds.add_metric([], collect_seconds)
        for group, count in errors.items():
            error_count.add_metric([group], count)
        for group, at in last_success.items():
            success.add_metric([group], at)
        return [lag, seconds, error_count, success]

    @staticmethod
    def _families() -> list[Metric]:
        return [
            GaugeMetricFamily(
                LAG,
                "Records on the log not yet consumed by the group: high watermark - committed "
                "offset (the low watermark where nothing is committed).",
                labels=["group", "topic", "partition"],
            ),
            GaugeMetricFamily(COLLECT_SECONDS, "Wall time of the last consumer lag refresh."),
            CounterMetricFamily(
                ERRORS,
                "Consumer lag refreshes of a group that failed (its last numbers are kept).",
                labels=["group"],
            ),
            GaugeMetricFamily(
                LAST_SUCCESS,
                "Unix time of the group's last successful lag refresh.",
                labels=["group"],
            ),
        ]


class ConsumerOffsets:
    """An AdminClient whose committed offsets are read with a Consumer's OffsetFetch instead.

    `AdminClient.list_consumer_group_offsets` can abort the whole process after a broker
    restart (librdkafka assertion `eonce->refcnt > 0`, confluentinc/librdkafka#4605; seen in
    the chaos soak), and a metrics thread must never take its worker down. `committed()` on a
    consumer that never subscribes does not join the group. Only declared topics are read.
    """

    def __init__(
        self, admin: Any, *, bootstrap_servers: str, client_config: Mapping[str, str] | None = None
    ) -> None:
        self._admin = admin
        self._bootstrap = bootstrap_servers
        self._client_config = dict(client_config or {})
        self._consumers: dict[str, Consumer] = {}

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        return self._admin.list_topics(*args, **kwargs)

    def list_offsets(self, *args: Any, **kwargs: Any) -> Any:
        return self._admin.list_offsets(*args, **kwargs)

    def topic_metadata(self, group: str, topics: Sequence[str], timeout_s: float) -> dict[str, Any]:
        """Metadata of just these topics, one small request each, from the group's consumer
        (a consumer never asks the broker to auto-create a topic; an AdminClient may).

        Not `list_topics()` of the whole cluster: on the test broker (3,800 topics) that built
        ~85 ms of Python objects per call, holding the GIL, in every process with this collector.
        """
        consumer = self._consumer(group)
        found: dict[str, Any] = {}
        for topic in topics:
            found.update(consumer.list_topics(topic=topic, timeout=max(timeout_s, 0.1)).topics)
        return found

    def committed_offsets(
        self, group: str, partitions: list[TopicPartition], timeout_s: float
    ) -> dict[tuple[str, int], int]:
        answer = self._consumer(group).committed(partitions, timeout=max(timeout_s, 0.1))
        return {(tp.topic, tp.partition): tp.offset for tp in answer if tp.offset >= 0}

    def _consumer(self, group: str) -> Consumer:
        consumer = self._consumers.get(group)
        if consumer is None:
            consumer = self._consumers[group] = Consumer(
                {
                    "bootstrap.servers": self._bootstrap,
                    **self._client_config,
                    "group.id": group,
                    "enable.auto.commit": False,
                }
            )
        return consumer

    def close(self) -> None:
        """Close the offset readers (the collector's thread has stopped)."""
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()


def register_lag_metrics(
    registry: CollectorRegistry,
    settings: Settings,
    groups: Sequence[str],
    *,
    topics: Mapping[str, Sequence[str]] | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> LagCollector:
    """Report the lag of `groups` on `registry` (a worker's EventMetrics.registry), refreshed
    from a background thread; returns the collector, whose `close()` stops the thread.

    Each worker reports its own group(s) only, so a scrape of one worker never double-counts
    another's lag and the numbers disappear with the worker that owns them.
    """
    admin = ConsumerOffsets(
        AdminClient(
            {
                **settings.kafka.client_config(),
                "client.id": f"{settings.worker.app_id}-lag-metrics",
            }
        ),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_config=settings.kafka.client_config(),
    )
    collector = LagCollector(
        admin, groups, topics=topics, interval_s=interval_s, timeout_s=timeout_s
    )
    registry.register(collector)
    collector.start()
    return collector
