"""The sink loop against the real broker and a store that fails on demand: offsets are committed
only after the insert succeeded, failed inserts are retried, nothing is lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from sluicegate.connectors.analytics import QueryResult
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.errors import AnalyticsError
from sluicegate.serving.analytics_sink import AnalyticsSinkWorker, sink_topics
from sluicegate.settings import AnalyticsSettings, Settings
from tests.builders import request
from tests.topics_io import produce

pytestmark = pytest.mark.integration


class FlakyStore:
    """An in-memory AnalyticsSink whose inserts fail while `down` is set."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.down = threading.Event()
        self.failures = 0

    def migrate(self) -> list[str]:
        return []

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if self.down.is_set():
            self.failures += 1
            raise AnalyticsError("store is down", retriable=True)
        self.rows.setdefault(table, []).extend(rows)

    def query(self, sql: str, *, readonly: bool = False) -> QueryResult:
        raise NotImplementedError

    def close(self) -> None:
        return None


def committed(settings: Settings, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on `topic` (0 where none)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def test_commits_only_after_a_successful_insert(settings: Settings, topics: list[str]) -> None:
    own = settings.model_copy(
        update={
            "worker": settings.worker.model_copy(
                update={"app_id": f"{settings.worker.app_id}-sinkloop-{uuid.uuid4().hex[:6]}"}
            ),
            "analytics": AnalyticsSettings(batch_seconds=0.2, retry_max_s=0.2),
        }
    )
    group = f"{own.worker.app_id}-analytics"
    topic = own.topic("requests")
    serde = build_serde(own)
    store = FlakyStore()
    store.down.set()
    worker = AnalyticsSinkWorker(settings=own, serde=serde, store=store)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        mine = [request(model="gpt-fake", tenant_id="sinkloop") for _ in range(5)]
        for event in mine:
            produce(own, topic, event.tenant_id.encode(), serde.encode(event))
        deadline = time.monotonic() + 30
        while store.failures < 3:
            assert time.monotonic() < deadline, "the sink never tried to insert"
            time.sleep(0.05)
        assert committed(own, group, topic) == 0, "offsets committed before the insert succeeded"

        store.down.clear()
        wanted = {e.event_id for e in mine}
        while not wanted <= {r["event_id"] for r in store.rows.get("requests", [])}:
            assert time.monotonic() < deadline, "rows never arrived after the store came back"
            time.sleep(0.05)
        while committed(own, group, topic) == 0:
            assert time.monotonic() < deadline, "offsets never committed after the insert"
            time.sleep(0.1)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert worker.stats.insert_failures >= 3
    rows = [r for r in store.rows["requests"] if r["event_id"] in wanted]
    assert sorted(r["request_id"] for r in rows) == sorted(e.request_id for e in mine)


def test_the_sink_reads_the_gateway_topics_but_not_the_tasks(settings: Settings) -> None:
    names = set(sink_topics(settings))
    assert {settings.topic("health"), settings.topic("alerts")} <= names
    assert not {settings.topic(f"inference.{pool}") for pool in settings.pools} & names
