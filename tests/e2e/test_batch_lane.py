"""The batch lane end to end, through the bridge with the official `openai` client: a request
marked `priority: batch` (header or extra_body) is answered by the cheapest capable deployment
through `sg.inference.<batch.pool>`, and a backlog of batch work does not hold up an interactive
request (processors/priority.py, serving/inference_worker.py). The last test runs the inference
worker in-process with a backend whose calls the test releases, to show the lane yielding to
interactive work and resuming after it.

Which deployment answered is the completion's `system_fingerprint`. The slow batch work runs on
`cheap` (second fake upstream, scripted slow); the interactive request goes to `fake` (first).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from sluicegate.connectors.ports import Completion
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import InferenceTask, Span
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.inference_worker import InferenceWorker
from sluicegate.settings import (
    BatchSettings,
    Deployment,
    KafkaSettings,
    ModelAlias,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics
from tests.builders import task
from tests.conftest import CALLER_TOKEN
from tests.fakes.backends import CompleteOnlyBackend, answer
from tests.fakes.openai_upstream import Behaviour
from tests.topics_io import drop_topics, produce, wait_for, wait_for_event

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(90)]

BATCH = {"sluicegate": {"priority": "batch"}}


@pytest.fixture(scope="module")
def client(bridge_url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{bridge_url}/v1", api_key=CALLER_TOKEN, max_retries=0, timeout=60
    )


@pytest.fixture(scope="module")
def serde(settings: Settings) -> AvroSerde:
    return build_serde(settings)


@pytest.fixture(autouse=True)
def clean_upstream2(upstream2) -> Iterator[None]:
    upstream2.reset()
    yield
    upstream2.reset()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def request_id_of(completion_id: str) -> str:
    return completion_id.removeprefix("chatcmpl-")


def admission_span(settings: Settings, serde: AvroSerde, request_id: str) -> Span:
    def match(_key: bytes | None, value: bytes) -> bool:
        event = serde.decode(value)
        return (
            isinstance(event, Span)
            and event.request_id == request_id
            and (event.name == "admission")
        )

    return serde.decode(wait_for(settings, settings.topic("traces"), match)[1])


def asked(upstream, text: str) -> int:
    return sum(1 for body in list(upstream.requests) if body["messages"][-1]["content"] == text)


def test_a_batch_request_goes_to_the_cheapest_deployment_through_the_batch_lane(
    client: openai.OpenAI, settings: Settings, serde: AvroSerde
) -> None:
    # gpt-chain routes by priority: `flaky` (priority -1) first, though `fake` costs half.
    completion = client.chat.completions.create(
        model="gpt-chain", messages=user("whenever you can"), extra_body=BATCH
    )
    assert completion.system_fingerprint == "fake"
    assert "whenever you can" in completion.choices[0].message.content

    lane = settings.topic(f"inference.{settings.batch.pool}")
    request_id = request_id_of(completion.id)
    task = wait_for_event(settings, serde, lane, InferenceTask, request_id)
    assert (task.deployment, task.pool, task.fallbacks) == ("fake", "batch", ["flaky"])
    span = admission_span(settings, serde, request_id)
    assert span.attributes["priority"] == "batch"
    assert span.attributes["strategy"] == "cost" and span.attributes["pool"] == "batch"

    # The header does the same; on gpt-cheap (fake, cheap) the cheapest is `cheap`.
    header = client.chat.completions.create(
        model="gpt-cheap",
        messages=user("by header"),
        extra_headers={"X-Sluicegate-Priority": "batch"},
    )
    assert header.system_fingerprint == "cheap"
    task = wait_for_event(settings, serde, lane, InferenceTask, request_id_of(header.id))
    assert task.pool == "batch"


def test_an_unknown_priority_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="gpt-fake",
            messages=user("hi"),
            extra_headers={"X-Sluicegate-Priority": "asap"},
        )
    assert raised.value.code == "invalid_override"
    assert "unknown priority 'asap'; known: ['batch', 'interactive']" in raised.value.message


def test_interactive_requests_are_not_starved_behind_a_batch_backlog(
    client: openai.OpenAI, upstream, upstream2, settings: Settings
) -> None:
    # More slow batch requests than one worker runs at once: some wait on the lane.
    slow_s = 2.0
    count = settings.batch.concurrency + 4
    upstream2.script(*[Behaviour.slow(slow_s)] * count)
    backlog = f"backlog {uuid.uuid4().hex[:8]}"

    with ThreadPoolExecutor(count) as pool:
        started = time.monotonic()
        batch: list[Future] = [
            pool.submit(
                client.chat.completions.create,
                model="gpt-cheap",
                messages=user(backlog),
                extra_body=BATCH,
            )
            for _ in range(count)
        ]
        deadline = time.monotonic() + 20
        while asked(upstream2, backlog) < settings.batch.concurrency:  # the lane is full
            assert time.monotonic() < deadline, f"{asked(upstream2, backlog)} batch calls began"
            time.sleep(0.02)

        sent = time.monotonic()
        interactive = client.chat.completions.create(model="gpt-fake", messages=user("now"))
        took = time.monotonic() - sent

        assert interactive.system_fingerprint == "fake"
        assert took < 1.0, f"the interactive request took {took:.2f}s behind the batch backlog"
        assert not any(f.done() for f in batch), "batch work finished before the interactive"

        answers = [f.result(timeout=60) for f in batch]
        drained = time.monotonic() - started
    assert {a.system_fingerprint for a in answers} == {"cheap"}
    assert asked(upstream2, backlog) == count
    assert drained >= 2 * slow_s, "the backlog ran as one wave: no batch task waited on the lane"


class GatedBackend(CompleteOnlyBackend):
    """Every call waits until the test releases its request; `running` are the calls under way."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.running: set[str] = set()
        self.gates: dict[str, asyncio.Event] = {}

    def release(self, *request_ids: str) -> None:
        for request_id in request_ids:
            self.gates.setdefault(request_id, asyncio.Event()).set()

    async def complete(self, t: InferenceTask) -> Completion:
        self.started.append(t.request_id)
        self.running.add(t.request_id)
        try:
            await self.gates.setdefault(t.request_id, asyncio.Event()).wait()
        finally:
            self.running.discard(t.request_id)
        return answer("ok")


async def until(condition, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.02)


async def test_the_worker_holds_batch_work_while_interactive_work_runs(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"bl{run}."),
        worker=WorkerSettings(
            app_id=f"sluicegate-batch-{run}",
            inference_concurrency=2,
            data_dir=tmp_path,
            metrics_port=None,
            inference_metrics_port=None,
        ),
        batch=BatchSettings(concurrency=2, fetch_batch=2, pause_when_interactive_in_flight=1),
        deployments=[Deployment(name="local-smollm2", backend="llamacpp", provider_model="p")],
        models=[ModelAlias(name="smollm2-135m", deployments=["local-smollm2"])],
    )
    ensure_topics(settings)
    serde = build_serde(settings)
    backend = GatedBackend()
    worker = InferenceWorker(settings=settings, serde=serde, backends={"local-smollm2": backend})
    batch = [task().model_copy(update={"pool": "batch"}) for _ in range(6)]
    interactive = task()

    async def send(*tasks: InferenceTask) -> None:
        for t in tasks:
            topic = settings.topic(f"inference.{t.pool}")
            await asyncio.to_thread(
                produce, settings, topic, t.request_id.encode(), serde.encode(t)
            )

    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await send(*batch)
        await until(lambda: len(backend.running) == 2, "two batch tasks running")
        await asyncio.sleep(0.5)
        assert len(backend.started) == 2  # batch.concurrency: the other four wait on the lane

        await send(interactive)  # its own slots: it starts though the batch slots are full
        await until(lambda: interactive.request_id in backend.running, "the interactive task")

        first_two = backend.started[:2]
        backend.release(*first_two)  # the batch slots free up...
        await until(lambda: backend.running == {interactive.request_id}, "batch tasks done")
        await asyncio.sleep(0.5)
        assert len(backend.started) == 3  # ...but no batch task starts beside interactive work

        backend.release(interactive.request_id)  # interactive work drained: the lane resumes
        backend.release(*(t.request_id for t in batch))
        await until(lambda: len(backend.started) == 7 and not backend.running, "the backlog")
        assert backend.started[:3] == [*first_two, interactive.request_id]
        assert set(backend.started[3:]) == {t.request_id for t in batch} - set(first_two)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await asyncio.to_thread(drop_topics, settings)
