"""A redelivered InferenceTask does not answer its request twice (serving/inference_worker.py).

The inference worker runs in-process on the real broker, with a scripted backend: a task
written twice (what admission does when the Faust worker dies before committing) runs once, and
a task whose request already has a final result on sg.responses (what a restarted inference
worker sees for tasks it finished but had not committed) does not run at all.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from sluicegate.connectors.ports import Completion
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import InferenceTask, ResponseReady
from sluicegate.serving.inference_worker import InferenceWorker
from sluicegate.settings import (
    Deployment,
    KafkaSettings,
    ModelAlias,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics
from tests.builders import task
from tests.fakes.backends import CompleteOnlyBackend, answer
from tests.topics_io import produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class CountingBackend(CompleteOnlyBackend):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def complete(self, t: InferenceTask) -> Completion:
        self.calls.append(t.request_id)
        return answer()


def responses_for(settings: Settings, serde, request_id: str) -> list[ResponseReady]:
    topic = settings.topic("responses")
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    found = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, -2) for p in ends])
        while ends:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            if message.key() == request_id.encode():
                event = serde.decode(message.value())
                if isinstance(event, ResponseReady):
                    found.append(event)
            if message.offset() + 1 >= ends.get(message.partition(), 0):
                ends.pop(message.partition(), None)
    finally:
        consumer.close()
    return found


def worker_settings(kafka_bootstrap: str, tmp_path: Path, name: str, **worker: Any) -> Settings:
    """One in-process inference worker's settings: topics and group of the test's own, no
    metrics ports, the `local-smollm2` deployment (its backend is the test's fake)."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"{name}{run}."),
        worker=WorkerSettings(
            app_id=f"sluicegate-{name}-{run}",
            data_dir=tmp_path,
            metrics_port=None,
            inference_metrics_port=None,
            **worker,
        ),
        deployments=[Deployment(name="local-smollm2", backend="llamacpp", provider_model="p")],
        models=[ModelAlias(name="smollm2-135m", deployments=["local-smollm2"])],
    )


async def test_a_task_delivered_twice_answers_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = worker_settings(kafka_bootstrap, tmp_path, "redelivery")
    ensure_topics(settings)
    serde = build_serde(settings)
    backend = CountingBackend()
    twice, answered_before = task(), task()
    # The request of `answered_before` got its final result before this worker started.
    produce(settings, settings.topic("responses"), answered_before.request_id.encode(), b"x")

    worker = InferenceWorker(settings=settings, serde=serde, backends={"local-smollm2": backend})
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        pool = settings.topic("inference.default")
        for t in (twice, answered_before, twice):
            await asyncio.to_thread(produce, settings, pool, t.request_id.encode(), serde.encode(t))
        for _ in range(300):
            if worker.skipped >= 2:
                break
            await asyncio.sleep(0.1)
        assert worker.skipped == 2
        assert backend.calls == [twice.request_id]
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    answers = await asyncio.to_thread(responses_for, settings, serde, twice.request_id)
    assert len(answers) == 1
