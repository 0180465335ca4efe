"""Consumer lag: the arithmetic against a fake admin client, then once against the real broker."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import DuplicateTimeseries

from sluicegate.serving.lag_metrics import LagCollector, register_lag_metrics
from sluicegate.settings import KafkaSettings, Settings, WorkerSettings

GROUP = "g"
TOPIC = "sg.requests"
LATEST = type(OffsetSpec.latest())


def _done(value: object) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class FakeAdmin:
    """The three AdminClient calls the collector makes, over offsets the test sets."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions
        self.low: dict[tuple[str, int], int] = {}
        self.high: dict[tuple[str, int], int] = {}
        self.committed: dict[str, dict[tuple[str, int], int]] = {}
        self.error: Exception | None = None
        self.hang = False
        self.calls = 0

    def _future(self, value: object) -> Future:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return Future() if self.hang else _done(value)  # a hung future never resolves

    def list_consumer_group_offsets(self, request, request_timeout: float) -> dict[str, Future]:
        assert request_timeout > 0
        group = request[0].group_id
        tps = [TopicPartition(t, p, o) for (t, p), o in self.committed.get(group, {}).items()]
        return {group: self._future(ConsumerGroupTopicPartitions(group, tps))}

    def list_topics(self, timeout: float) -> SimpleNamespace:
        assert timeout > 0
        return SimpleNamespace(
            topics={
                name: SimpleNamespace(error=None, partitions={p: None for p in range(count)})
                for name, count in self.partitions.items()
            }
        )

    def list_offsets(self, specs: dict, request_timeout: float) -> dict[TopicPartition, Future]:
        assert request_timeout > 0
        futures = {}
        for tp, spec in specs.items():
            offsets = self.high if isinstance(spec, LATEST) else self.low
            key = (tp.topic, tp.partition)
            futures[tp] = self._future(SimpleNamespace(offset=offsets.get(key, 0)))
        return futures


def _collector(admin: FakeAdmin, **kwargs) -> tuple[LagCollector, CollectorRegistry]:
    collector = LagCollector(admin, [GROUP], **kwargs)
    registry = CollectorRegistry()
    registry.register(collector)
    return collector, registry


def _lag(registry: CollectorRegistry, partition: int, topic: str = TOPIC) -> float | None:
    return registry.get_sample_value(
        "sluicegate_consumer_lag_records",
        {"group": GROUP, "topic": topic, "partition": str(partition)},
    )


def _errors(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("sluicegate_consumer_lag_errors_total", {"group": GROUP})


@pytest.mark.unit
def test_lag_is_high_watermark_minus_committed_offset() -> None:
    admin = FakeAdmin({TOPIC: 2})
    admin.high = {(TOPIC, 0): 10, (TOPIC, 1): 7}
    admin.committed = {GROUP: {(TOPIC, 0): 3, (TOPIC, 1): 7}}
    collector, registry = _collector(admin)
    collector.refresh()
    assert _lag(registry, 0) == 7
    assert _lag(registry, 1) == 0
    assert _errors(registry) == 0
    assert registry.get_sample_value("sluicegate_consumer_lag_collect_seconds") >= 0
    success = "sluicegate_consumer_lag_last_success_timestamp_seconds"
    assert registry.get_sample_value(success, {"group": GROUP}) == pytest.approx(time.time(), 5)


@pytest.mark.unit
def test_uncommitted_partitions_count_from_the_low_watermark() -> None:
    admin = FakeAdmin({TOPIC: 3})
    admin.low = {(TOPIC, 0): 4, (TOPIC, 1): 20, (TOPIC, 2): 0}
    admin.high = {(TOPIC, 0): 10, (TOPIC, 1): 25, (TOPIC, 2): 0}
    admin.committed = {GROUP: {(TOPIC, 1): 5}}  # below low: retention deleted 5..19
    collector, registry = _collector(admin)
    collector.refresh()
    assert _lag(registry, 0) == 6  # nothing committed: the whole retained partition
    assert _lag(registry, 1) == 5  # the group resumes at low (auto.offset.reset=earliest)
    assert _lag(registry, 2) == 0


@pytest.mark.unit
def test_only_committed_or_declared_topics_are_reported() -> None:
    admin = FakeAdmin({TOPIC: 1, "sg.other": 1, "app-cache-changelog": 1})
    admin.high = {(TOPIC, 0): 3, ("sg.other", 0): 9, ("app-cache-changelog", 0): 50}
    collector, registry = _collector(admin, topics={GROUP: ["sg.other", "sg.not-created"]})
    collector.refresh()
    assert _lag(registry, 0, "sg.other") == 9  # declared, never committed
    assert _lag(registry, 0) is None  # neither committed nor declared
    assert _lag(registry, 0, "app-cache-changelog") is None
    assert _errors(registry) == 0  # a declared topic that does not exist is no error


@pytest.mark.unit
def test_a_group_that_never_committed_has_no_series_and_no_error() -> None:
    collector, registry = _collector(FakeAdmin({TOPIC: 1}))
    collector.refresh()
    assert "sluicegate_consumer_lag_records{" not in generate_latest(registry).decode()
    assert _errors(registry) == 0


@pytest.mark.unit
def test_a_kafka_error_keeps_the_last_numbers_and_counts_the_error() -> None:
    admin = FakeAdmin({TOPIC: 1})
    admin.high = {(TOPIC, 0): 10}
    admin.committed = {GROUP: {(TOPIC, 0): 4}}
    collector, registry = _collector(admin)
    collector.refresh()
    success = "sluicegate_consumer_lag_last_success_timestamp_seconds"
    last_success = registry.get_sample_value(success, {"group": GROUP})

    admin.high = {(TOPIC, 0): 99}
    admin.error = KafkaException("broker down")
    collector.refresh()
    collector.refresh()
    assert _lag(registry, 0) == 6
    assert _errors(registry) == 2
    assert registry.get_sample_value(success, {"group": GROUP}) == last_success

    admin.error = None
    collector.refresh()
    assert _lag(registry, 0) == 95
    assert _errors(registry) == 2


@pytest.mark.unit
def test_a_hung_broker_costs_one_timeout_per_group_and_scrapes_never_wait() -> None:
    admin = FakeAdmin({TOPIC: 1})
    admin.high = {(TOPIC, 0): 10}
    admin.committed = {GROUP: {(TOPIC, 0): 4}}
    collector, registry = _collector(admin, timeout_s=0.3)
    collector.refresh()

    admin.hang = True
    started = time.monotonic()
    collector.refresh()
    assert time.monotonic() - started < 1.0
    assert _errors(registry) == 1
    assert _lag(registry, 0) == 6

    calls = admin.calls
    started = time.monotonic()
    generate_latest(registry)
    assert time.monotonic() - started < 0.1
    assert admin.calls == calls  # a scrape reads the snapshot, never the broker


@pytest.mark.unit
def test_the_background_thread_refreshes_and_stops() -> None:
    admin = FakeAdmin({TOPIC: 1})
    admin.high = {(TOPIC, 0): 10}
    admin.committed = {GROUP: {(TOPIC, 0): 1}}
    collector, registry = _collector(admin, interval_s=0.05)
    collector.start()
    try:
        _eventually(lambda: _lag(registry, 0) == 9)
        admin.committed = {GROUP: {(TOPIC, 0): 8}}
        _eventually(lambda: _lag(registry, 0) == 2)
    finally:
        collector.close()
    assert not collector._thread.is_alive()


@pytest.mark.unit
def test_registering_twice_on_one_registry_fails() -> None:
    collector, registry = _collector(FakeAdmin({}))
    with pytest.raises(DuplicateTimeseries):
        registry.register(LagCollector(FakeAdmin({}), [GROUP]))
    assert collector.groups == [GROUP]


def _eventually(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.integration
def test_lag_against_the_real_broker(kafka_bootstrap: str) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    run = uuid.uuid4().hex[:8]
    topic, group = f"lag-test-{run}", f"lag-test-{run}"
    records, committed_at = 10, 4
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    registry = CollectorRegistry()
    collector = None
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for i in range(records):
            producer.produce(topic, value=f"record-{i}".encode(), partition=1)
        assert producer.flush(30) == 0

        consumer = Consumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        try:
            consumer.commit(offsets=[TopicPartition(topic, 1, committed_at)], asynchronous=False)
        finally:
            consumer.close()

        settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
            worker=WorkerSettings(app_id=f"lag-test-{run}"),
        )
        # Workers declare their topics: committed offsets are read for those (ConsumerOffsets).
        collector = register_lag_metrics(
            registry, settings, [group], topics={group: [topic]}, interval_s=0.2
        )

        def lag(partition: int) -> float | None:
            labels = {"group": group, "topic": topic, "partition": str(partition)}
            return registry.get_sample_value("sluicegate_consumer_lag_records", labels)

        _eventually(lambda: lag(1) is not None)
        assert lag(1) == records - committed_at
        assert lag(0) == 0 and lag(2) == 0  # empty and uncommitted: low == high
        assert (
            registry.get_sample_value("sluicegate_consumer_lag_errors_total", {"group": group}) == 0
        )
    finally:
        if collector is not None:
            collector.close()
        admin.delete_topics([topic], operation_timeout=30)[topic].result(30)
        for future in admin.delete_consumer_groups([group], request_timeout=10).values():
            future.result(10)


@pytest.mark.integration
def test_a_workers_collector_asks_the_broker_for_its_own_topics_only(kafka_bootstrap: str) -> None:
    """A whole-cluster listing built ~85 ms of Python objects per refresh on a broker with
    3,800 topics (a stall of the worker's event loop every interval): never ask for one."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from sluicegate.serving.lag_metrics import ConsumerOffsets

    run = uuid.uuid4().hex[:8]
    topic, group = f"lag-own-{run}", f"lag-own-{run}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)

    class NoClusterListing:
        def list_topics(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("listed every topic of the cluster")

        def list_offsets(self, *args: object, **kwargs: object) -> object:
            return admin.list_offsets(*args, **kwargs)

    offsets = ConsumerOffsets(NoClusterListing(), bootstrap_servers=kafka_bootstrap)
    collector = LagCollector(offsets, [group], topics={group: [topic, f"{topic}-missing"]})
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        collector.refresh()
        labels = {"group": group, "topic": topic}
        assert (
            registry.get_sample_value(
                "sluicegate_consumer_lag_records", {**labels, "partition": "1"}
            )
            == 0
        )
        errors = registry.get_sample_value("sluicegate_consumer_lag_errors_total", {"group": group})
        assert errors == 0
    finally:
        offsets.close()
        admin.delete_topics([topic], operation_timeout=30)[topic].result(30)
