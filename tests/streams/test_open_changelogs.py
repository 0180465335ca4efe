"""The Faust worker's start-up writes (streams/worker.py `open_changelogs`), on the real broker:
one tombstone of an unused key per changelog partition, which a table recovering from the
changelog ignores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest

from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.topic_read import read_to_end
from sluicegate.settings import KafkaSettings, Settings, WorkerSettings
from sluicegate.streams.app import create_app
from sluicegate.streams.topics import ensure_topics, faust_changelogs
from sluicegate.streams.worker import UNUSED_KEY, open_changelogs
from tests.topics_io import drop_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    run = uuid.uuid4().hex[:8]
    made = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"oc{run}."),
        worker=WorkerSettings(app_id=f"oc-{run}", data_dir=tmp_path),
    )
    ensure_topics(made)
    yield made
    drop_topics(made)


def test_every_changelog_partition_gets_one_tombstone_of_the_unused_key(
    settings: Settings,
) -> None:
    app = create_app(settings, serde=AvroSerde(registry=InMemorySchemaRegistry()))

    async def start_write_stop() -> None:
        await app.producer.start()
        try:
            await open_changelogs(app, settings.kafka.default_partitions)
        finally:
            await app.producer.stop()

    asyncio.run(start_write_stop())
    changelogs = faust_changelogs(settings)
    assert {table.changelog_topic.get_topic_name() for table in app.tables.values()} == set(
        changelogs
    )
    for topic in changelogs:
        records = [m for batch in read_to_end(settings, topic, strict=True) for m in batch]
        assert sorted(m.partition() for m in records) == list(
            range(settings.kafka.default_partitions)
        ), topic
        assert all(m.key() == f'"{UNUSED_KEY}"'.encode() for m in records), topic
        assert all(m.value() is None for m in records), topic  # tombstones, not JSON null


def test_a_table_recovering_from_the_tombstone_holds_no_such_key() -> None:
    app = faust.App(f"oc-{uuid.uuid4().hex[:8]}", store="memory://")
    table = app.Table("t", default=None, partitions=1)
    table.data["kept"] = 1

    class Message:
        partition = 0
        value = None

    class Event:
        key = UNUSED_KEY
        value = None
        message = Message()

    table.data.apply_changelog_batch([Event()], to_key=lambda k: k, to_value=lambda v: v)
    assert dict(table.data) == {"kept": 1}
