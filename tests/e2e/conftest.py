"""Processes with the optional admission features on (cache, guardrails), shared by the
modules that test them: the session-wide processes keep them off so that tests counting
upstream calls, or echoing prompts, see exactly what they sent."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest

from sluicegate.settings import (
    BannedTopic,
    BridgeSettings,
    CacheSettings,
    GuardrailsSettings,
    KafkaSettings,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics
from tests.conftest import CALLER_TOKEN, Workers, _stop, free_port, publish_test_keys, start_bridge
from tests.topics_io import drop_topics


@pytest.fixture(scope="session")
def featured_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
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
            # Input masks cards and emails; output masks every kind, so a phone number the
            # echoing upstream repeats is masked on the way back, and a banned topic is withheld.
            "guardrails": GuardrailsSettings(
                pii_action="mask",
                pii_kinds=["credit_card", "email"],
                injection_action="block",
                output_pii_action="mask",
                banned_topics=[BannedTopic(name="weapons", keywords=["detonator", "nerve agent"])],
            ),
        }
    )


@pytest.fixture(scope="session")
def featured_client(
    featured_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    ensure_topics(featured_settings)
    publish_test_keys(featured_settings)
    logs = tmp_path_factory.mktemp("cache-logs")
    workers = Workers(featured_settings, logs)
    bridge = None
    try:
        workers.wait_ready()
        bridge = start_bridge(featured_settings, logs / "bridge.log")
        yield openai.OpenAI(
            base_url=f"http://127.0.0.1:{featured_settings.bridge.port}/v1",
            api_key=CALLER_TOKEN,
            max_retries=0,
            timeout=60,
        )
    finally:
        if bridge is not None:
            _stop(bridge)
        workers.stop()
        drop_topics(featured_settings)
