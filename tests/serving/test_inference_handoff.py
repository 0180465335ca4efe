"""Partitions handed from one inference worker to another while tasks run (a worker or replica
joining the group): the running tasks finish where they are, their offsets are stored before
the partitions move, and no task runs twice.

Both workers run in this process on the real broker, on one event loop, with a backend that
takes 0.3 s per answer. A second worker joins while the first has four tasks running: the
first's `_on_revoke` waits for them on the fetcher thread. The regression: their offsets were
stored with `store_offsets` from the event loop, which blocks while a rebalance callback runs
in the consumer's poll() — the loop froze, the wait ran out after 10 s, the partitions moved
with the offsets unstored, and the new owner ran those tasks again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from sluicegate.connectors.ports import Completion
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import InferenceTask
from sluicegate.serving.inference_worker import InferenceWorker, PendingOffsets
from sluicegate.streams.topics import ensure_topics
from tests.builders import task
from tests.fakes.backends import CompleteOnlyBackend, answer
from tests.serving.test_inference_redelivery import responses_for, worker_settings
from tests.topics_io import drop_topics, produce

ANSWER_S = 0.3


class SlowBackend(CompleteOnlyBackend):
    """Answers every task after ANSWER_S; `calls` is shared by both workers' backends."""

    def __init__(self, calls: Counter[str]) -> None:
        self.calls = calls

    async def complete(self, t: InferenceTask) -> Completion:
        self.calls[t.request_id] += 1
        await asyncio.sleep(ANSWER_S)
        return answer()


@pytest.mark.unit
def test_pending_offsets_keep_the_highest_per_partition_and_are_taken_once() -> None:
    pending = PendingOffsets()
    pending.put("t", 0, 5)
    pending.put("t", 0, 3)  # an older task's offset never moves a partition back
    pending.put("t", 1, 7)
    taken = {(tp.topic, tp.partition): tp.offset for tp in pending.take()}
    assert taken == {("t", 0): 5, ("t", 1): 7}
    assert pending.take() == []


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_a_worker_joining_mid_run_takes_partitions_without_a_task_run_twice(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = worker_settings(kafka_bootstrap, tmp_path, "handoff", inference_concurrency=4)
    ensure_topics(settings)
    serde = build_serde(settings)
    calls: Counter[str] = Counter()
    tasks = [task() for _ in range(48)]
    pool = settings.topic("inference.default")
    for t in tasks:
        await asyncio.to_thread(produce, settings, pool, t.request_id.encode(), serde.encode(t))

    def worker() -> InferenceWorker:
        backends = {"local-smollm2": SlowBackend(calls)}
        return InferenceWorker(settings=settings, serde=serde, backends=backends)

    first, second = worker(), worker()
    stop = asyncio.Event()
    running = [asyncio.create_task(first.run(stop))]
    try:
        for _ in range(600):  # the first has answered a few and has four running
            if len(calls) >= 8:
                break
            await asyncio.sleep(0.05)
        running.append(asyncio.create_task(second.run(stop)))
        for _ in range(1200):
            if len(calls) == len(tasks):
                break
            await asyncio.sleep(0.1)
        assert len(calls) == len(tasks), f"{len(tasks) - len(calls)} tasks never ran"
        assert first.revokes_cut_short == 0 and second.revokes_cut_short == 0
        ran_twice = {rid: n for rid, n in calls.items() if n > 1}
        assert ran_twice == {}
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 60)
    try:
        for t in tasks[:: len(tasks) // 6]:  # a sample: one answer each on sg.responses
            answers = await asyncio.to_thread(responses_for, settings, serde, t.request_id)
            assert len(answers) == 1
    finally:
        drop_topics(settings)
