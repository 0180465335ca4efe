"""Limits are exact across instances: two bridges and two Faust workers (and two inference
workers) share one key's requests/min and one tenant's budget, instead of each enforcing its own
copy. Admission runs on the tenant's partition, so one worker decides for a tenant whichever
bridge journaled the request; budgets hold each request's maximum cost until it is costed."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import CostEntry
from sluicegate.settings import (
    BridgeSettings,
    KafkaSettings,
    LimitRule,
    LimitsSettings,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics
from tests.conftest import (
    BUDGET_TENANT,
    BUDGETED,
    LIMITED,
    Workers,
    _stop,
    free_port,
    publish_test_keys,
    start_bridge,
)
from tests.topics_io import drop_topics, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Room for a few requests of the fake deployment ($0.15/M in, $0.60/M out; ~1e-5 held each).
BUDGET_USD = 3e-5


@dataclass
class Pair:
    settings: Settings
    urls: list[str]


def _members_with_partitions(settings: Settings) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    group_id = settings.worker.app_id
    group = admin.describe_consumer_groups([group_id])[group_id].result(10)
    return sum(1 for m in group.members if m.assignment.topic_partitions)


@pytest.fixture(scope="module")
def pair(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    run = uuid.uuid4().hex[:8]
    own = settings.model_copy(
        update={
            "kafka": KafkaSettings(
                bootstrap_servers=settings.kafka.bootstrap_servers, topic_prefix=f"x{run}."
            ),
            "worker": WorkerSettings(
                app_id=f"sluicegate-exact-{run}",
                inference_concurrency=8,
                data_dir=tmp_path_factory.mktemp("exact-worker"),
                metrics_port=None,
                inference_metrics_port=None,
            ),
            "limits": LimitsSettings(tenants={BUDGET_TENANT: LimitRule(usd_per_day=BUDGET_USD)}),
        }
    )
    ensure_topics(own)
    publish_test_keys(own)
    logs = tmp_path_factory.mktemp("exact-logs")
    workers = [Workers(own, tmp_path_factory.mktemp(f"exact-{n}")) for n in ("a", "b")]
    bridges: list[subprocess.Popen[bytes]] = []
    try:
        for w in workers:
            w.wait_ready()
        deadline = time.monotonic() + 120
        while _members_with_partitions(own) < 2:
            assert time.monotonic() < deadline, "the two Faust workers never shared the partitions"
            time.sleep(0.5)
        urls = []
        for name in ("b1", "b2"):
            port = free_port()
            instance = own.model_copy(update={"bridge": BridgeSettings(port=port)})
            bridges.append(start_bridge(instance, logs / f"{name}.log"))
            urls.append(f"http://127.0.0.1:{port}/v1")
        yield Pair(own, urls)
    finally:
        for bridge in bridges:
            _stop(bridge)
        for w in workers:
            w.stop()
        drop_topics(own)


async def _fire(urls: list[str], token: str, n: int, *, stream: bool) -> list[int | str]:
    """n concurrent requests spread over the bridges; each one's HTTP status (or error code)."""
    clients = [
        openai.AsyncOpenAI(base_url=u, api_key=token, max_retries=0, timeout=60) for u in urls
    ]

    async def one(i: int) -> int | str:
        client = clients[i % len(clients)]
        messages = [{"role": "user", "content": f"exact {i}"}]
        try:
            if stream:
                chunks = await client.chat.completions.create(
                    model="gpt-fake",
                    messages=messages,
                    max_tokens=16,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for _ in chunks:
                    pass
            else:
                await client.chat.completions.create(
                    model="gpt-fake", messages=messages, max_tokens=16
                )
            return 200
        except openai.APIStatusError as error:
            return f"{error.status_code}:{error.code}"

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for client in clients:
            await client.close()


@pytest.mark.timeout(300)
def test_a_key_limit_holds_in_total_across_two_bridges_and_two_workers(pair: Pair) -> None:
    assert LIMITED.limits == {"requests_per_minute": 3}
    outcomes = asyncio.run(_fire(pair.urls, LIMITED.token, 12, stream=False))
    assert outcomes.count(200) == 3, outcomes
    assert outcomes.count("429:rate_limit_exceeded") == 9, outcomes


@pytest.mark.timeout(300)
def test_a_tenant_budget_stops_concurrent_streams_within_one_request(pair: Pair) -> None:
    outcomes = asyncio.run(_fire(pair.urls, BUDGETED.token, 16, stream=True))
    answered = outcomes.count(200)
    assert answered >= 1 and outcomes.count("429:budget_exceeded") == 16 - answered, outcomes
    # Every answer is costed (streams too: usage from the final chunk): read them all.
    serde = build_serde(pair.settings)
    costs: list[CostEntry] = []

    def costed(_key: bytes | None, value: bytes) -> bool:
        event = serde.decode(value)
        if isinstance(event, CostEntry) and event.tenant_id == BUDGET_TENANT:
            costs.append(event)
        return len(costs) == answered

    wait_for(pair.settings, pair.settings.topic("cost"), costed, timeout_s=60)
    spent = sum(c.usd for c in costs)
    largest = max(c.usd for c in costs)
    assert all(c.usd > 0 and c.reserved_usd >= c.usd for c in costs)
    assert spent <= BUDGET_USD + largest, (spent, BUDGET_USD, largest, answered)
    # Once everything is costed and its hold released, admission goes by what was spent:
    # refused for good at the budget, admitted again below it (when the spend agent has
    # released the holds, within moments).
    deadline = time.monotonic() + 15
    while True:
        later = asyncio.run(_fire(pair.urls, BUDGETED.token, 1, stream=True))
        if spent >= BUDGET_USD:
            assert later == ["429:budget_exceeded"], (later, spent)
            break
        if later == [200]:
            break
        assert time.monotonic() < deadline, (later, spent)
        time.sleep(0.5)
