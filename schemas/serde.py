"""Avro in the Confluent wire format: byte 0 is the magic 0, bytes 1-4 the schema id (big-endian).

Any Confluent-compatible consumer can read our topics, and we can read theirs, because the id
resolves through the registry port. Subjects follow the RecordNameStrategy (the record's full
name), since several event types share a topic (sg.responses carries ResponseReady and
RequestRejected).
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, TypeVar

import fastavro

from sluicegate.connectors.ports import SchemaRegistry
from sluicegate.errors import SerializationError
from sluicegate.schemas import EVENT_MODELS, parsed_schema, schema_text
from sluicegate.schemas.models import Event

MAGIC = 0
_HEADER = struct.Struct(">bI")
E = TypeVar("E", bound=Event)


class AvroSerde:
    """Encodes events to wire bytes and back, caching schema ids and parsed schemas."""

    def __init__(self, *, registry: SchemaRegistry) -> None:
        self._registry = registry
        self._ids: dict[str, int] = {}
        self._writers: dict[int, tuple[dict[str, Any], str]] = {}

    def schema_id(self, name: str) -> int:
        """The id of the current schema of event `name`, registering it on first use."""
        schema_id = self._ids.get(name)
        if schema_id is None:
            full_name = EVENT_MODELS[name].AVRO_NAME
            schema_id = self._registry.register(full_name, schema_text(name))
            self._ids[name] = schema_id
            self._writers[schema_id] = (parsed_schema(name), name)
        return schema_id

    def register_all(self) -> None:
        """Register every event schema up front, so no request pays for it."""
        for name in EVENT_MODELS:
            self.schema_id(name)

    def encode(self, event: Event) -> bytes:
        name = type(event).__name__
        schema_id = self.schema_id(name)
        buffer = io.BytesIO()
        buffer.write(_HEADER.pack(MAGIC, schema_id))
        try:
            fastavro.schemaless_writer(buffer, parsed_schema(name), event.model_dump())
        except (ValueError, TypeError) as exc:
            raise SerializationError(f"cannot encode {name}: {exc}") from exc
        return buffer.getvalue()

    def decode(self, data: bytes) -> Event:
        """Decode any event; the schema id names the writer schema and so the model."""
        if len(data) < _HEADER.size:
            raise SerializationError(f"record of {len(data)} bytes is shorter than the header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise SerializationError(f"magic byte {magic} is not the Confluent wire format's 0")
        writer, name = self._writer(schema_id)
        reader = parsed_schema(name)
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[_HEADER.size :]), writer, None if writer is reader else reader
            )
        except Exception as exc:  # fastavro raises many types on corrupt bytes
            raise SerializationError(f"corrupt {name} body: {exc!r}") from exc
        try:
            return EVENT_MODELS[name].model_validate(record)
        except ValueError as exc:
            raise SerializationError(f"{name} record does not fit its model: {exc}") from exc

    def decode_as(self, data: bytes, model: type[E]) -> E:
        event = self.decode(data)
        if not isinstance(event, model):
            raise SerializationError(f"expected {model.__name__}, got {type(event).__name__}")
        return event

    def _writer(self, schema_id: int) -> tuple[dict[str, Any], str]:
        cached = self._writers.get(schema_id)
        if cached is not None:
            return cached
        text = self._registry.lookup(schema_id)  # UnknownSchemaError propagates as is
        schema = json.loads(text)
        name = schema["name"].split(".")[-1]
        if name not in EVENT_MODELS:
            raise SerializationError(f"schema id {schema_id} is {schema['name']}, not an event")
        parsed = parsed_schema(name) if text == schema_text(name) else fastavro.parse_schema(schema)
        self._writers[schema_id] = (parsed, name)
        return parsed, name
