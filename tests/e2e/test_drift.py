"""Drift detection in the running pipeline: CostEntry records produced straight to sg.cost (keyed
by tenant, like the inference workers do) reach the worker's `ledger` agent; a latency window
that moved from the one before it comes out as DriftDetected on sg.drift, a stationary one as
nothing, the analytics sink stores the finding, and a restarted worker judges the next window
against the reference it saved in the `drift` table."""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import CostEntry, DriftDetected
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.analytics_sink import query_running_sink
from sluicegate.settings import (
    AnalyticsSettings,
    DriftSettings,
    KafkaSettings,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.drift_io import state_key
from sluicegate.streams.topics import ensure_topics
from tests.builders import envelope
from tests.conftest import _group_members, _spawn, _stop, _wait_for_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_MS = 2_000
PER_WINDOW = 60


@pytest.fixture(scope="module")
def drift_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Topics, group and store of its own, and a 2 s window. The lateness is long: the timer
    never closes these windows, the next window's first record does, so the test is exact."""
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "kafka": KafkaSettings(
                bootstrap_servers=settings.kafka.bootstrap_servers, topic_prefix=f"d{run}."
            ),
            "worker": WorkerSettings(
                app_id=f"sluicegate-drift-{run}",
                data_dir=tmp_path_factory.mktemp("drift-worker"),
                metrics_port=None,
                inference_metrics_port=None,
            ),
            "analytics": AnalyticsSettings(
                dsn=f"chdb://{tmp_path_factory.mktemp('drift-chdb')}/store", batch_seconds=0.5
            ),
            "drift": DriftSettings(window_s=WINDOW_MS / 1000, min_samples=30, lateness_s=600),
        }
    )


class Processes:
    """The Faust worker and the analytics sink (no bridge, no inference: records go straight
    to sg.cost); the worker restartable."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.starts = 0
        self.worker = self._start_worker()
        self.sink = _spawn("sink", settings, logs / "sink.log")

    def _start_worker(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        return _spawn("worker", self.settings, self.logs / f"worker-{self.starts}.log")

    def wait_ready(self) -> None:
        app_id = self.settings.worker.app_id
        _wait_for_group(app_id, self.settings, self.worker, self.logs / "worker-1.log")
        _wait_for_group(f"{app_id}-analytics", self.settings, self.sink, self.logs / "sink.log")

    def restart_worker(self) -> None:
        group = self.settings.worker.app_id
        old = _group_members(group, self.settings)
        _stop(self.worker)
        self.worker = self._start_worker()
        log = self.logs / f"worker-{self.starts}.log"
        _wait_for_group(group, self.settings, self.worker, log, not_members=old)

    def stop(self) -> None:
        _stop(self.sink)
        _stop(self.worker)


@pytest.fixture(scope="module")
def processes(
    drift_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Processes]:
    ensure_topics(drift_settings)
    running = Processes(drift_settings, tmp_path_factory.mktemp("drift-logs"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def cost(tenant: str, at_ms: int, latency_ms: float) -> CostEntry:
    return CostEntry(
        **envelope(tenant_id=tenant, occurred_at=datetime.fromtimestamp(at_ms / 1000, tz=UTC)),
        model="gpt-fake",
        deployment="fake",
        prompt_tokens=100,
        completion_tokens=20,
        usd=0.00003,
        pricing_version="test",
        latency_ms=round(latency_ms),
    )


def windows(tenant: str, start_ms: int, medians: list[float]) -> list[CostEntry]:
    """PER_WINDOW lognormal latencies in each consecutive window, then one record that opens
    the next window (and so closes the last)."""
    rng = random.Random(f"{tenant}{start_ms}")
    entries = [
        cost(tenant, start_ms + i * WINDOW_MS + j * (WINDOW_MS // PER_WINDOW), latency)
        for i, median in enumerate(medians)
        for j in range(PER_WINDOW)
        for latency in [rng.lognormvariate(math.log(median), 0.3)]
    ]
    return [*entries, cost(tenant, start_ms + len(medians) * WINDOW_MS, medians[0])]


def window_start() -> int:
    """A window boundary in the past, yet well within the lateness."""
    now_ms = int(time.time() * 1000)
    return now_ms - now_ms % WINDOW_MS - 20 * WINDOW_MS


def produce_all(settings: Settings, serde: AvroSerde, entries: list[CostEntry]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    for entry in entries:
        producer.produce(
            settings.topic("cost"), key=entry.tenant_id.encode(), value=serde.encode(entry)
        )
    assert producer.flush(10) == 0


def read_topic(
    settings: Settings, topic: str, keep: Callable[[Any, bytes], Any], timeout_s: float
) -> Iterator[Any]:
    """`keep(key, value)` of every record of `topic` from the beginning, as it arrives, until
    the caller stops iterating or `timeout_s` passes."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                yield None  # a chance to stop or to settle
                continue
            kept = keep(message.key(), message.value())
            if kept is not None:
                yield kept
    finally:
        consumer.close()


def latency_findings(
    settings: Settings, serde: AvroSerde, tenant: str, *, wanted: int, timeout_s: float = 40
) -> list[DriftDetected]:
    """The tenant's psi and ks findings on latency_ms, read until `wanted` arrived and then one
    second more (anything produced before the awaited findings is read by then)."""

    def keep(_key: Any, value: bytes) -> DriftDetected | None:
        event = serde.decode(value)
        if not isinstance(event, DriftDetected) or event.tenant_id != tenant:
            return None
        return event

    found: list[DriftDetected] = []
    settle: float | None = None
    for event in read_topic(settings, settings.topic("drift"), keep, timeout_s):
        if event is not None:
            found.append(event)
        scalar = [f for f in found if f.statistic in ("psi", "ks")]
        if settle is None and len(scalar) >= wanted:
            settle = time.monotonic() + 1.0
        if settle is not None and time.monotonic() > settle:
            break
    assert all(f.metric == "latency_ms" for f in found if f.statistic != "ewma_z"), found
    return [f for f in found if f.metric == "latency_ms" and f.statistic in ("psi", "ks")]


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def test_a_latency_shift_is_detected_and_a_stationary_window_is_not(
    drift_settings: Settings, processes: Processes
) -> None:
    serde = build_serde(drift_settings)
    tenant, start = "drift-shift", window_start()
    # Windows 0 and 1 alike (1 is judged against 0: no finding), window 2 three times slower.
    produce_all(drift_settings, serde, windows(tenant, start, [800.0, 800.0, 2400.0]))

    shifted = latency_findings(drift_settings, serde, tenant, wanted=2)
    assert sorted(f.statistic for f in shifted) == ["ks", "psi"], shifted
    shifted_window = start + 2 * WINDOW_MS
    assert {_ms(f.window_start_ms) for f in shifted} == {shifted_window}  # never window 1
    ks = next(f for f in shifted if f.statistic == "ks")
    reference = (_ms(ks.reference_start_ms), _ms(ks.reference_end_ms))
    assert reference == (start + WINDOW_MS, shifted_window)
    assert ks.current_count == PER_WINDOW and ks.value >= ks.threshold
    assert ks.current_mean is not None and ks.reference_mean is not None
    assert ks.current_mean > 2 * ks.reference_mean

    deadline = time.monotonic() + 20
    rows: list[list[Any]] = []
    while time.monotonic() < deadline and len(rows) < 2:
        answer = query_running_sink(
            drift_settings,
            "SELECT statistic, toUnixTimestamp64Milli(reference_start) FROM drift FINAL "
            f"WHERE tenant_id = '{tenant}' AND metric = 'latency_ms' "
            "AND statistic IN ('psi', 'ks') ORDER BY statistic",
        )
        rows = answer[1] if answer is not None else []
        time.sleep(0.3)
    assert rows == [["ks", start + WINDOW_MS], ["psi", start + WINDOW_MS]]


def test_a_restarted_worker_judges_against_the_reference_it_saved(
    drift_settings: Settings, processes: Processes
) -> None:
    serde = build_serde(drift_settings)
    tenant, start = "drift-restart", window_start() - 10 * WINDOW_MS
    # Window 0, closed by the first record of window 1: it becomes the reference, saved at once.
    produce_all(drift_settings, serde, windows(tenant, start, [800.0]))
    changelog = f"{drift_settings.worker.app_id}-drift-changelog"
    key = json.dumps(state_key(tenant, "latency_ms")).encode()  # the table's JSON key codec

    def reference_of(record_key: Any, value: bytes) -> dict[str, Any] | None:
        state = json.loads(value) if record_key == key and value else None
        return state["reference"] if state else None

    saved = next((r for r in read_topic(drift_settings, changelog, reference_of, 20) if r), None)
    assert saved is not None, "window 0 was never saved as the reference"
    assert (saved["start"], saved["count"]) == (start, PER_WINDOW)

    processes.restart_worker()
    # Window 1 three times slower: only a worker that recovered window 0 has a reference.
    rest = windows(tenant, start + WINDOW_MS, [2400.0])
    produce_all(drift_settings, serde, rest)
    found = latency_findings(drift_settings, serde, tenant, wanted=2)
    assert sorted(f.statistic for f in found) == ["ks", "psi"], found
    assert {(_ms(f.window_start_ms), _ms(f.reference_start_ms)) for f in found} == {
        (start + WINDOW_MS, start)
    }
    # Window 1 holds the records produced after the restart, and the record that opened it
    # before the restart when the open window was saved or the record redelivered (an open
    # window's samples since the last save may be lost: docs/architecture.md, drift).
    assert all(f.current_count >= PER_WINDOW for f in found), found
