"""Every schema-registry adapter passes the same contract."""

from __future__ import annotations

import json
import uuid

import pytest

from sluicegate.connectors.ports import SchemaRegistry
from sluicegate.connectors.schema_registry import (
    ConfluentSchemaRegistry,
    EmbeddedSchemaRegistry,
    InMemorySchemaRegistry,
)
from sluicegate.errors import UnknownSchemaError
from sluicegate.schemas import event_names, schema_text
from sluicegate.settings import RegistrySettings, Settings
from sluicegate.streams.topics import ensure_topics


class RegistryContract:
    """Mix into a test class that provides a `registry` fixture."""

    def test_register_is_idempotent_and_lookup_returns_the_schema(
        self, registry: SchemaRegistry
    ) -> None:
        text = schema_text("RequestReceived")
        first = registry.register("io.sluicegate.events.RequestReceived", text)
        again = registry.register(
            "io.sluicegate.events.RequestReceived", json.dumps(json.loads(text), indent=4)
        )
        assert first == again
        assert json.loads(registry.lookup(first)) == json.loads(text)

    def test_distinct_schemas_get_distinct_ids(self, registry: SchemaRegistry) -> None:
        ids = {registry.register(n, schema_text(n)) for n in event_names()}
        assert len(ids) == len(event_names())

    def test_unknown_id_raises(self, registry: SchemaRegistry) -> None:
        with pytest.raises(UnknownSchemaError):
            registry.lookup(2**31 - 7)


@pytest.mark.unit
class TestInMemory(RegistryContract):
    @pytest.fixture
    def registry(self) -> SchemaRegistry:
        return InMemorySchemaRegistry()


@pytest.fixture(scope="module")
def confluent_server():
    from tests.connectors.fake_confluent_registry import FakeConfluentRegistry

    fake = FakeConfluentRegistry().start()
    yield fake
    fake.stop()


@pytest.mark.unit
class TestConfluentOverHTTP(RegistryContract):
    @pytest.fixture
    def registry(self, confluent_server) -> SchemaRegistry:
        server = confluent_server
        return ConfluentSchemaRegistry(settings=RegistrySettings(kind="confluent", url=server.url))


@pytest.mark.integration
class TestEmbedded(RegistryContract):
    @pytest.fixture
    def registry(self, settings: Settings, topics: list[str]) -> SchemaRegistry:
        return EmbeddedSchemaRegistry(
            bootstrap_servers=settings.kafka.bootstrap_servers, topic=settings.topic("_schemas")
        )

    def test_ids_survive_a_restart(self, settings: Settings, topics: list[str]) -> None:
        topic = f"{settings.topic('_schemas')}-{uuid.uuid4().hex[:6]}"
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
        admin.create_topics([NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})])[
            topic
        ].result(10)
        before = EmbeddedSchemaRegistry(
            bootstrap_servers=settings.kafka.bootstrap_servers, topic=topic
        )
        ids = {n: before.register(n, schema_text(n)) for n in event_names()}
        before.close()
        after = EmbeddedSchemaRegistry(
            bootstrap_servers=settings.kafka.bootstrap_servers, topic=topic
        )
        for name, schema_id in ids.items():  # resolvable with no register call in this process
            assert json.loads(after.lookup(schema_id)) == json.loads(schema_text(name))
        assert {n: after.register(n, schema_text(n)) for n in event_names()} == ids


@pytest.mark.integration
def test_topic_catalogue_is_created_once(settings: Settings, topics: list[str]) -> None:
    assert ensure_topics(settings) == []
