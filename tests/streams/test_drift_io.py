"""The drift stage's Faust-side plumbing: the table written by tenant partition, the prompt queue
that never blocks admission, and how the app wires agents, timer, task and table."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any

import numpy as np
import pytest

from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
from sluicegate.processors.drift_samples import PromptToEmbed
from sluicegate.processors.drift_stage import DriftStage
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import CacheSettings, DriftSettings, LimitsSettings, Settings
from sluicegate.streams.app import create_app
from sluicegate.streams.drift_io import DriftTable, PromptQueue, state_key, tenant_partition
from sluicegate.streams.topics import catalogue

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_tenant_partition_is_the_java_clients_murmur2(key: bytes, partition: int) -> None:
    """Kafka's Java partitioner on 1000 partitions (the vectors kafka-python checks against)."""
    assert tenant_partition(key.decode(), 1000) == partition


class FakeTable:
    def __init__(self, items: dict[str, Any] | None = None) -> None:
        self.sent: list[tuple[int, str, Any]] = []
        self._items = items or {}

    def send_changelog(self, partition: int, key: str, value: Any) -> None:
        self.sent.append((partition, key, value))

    def items(self) -> Any:
        return self._items.items()


def test_state_goes_to_the_tenants_partition_and_comes_back() -> None:
    table = FakeTable()
    store = DriftTable(table, partitions=3, assigned=lambda: {tenant_partition("acme", 3)})
    store.save("acme", "latency_ms", {"v": 1})
    assert table.sent == [(tenant_partition("acme", 3), state_key("acme", "latency_ms"), {"v": 1})]
    assert store.owns("acme")
    other = next(t for t in ("b", "c", "d", "e", "f") if not store.owns(t))
    assert tenant_partition(other, 3) != tenant_partition("acme", 3)

    recovered = FakeTable(
        {
            state_key("acme", "usd"): {"v": 1},
            state_key("a|b", "eval:x"): {"v": 1},  # any tenant id survives the key
            "not json": {"v": 1},
            state_key("acme", "deleted"): None,
        }
    )
    saved = list(DriftTable(recovered, partitions=3, assigned=set).saved())
    assert saved == [("acme", "usd", {"v": 1}), ("a|b", "eval:x", {"v": 1})]


def test_recover_into_restores_only_owned_series() -> None:
    source = DriftStage(settings=DriftSettings(), save=lambda *_: None)
    source.on_embedding(PromptToEmbed("acme", 1_000, "hi"), np.ones(4))
    state = source.monitor.state_of("acme", "prompt_embedding")
    items = {
        state_key("acme", "prompt_embedding"): state,
        state_key("zeta", "prompt_embedding"): state,
    }
    mine = tenant_partition("acme", 7)
    store = DriftTable(FakeTable(items), partitions=7, assigned=lambda: {mine})
    stage = DriftStage(settings=DriftSettings(), save=store.save)
    restored = store.recover_into(stage)
    expected = [("acme", "prompt_embedding")]
    if tenant_partition("zeta", 7) == mine:
        expected.append(("zeta", "prompt_embedding"))
    assert restored == len(expected) and stage.monitor.series() == expected


def prompt(text: str) -> PromptToEmbed:
    return PromptToEmbed("acme", 0, text)


def test_prompts_over_the_embedding_rate_are_skipped_and_counted() -> None:
    now = [0.0]
    queue = PromptQueue(maxsize=100, max_per_s=2.0, clock=lambda: now[0])
    assert [queue.offer(prompt(str(i))) for i in range(4)] == [True, True, False, False]
    now[0] = 0.5  # one more token
    assert [queue.offer(prompt("a")), queue.offer(prompt("b"))] == [True, False]
    now[0] = 100.0  # the bucket holds no more than its burst
    assert sum(queue.offer(prompt(str(i))) for i in range(10)) == 2
    assert queue.over_rate == 11 and queue.dropped == 0


async def test_a_full_queue_drops_and_counts_instead_of_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = PromptQueue(maxsize=2)
    assert [queue.offer(prompt(str(i))) for i in range(5)] == [True, True, False, False, False]
    assert queue.dropped == 3
    with caplog.at_level(logging.WARNING):
        assert queue.report_drops() == 3
        assert queue.report_drops() == 0
    assert "3 sampled prompts dropped" in caplog.text


async def test_the_queue_embeds_in_order_and_survives_a_failure() -> None:
    queue = PromptQueue()
    handled: list[tuple[str, float]] = []

    async def embed(text: str) -> np.ndarray:
        if text == "boom":
            raise RuntimeError("embedder down")
        return np.array([float(len(text))])

    async def handle(item: PromptToEmbed, vector: np.ndarray) -> None:
        handled.append((item.text, float(vector[0])))

    for text in ("a", "boom", "abc"):
        queue.offer(prompt(text))
    task = asyncio.create_task(queue.run(embed, handle))
    try:
        await asyncio.wait_for(queue.drained(), 5)
    finally:
        task.cancel()
    assert handled == [("a", 1.0), ("abc", 3.0)]


class FakeEmbedder:
    model_name = "fake"
    dimensions = 4

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.full((len(texts), 4), 0.5, dtype=np.float32)


def _app(embedder: Any = None, **update: Any) -> Any:
    settings = Settings().model_copy(update=update)
    serde = AvroSerde(registry=InMemorySchemaRegistry())
    return create_app(settings, serde=serde, embedder=embedder)


def _tasks(app: Any) -> set[str]:
    """The app's drift timers and tasks (no public listing; the commit watchdog is always on)."""
    return {task.__name__ for task in app._app_tasks} - {"commit_watchdog"}


def test_the_app_wires_drift_when_enabled() -> None:
    app = _app(limits=LimitsSettings(), cache=CacheSettings(enabled=False))
    assert {"ledger", "drift_evals"} <= set(app.agents)
    assert "spend" not in app.agents  # one agent on sg.cost, whatever it runs
    assert "drift" in app.tables
    off = _app(drift=DriftSettings(enabled=False), cache=CacheSettings(enabled=False))
    assert "drift_evals" not in off.agents and "drift" not in off.tables
    assert "ledger" not in off.agents  # no budgets, no drift: nothing reads sg.cost
    assert "drift_timer" not in _tasks(off)


def test_prompts_are_embedded_by_a_task_only_with_an_embedder() -> None:
    cache = CacheSettings(enabled=True)
    assert _tasks(_app(FakeEmbedder(), cache=cache)) == {"drift_timer", "drift_embeddings"}
    assert _tasks(_app(None, cache=cache)) == {"drift_timer"}
    no_vectors = DriftSettings(metrics=["latency_ms", "usd"])
    assert _tasks(_app(FakeEmbedder(), cache=cache, drift=no_vectors)) == {"drift_timer"}


def test_the_drift_changelog_is_in_the_catalogue() -> None:
    settings = Settings()
    names = {spec.name for spec in catalogue(settings)}
    assert f"{settings.worker.app_id}-drift-changelog" in names
    assert f"{settings.topic('evals')}.dlq" in names  # drift_evals dead-letters like any agent


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_background_embeddings_run_at_a_lower_priority_than_the_loop() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sluicegate.streams.app import BACKGROUND_NICE, lower_thread_priority

    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice_of_this_thread()
    with ThreadPoolExecutor(1, initializer=lower_thread_priority) as pool:
        background = pool.submit(nice_of_this_thread).result()
    assert background == BACKGROUND_NICE
    assert nice_of_this_thread() == before  # the caller's thread is untouched
