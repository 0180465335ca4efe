"""Schema registry adapters: the embedded default (a compacted topic) and Confluent-compatible HTTP.

The embedded registry derives the id from the schema itself (31 bits of the SHA-256 of its
normalized JSON), so every process computes the same id with no coordination and ids stay stable
across restarts; the compacted topic is the durable id → schema map that lets a reader resolve a
schema it has never seen (an older version written by another process).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from sluicegate.errors import RegistryError, UnknownSchemaError
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import RegistrySettings, Settings

_LEADERSHIP_ERRORS = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


def normalized(schema: str) -> str:
    """Whitespace- and key-order-free JSON: equal schemas, equal text."""
    return json.dumps(json.loads(schema), sort_keys=True, separators=(",", ":"))


def stable_id(schema: str) -> int:
    digest = hashlib.sha256(normalized(schema).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class InMemorySchemaRegistry:
    """Same ids as the embedded registry, kept in a dict: for unit tests and one-process tools."""

    def __init__(self) -> None:
        self._schemas: dict[int, str] = {}

    def register(self, subject: str, schema: str) -> int:
        text = normalized(schema)
        schema_id = stable_id(text)
        if self._schemas.setdefault(schema_id, text) != text:
            raise RegistryError(f"schema id collision on {schema_id} for {subject}")
        return schema_id

    def lookup(self, schema_id: int) -> str:
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise UnknownSchemaError(schema_id) from None

    def close(self) -> None:
        return None


class EmbeddedSchemaRegistry:
    """Schemas by id in a compacted one-partition topic: the default without a registry server."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        timeout_s: float = 10.0,
        client_config: Mapping[str, str] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_config = dict(client_config or {})
        self._topic = topic
        self._timeout_s = timeout_s
        self._schemas: dict[int, str] = {}
        self._lock = threading.Lock()
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                **self._client_config,
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self._load()

    def register(self, subject: str, schema: str) -> int:
        text = normalized(schema)
        schema_id = stable_id(text)
        with self._lock:
            known = self._schemas.get(schema_id)
            if known is not None:
                if known != text:
                    raise RegistryError(f"schema id collision on {schema_id} for {subject}")
                return schema_id
        record = json.dumps({"subject": subject, "id": schema_id, "schema": text})
        self._producer.produce(self._topic, key=str(schema_id).encode(), value=record.encode())
        if self._producer.flush(self._timeout_s) != 0:
            raise RegistryError(f"could not persist schema {subject} to {self._topic}")
        with self._lock:
            self._schemas[schema_id] = text
        return schema_id

    def lookup(self, schema_id: int) -> str:
        with self._lock:
            text = self._schemas.get(schema_id)
        if text is None:
            self._load()  # another process may have registered it since
            with self._lock:
                text = self._schemas.get(schema_id)
        if text is None:
            raise UnknownSchemaError(schema_id)
        return text

    def close(self) -> None:
        self._producer.flush(self._timeout_s)

    def _watermarks(self, consumer: Consumer) -> tuple[int, int]:
        """Retry retriable errors: a freshly created topic may not have a ready leader yet."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                return consumer.get_watermark_offsets(
                    TopicPartition(self._topic, 0), timeout=self._timeout_s
                )
            except KafkaException as exc:
                error = exc.args[0]
                transient = error.retriable() or error.code() in _LEADERSHIP_ERRORS
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _load(self) -> None:
        """Read the topic from the beginning to its end; later records win (compaction order)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                **self._client_config,
                "group.id": "sluicegate-registry-reader",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            low, high = self._watermarks(consumer)
            if high <= low:
                return
            consumer.assign([TopicPartition(self._topic, 0, low)])
            loaded: dict[int, str] = {}
            position = low
            while position < high:
                message = consumer.poll(self._timeout_s)
                if message is None:
                    raise RegistryError(f"timed out reading {self._topic} at offset {position}")
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        break
                    raise RegistryError(str(message.error()))
                entry = json.loads(message.value())
                loaded[int(entry["id"])] = entry["schema"]
                position = message.offset() + 1
            with self._lock:
                self._schemas.update(loaded)
        except KafkaException as exc:
            raise RegistryError(f"cannot read {self._topic}: {exc}") from exc
        finally:
            consumer.close()


class ConfluentSchemaRegistry:
    """Any Confluent-compatible registry over HTTP, through confluent-kafka's client."""

    def __init__(self, *, settings: RegistrySettings) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        config: dict[str, str] = {"url": settings.url}
        if settings.basic_auth is not None:
            config["basic.auth.user.info"] = settings.basic_auth.get_secret_value()
        self._client = SchemaRegistryClient(config)

    def register(self, subject: str, schema: str) -> int:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return int(self._client.register_schema(subject, Schema(schema, "AVRO")))
        except SchemaRegistryError as exc:
            raise RegistryError(f"registry refused {subject}: {exc}") from exc

    def lookup(self, schema_id: int) -> str:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return str(self._client.get_schema(schema_id).schema_str)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(schema_id) from exc
            raise RegistryError(f"registry lookup of {schema_id} failed: {exc}") from exc

    def close(self) -> None:
        return None


def build_schema_registry(
    settings: RegistrySettings,
    *,
    bootstrap_servers: str,
    topic: str,
    client_config: Mapping[str, str] | None = None,
) -> EmbeddedSchemaRegistry | ConfluentSchemaRegistry:
    """The adapter the configuration names."""
    if settings.kind == "confluent":
        return ConfluentSchemaRegistry(settings=settings)
    return EmbeddedSchemaRegistry(
        bootstrap_servers=bootstrap_servers, topic=topic, client_config=client_config
    )


def build_serde(settings: Settings) -> AvroSerde:
    """The serde over the configured registry, with every current schema registered."""
    registry = build_schema_registry(
        settings.registry,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=settings.topic("_schemas"),
        client_config=settings.kafka.client_config(),
    )
    serde = AvroSerde(registry=registry)
    serde.register_all()
    return serde
