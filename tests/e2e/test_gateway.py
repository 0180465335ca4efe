"""The gateway's policies end to end, through the bridge with the official `openai` client:
retries honouring Retry-After, fallback along an alias's chain and by failure class, circuit
breakers, rate limits, budgets, per-request routing overrides, and limits that survive a
restart of the Faust worker.

Failures are scripted on the second fake upstream (`upstream2`), which serves only the
deployments these tests make fail; the first (`upstream`) serves `fake` and `big-ctx`. Which
deployment answered is visible to the caller as the completion's `system_fingerprint`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from confluent_kafka import Consumer, TopicPartition

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import (
    BudgetAlert,
    DeploymentHealth,
    Event,
    InferenceFailed,
    InferenceTask,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from tests.conftest import (
    BUDGET_TENANT,
    BUDGET_USD_PER_DAY,
    BUDGETED,
    CALLER_TOKEN,
    LIMITED,
    LIMITED_TOKEN,
    RESTART,
    RESTART_TOKEN,
    Workers,
)
from tests.fakes.openai_upstream import Behaviour

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(120)]


# -- helpers ------------------------------------------------------------------------------------


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def request_id_of(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-")
    return completion_id.removeprefix("chatcmpl-")


def calls(fake: Any, provider_model: str) -> list[dict[str, Any]]:
    """The chat requests `fake` received for one provider model (i.e. one deployment)."""
    return [body for body in list(fake.requests) if body.get("model") == provider_model]


def asked(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )


def _decode(serde: AvroSerde, value: bytes | None) -> Event | None:
    try:
        return serde.decode(value or b"")
    except Exception:
        return None


class TopicWatcher:
    """Events appended to a topic after the watcher was made (so made before the action)."""

    def __init__(self, settings: Settings, serde: AvroSerde, topic: str) -> None:
        self.topic = topic
        self._serde = serde
        self._consumer = _consumer(settings)
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assignment = []
        for partition in partitions:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            assignment.append(TopicPartition(topic, partition, high))
        self._consumer.assign(assignment)
        self.seen: list[Event] = []

    def wait(self, match: Callable[[Event], bool], *, timeout_s: float = 20.0) -> Event:
        for event in self.seen:
            if match(event):
                return event
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.1)
            if message is None or message.error():
                continue
            event = _decode(self._serde, message.value())
            if event is None:
                continue
            self.seen.append(event)
            if match(event):
                return event
        raise AssertionError(
            f"no matching event on {self.topic} within {timeout_s}s; saw {self.seen!r}"
        )

    def close(self) -> None:
        self._consumer.close()


def journal(
    settings: Settings,
    serde: AvroSerde,
    topic: str,
    kind: type[Event],
    request_id: str,
    *,
    count: int,
    timeout_s: float = 20.0,
) -> list[Event]:
    """Every `kind` event of `request_id` on `topic` (from the beginning), once `count` are in."""
    consumer = _consumer(settings)
    found: list[Event] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(found) < count:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            event = _decode(serde, message.value())
            if isinstance(event, kind) and event.request_id == request_id:
                found.append(event)
        # Catch anything more than expected that is already there.
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            event = _decode(serde, message.value())
            if isinstance(event, kind) and event.request_id == request_id:
                found.append(event)
    finally:
        consumer.close()
    return found


# -- fixtures -----------------------------------------------------------------------------------


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
    """No scripted behaviour or recorded request leaks from one test into the next."""
    upstream2.reset()
    yield
    upstream2.reset()


@pytest.fixture
def health_watcher(settings: Settings, serde: AvroSerde, bridge_url: str) -> Iterator[TopicWatcher]:
    watcher = TopicWatcher(settings, serde, settings.topic("health"))
    yield watcher
    watcher.close()


# -- retries and fallbacks ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_retry_waits_out_the_upstreams_retry_after(
    client: openai.OpenAI, upstream2, settings: Settings, serde: AvroSerde
) -> None:
    upstream2.script(Behaviour.error(429, "slow down", retry_after="1"))

    completion = client.chat.completions.create(model="gpt-solo", messages=user("retry me"))

    assert "retry me" in completion.choices[0].message.content
    assert completion.system_fingerprint == "solo"
    sent = calls(upstream2, "solo-model")
    assert len(sent) == 2 and all(asked(body) == "retry me" for body in sent)
    first, second = upstream2.received_at[:2]
    assert second - first >= 1.0 - 0.01, f"retried after {second - first:.3f}s, Retry-After 1"

    request_id = request_id_of(completion.id)
    tasks = journal(
        settings, serde, settings.topic("inference.default"), InferenceTask, request_id, count=2
    )
    assert sorted(t.attempt for t in tasks) == [1, 2]
    retry = next(t for t in tasks if t.attempt == 2)
    assert retry.deployment == "solo" and retry.deployment_attempt == 2
    assert retry.not_before_ms is not None
    failures = journal(
        settings, serde, settings.topic("inference.results"), InferenceFailed, request_id, count=1
    )
    assert [(f.error_class, f.retry_after_s, f.attempt) for f in failures] == [
        ("rate_limited", 1.0, 1)
    ]
    assert retry.not_before_ms >= int(failures[0].occurred_at.timestamp() * 1000) + 1000


@pytest.mark.timeout(60)
def test_upstream_rate_limit_outlasting_the_retries_is_a_429_with_retry_after(
    client: openai.OpenAI, upstream2, settings: Settings
) -> None:
    attempts = settings.resilience.max_retries + 1
    upstream2.script(*[Behaviour.error(429, "still busy", retry_after="1")] * attempts)

    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-solo", messages=user("busy everywhere"))

    assert raised.value.code == "rate_limited"
    assert int(raised.value.response.headers["retry-after"]) >= 1
    assert len(calls(upstream2, "solo-model")) == attempts


@pytest.mark.timeout(60)
def test_persistent_server_errors_fall_back_along_the_chain(
    client: openai.OpenAI, upstream, upstream2, settings: Settings, serde: AvroSerde
) -> None:
    attempts_on_primary = settings.resilience.max_retries + 1
    upstream2.script(*[Behaviour.error(500, "upstream on fire")] * (attempts_on_primary + 2))

    completion = client.chat.completions.create(model="gpt-chain", messages=user("fall back"))

    assert completion.system_fingerprint == "fake"
    assert "fall back" in completion.choices[0].message.content
    assert len(calls(upstream2, "flaky-model")) == attempts_on_primary
    assert [asked(b) for b in calls(upstream, "fake-model")].count("fall back") == 1

    request_id = request_id_of(completion.id)
    tasks = journal(
        settings,
        serde,
        settings.topic("inference.default"),
        InferenceTask,
        request_id,
        count=attempts_on_primary + 1,
    )
    by_attempt = sorted(tasks, key=lambda t: t.attempt)
    assert [t.attempt for t in by_attempt] == list(range(1, attempts_on_primary + 2))
    assert [t.deployment for t in by_attempt] == ["flaky"] * attempts_on_primary + ["fake"]


@pytest.mark.timeout(60)
def test_context_length_exceeded_falls_back_to_a_larger_context(
    client: openai.OpenAI, upstream, upstream2
) -> None:
    upstream2.script(
        Behaviour.error(
            400,
            "This model's maximum context length is 4096 tokens.",
            code="context_length_exceeded",
        )
    )

    completion = client.chat.completions.create(model="gpt-ctx", messages=user("a long prompt"))

    assert completion.system_fingerprint == "big-ctx"
    assert "a long prompt" in completion.choices[0].message.content
    assert len(calls(upstream2, "small-model")) == 1  # not retried on the small one
    assert [asked(b) for b in calls(upstream, "big-model")].count("a long prompt") == 1


@pytest.mark.timeout(60)
def test_content_policy_is_the_callers_400_without_fallback(
    client: openai.OpenAI, upstream, upstream2
) -> None:
    upstream2.script(
        Behaviour.error(400, "Your request was flagged.", code="content_policy_violation")
    )
    big_before = len(calls(upstream, "big-model"))

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-ctx", messages=user("something forbidden"))

    assert raised.value.status_code == 400
    assert raised.value.code == "content_policy"
    assert "flagged" in raised.value.message
    assert len(calls(upstream2, "small-model")) == 1
    assert len(calls(upstream, "big-model")) == big_before


@pytest.mark.timeout(60)
def test_stream_falls_back_when_the_primary_fails_before_the_first_chunk(
    client: openai.OpenAI, upstream, upstream2
) -> None:
    upstream2.script(
        Behaviour.error(400, "maximum context length exceeded", code="context_length_exceeded")
    )

    stream = client.chat.completions.create(
        model="gpt-ctx", messages=user("stream me elsewhere"), stream=True
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream me elsewhere" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len(calls(upstream2, "small-model")) == 1
    assert [asked(b) for b in calls(upstream, "big-model")].count("stream me elsewhere") == 1


@pytest.mark.timeout(60)
def test_stream_broken_after_chunks_is_an_error_not_a_repeat_elsewhere(
    client: openai.OpenAI, upstream, upstream2
) -> None:
    upstream2.script(Behaviour.drop(after_chunks=3))
    question = "please stream quite a few words back to me"

    received: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        stream = client.chat.completions.create(
            model="gpt-stream", messages=user(question), stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    # The chunks go out on sg.stream and the rejection on sg.responses: the bridge reads both,
    # and when the rejection overtakes the chunks the caller gets a plain 502 before any chunk.
    # Either way the caller is told the stream broke, and nothing is repeated elsewhere.
    error = raised.value
    assert "broke" in error.message, error.message
    if isinstance(error, openai.APIStatusError):
        assert error.status_code == 502 and not received
    assert len(calls(upstream2, "stream-model")) == 1
    time.sleep(1.0)  # a wrong fallback would reach the other upstream by now
    assert question not in [asked(b) for b in calls(upstream, "fake-model")]


# -- circuit breaker ----------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_breaker_opens_skips_the_deployment_then_probes_and_closes(
    client: openai.OpenAI, upstream2, settings: Settings, health_watcher: TopicWatcher
) -> None:
    failures = settings.resilience.breaker_failures
    assert failures == settings.resilience.max_retries + 1  # one request trips it
    upstream2.script(*[Behaviour.error(500, "down")] * failures)

    tripping = client.chat.completions.create(model="gpt-breaker", messages=user("trip"))
    assert tripping.system_fingerprint == "fake"
    assert len(calls(upstream2, "breaker-model")) == failures

    opened = health_watcher.wait(
        lambda e: isinstance(e, DeploymentHealth) and e.deployment == "brk" and e.breaker == "open"
    )
    assert opened.previous_breaker == "closed" and opened.open_until_ms is not None
    time.sleep(0.3)  # the routers' copies of sg.health catch up

    while_open = []
    for i in range(3):
        if time.time() * 1000 > opened.open_until_ms - 400:
            break
        while_open.append(
            client.chat.completions.create(model="gpt-breaker", messages=user(f"open {i}"))
        )
    assert while_open, "the cool-down was over before a request could be sent"
    assert {c.system_fingerprint for c in while_open} == {"fake"}
    assert len(calls(upstream2, "breaker-model")) == failures  # nothing reached it while open

    time.sleep(max(0.0, opened.open_until_ms / 1000 - time.time()) + 0.3)
    probe = client.chat.completions.create(model="gpt-breaker", messages=user("probe"))
    assert probe.system_fingerprint == "brk"
    assert len(calls(upstream2, "breaker-model")) == failures + 1

    closed = health_watcher.wait(
        lambda e: (
            isinstance(e, DeploymentHealth)
            and e.deployment == "brk"
            and e.breaker == "closed"
            and e.previous_breaker != "closed"
        )
    )
    assert closed.open_until_ms is None
    time.sleep(0.3)
    after = client.chat.completions.create(model="gpt-breaker", messages=user("closed again"))
    assert after.system_fingerprint == "brk"


@pytest.mark.timeout(90)
def test_half_open_breaker_lets_only_the_probe_through(
    client: openai.OpenAI, upstream2, settings: Settings, health_watcher: TopicWatcher
) -> None:
    """docs/architecture.md: "open after N failures in a window → one half-open probe → closed";
    processors/resilience.py: the probe leases the slot "so nobody else calls meanwhile"."""
    failures = settings.resilience.breaker_failures
    upstream2.script(*[Behaviour.error(500, "down")] * failures, Behaviour.slow(2.5))

    tripping = client.chat.completions.create(model="gpt-breaker2", messages=user("trip"))
    assert tripping.system_fingerprint == "fake"
    opened = health_watcher.wait(
        lambda e: isinstance(e, DeploymentHealth) and e.deployment == "brk2" and e.breaker == "open"
    )
    assert opened.open_until_ms is not None
    time.sleep(max(0.0, opened.open_until_ms / 1000 - time.time()) + 0.3)

    with ThreadPoolExecutor(1) as pool:
        probe = pool.submit(
            client.chat.completions.create, model="gpt-breaker2", messages=user("the probe")
        )
        deadline = time.monotonic() + 5
        while len(calls(upstream2, "breaker2-model")) < failures + 1:
            assert time.monotonic() < deadline, "the probe never reached the deployment"
            time.sleep(0.05)
        time.sleep(0.5)  # the probe is in flight (it answers after 2.5 s)
        meanwhile = [
            client.chat.completions.create(model="gpt-breaker2", messages=user(f"meanwhile {i}"))
            for i in range(2)
        ]
        assert probe.result(30).system_fingerprint == "brk2"

    reached = [asked(b) for b in calls(upstream2, "breaker2-model")][failures:]
    assert reached == ["the probe"], f"while the probe was in flight brk2 also got {reached[1:]}"
    assert {c.system_fingerprint for c in meanwhile} == {"fake"}


# -- rate limits and budgets --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_rate_limited_key_gets_429_with_openai_headers(
    bridge_url: str, client: openai.OpenAI, settings: Settings
) -> None:
    assert LIMITED.limits == {"requests_per_minute": 3}  # bound to the key, on sg.identity
    limited = openai.OpenAI(
        base_url=f"{bridge_url}/v1", api_key=LIMITED_TOKEN, max_retries=0, timeout=30
    )
    for i in range(3):
        raw = limited.chat.completions.with_raw_response.create(
            model="gpt-fake", messages=user(f"allowed {i}")
        )
        assert raw.http_response.status_code == 200
        assert f"allowed {i}" in raw.parse().choices[0].message.content

    with pytest.raises(openai.RateLimitError) as raised:
        limited.chat.completions.create(model="gpt-fake", messages=user("one too many"))

    error = raised.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    headers = error.response.headers
    assert 1 <= int(headers["retry-after"]) <= 20  # one request per 20 s refills
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"]

    other = client.chat.completions.create(model="gpt-fake", messages=user("another key"))
    assert "another key" in other.choices[0].message.content


@pytest.mark.timeout(90)
def test_spent_budget_is_a_hard_stop_with_an_alert(
    client: openai.OpenAI, settings: Settings, serde: AvroSerde
) -> None:
    alerts = TopicWatcher(settings, serde, settings.topic("alerts"))
    # The tenant is the key's: a header naming another tenant changes nothing.
    tenant = {"X-Sluicegate-Tenant": "default"}
    budgeted = client.with_options(api_key=BUDGETED.token)
    assert BUDGETED.tenant == BUDGET_TENANT
    try:
        first = budgeted.chat.completions.create(
            model="gpt-fake", messages=user("spend a little"), extra_headers=tenant
        )
        assert "spend a little" in first.choices[0].message.content
        assert first.usage.total_tokens > 0  # on a priced deployment, so it costs something

        refused: openai.RateLimitError | None = None
        answered = 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                budgeted.chat.completions.create(
                    model="gpt-fake", messages=user("more"), extra_headers=tenant
                )
                answered += 1
                time.sleep(0.2)
            except openai.RateLimitError as error:
                refused = error
                break
        assert refused is not None, f"{answered} requests answered, none refused in 30 s"
        assert refused.status_code == 429 and refused.code == "budget_exceeded"
        assert refused.type == "insufficient_quota"
        assert int(refused.response.headers["retry-after"]) >= 1

        alert = alerts.wait(
            lambda e: (
                isinstance(e, BudgetAlert) and e.subject_id == BUDGET_TENANT and e.threshold == 1.0
            )
        )
        assert alert.subject_kind == "tenant" and alert.period == "day"
        assert alert.budget_usd == pytest.approx(BUDGET_USD_PER_DAY)
        assert alert.spent_usd >= alert.budget_usd

        other = client.chat.completions.create(model="gpt-fake", messages=user("other tenant"))
        assert "other tenant" in other.choices[0].message.content
    finally:
        alerts.close()


# -- routing overrides --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_override_headers_pick_the_deployment_or_strategy(
    client: openai.OpenAI, upstream, upstream2
) -> None:
    by_cost = client.chat.completions.create(model="gpt-cheap", messages=user("cheapest"))
    assert by_cost.system_fingerprint == "cheap"

    pinned = client.chat.completions.create(
        model="gpt-cheap",
        messages=user("pinned"),
        extra_headers={"X-Sluicegate-Deployment": "fake"},
    )
    assert pinned.system_fingerprint == "fake"
    assert "pinned" in [asked(b) for b in calls(upstream, "fake-model")]

    by_priority = client.chat.completions.create(
        model="gpt-cheap",
        messages=user("by priority"),
        extra_headers={"X-Sluicegate-Strategy": "priority"},
    )
    assert by_priority.system_fingerprint == "fake"
    assert [asked(b) for b in calls(upstream2, "cheap-model")] == ["cheapest"]

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="gpt-cheap",
            messages=user("not of this alias"),
            extra_headers={"X-Sluicegate-Deployment": "brk"},
        )
    assert raised.value.code == "invalid_override"


# -- state across a restart (last: it restarts the shared Faust worker) -------------------------


@pytest.mark.timeout(180)
def test_rate_limit_survives_a_worker_restart(
    bridge_url: str, client: openai.OpenAI, workers: Workers, settings: Settings
) -> None:
    assert RESTART.limits == {"requests_per_minute": 1}
    limited = openai.OpenAI(
        base_url=f"{bridge_url}/v1", api_key=RESTART_TOKEN, max_retries=0, timeout=60
    )
    started = time.monotonic()
    limited.chat.completions.create(model="gpt-fake", messages=user("my one request"))
    with pytest.raises(openai.RateLimitError):
        limited.chat.completions.create(model="gpt-fake", messages=user("before restart"))

    workers.restart_faust()

    with pytest.raises(openai.RateLimitError) as raised:
        limited.chat.completions.create(model="gpt-fake", messages=user("after restart"))
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the restart took {elapsed:.0f}s: the bucket may have refilled"
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.response.headers["x-ratelimit-limit-requests"] == "1"

    alive = client.chat.completions.create(model="gpt-fake", messages=user("still serving"))
    assert "still serving" in alive.choices[0].message.content
