"""The prompt view: sg.prompts folded into a registry, read whole at start and followed; bad
records skipped. The broker test publishes the way the CLI does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from sluicegate.cli_prompts import publish_versions
from sluicegate.connectors.schema_registry import InMemorySchemaRegistry, build_serde
from sluicegate.processors.envelope import system_envelope
from sluicegate.processors.prompt_registry import PromptRegistry
from sluicegate.schemas.models import CatalogueUpdated
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import KafkaSettings, Settings, WorkerSettings
from sluicegate.streams.prompt_view import PromptView
from sluicegate.streams.topics import catalogue, ensure_topics
from tests.topics_io import drop_topics

VARS = {"question": "string"}


@pytest.mark.unit
def test_the_topic_is_compacted_with_one_key_per_version() -> None:
    spec = next(s for s in catalogue(Settings()) if s.name == "sg.prompts")
    assert spec.partitions == 1 and spec.config()["cleanup.policy"] == "compact"


@pytest.mark.unit
def test_records_that_do_not_decode_or_parse_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    serde = AvroSerde(registry=InMemorySchemaRegistry())
    view = PromptView(
        settings=Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1")), serde=serde
    )
    source = PromptRegistry()
    good = source.publish("acme", "support", template="{{ question }}", variables=VARS)
    bad = good.model_copy(update={"prompt_name": "broken", "variables_json": "{not json"})
    other = CatalogueUpdated(
        **system_envelope(producer="t"), version="v1", catalogue_json="{}", source="t"
    )
    for value in (b"garbage", serde.encode(other), serde.encode(bad), serde.encode(good)):
        view.apply(value)
    assert view.registry.names("acme") == ["support"]
    assert "broken@1 skipped" in caplog.text


@pytest.fixture(scope="module")
def broker_settings(kafka_bootstrap: str) -> Iterator[Settings]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"p{run}."),
        worker=WorkerSettings(app_id=f"sluicegate-prompts-{run}", metrics_port=None),
    )
    ensure_topics(settings)
    try:
        yield settings
    finally:
        drop_topics(settings)


@pytest.mark.integration
def test_the_view_reads_the_whole_topic_then_follows_it(broker_settings: Settings) -> None:
    writer = PromptRegistry()
    events = []
    for n in range(3):
        event = writer.publish(
            "acme", "support", template="Q" + "!" * n + " {{ question }}", variables=VARS,
            labels=["prod"], now_ms=1_000 + n,
        )  # fmt: skip
        writer.apply(event)
        events.append(event)
    back = writer.rollback("acme", "support", now_ms=2_000)
    writer.apply(back)
    publish_versions(broker_settings, [*events, back])

    view = PromptView(settings=broker_settings, serde=build_serde(broker_settings))
    view.start(timeout_s=30)
    try:
        registry = view.registry
        assert [v.version for v in registry.versions("acme", "support")] == [1, 2, 3]
        assert registry.labels("acme", "support") == {"prod": 2}  # the rollback won
        assert registry.resolve("acme", "support@prod").template == "Q! {{ question }}"

        moved = writer.label("acme", "support", "prod", 3, now_ms=3_000)
        publish_versions(broker_settings, [moved])
        deadline = time.monotonic() + 15
        while registry.labels("acme", "support")["prod"] != 3:
            assert time.monotonic() < deadline, "the view did not follow the topic"
            time.sleep(0.05)
    finally:
        view.stop()
