"""The event contract: schemas, generated models and the wire format agree."""

from __future__ import annotations

import json
import struct

import fastavro
import pytest
from fastavro.validation import validate

from sluicegate.connectors.schema_registry import InMemorySchemaRegistry, stable_id
from sluicegate.errors import SerializationError, UnknownSchemaError
from sluicegate.schemas import AVRO_DIR, EVENT_MODELS, codegen, event_names, parsed_schema
from sluicegate.schemas.models import AvroRecord, RequestReceived
from sluicegate.schemas.serde import AvroSerde
from tests.samples import sample

pytestmark = pytest.mark.unit

DESIGN_EVENTS = {
    "RequestReceived",
    "RequestAdmitted",
    "RequestRejected",
    "RequestEnriched",
    "InferenceTask",
    "InferenceResult",
    "InferenceFailed",
    "ResponseReady",
    "TokenChunk",
    "Span",
    "CostEntry",
    "DocumentSubmitted",
    "ChunkCreated",
    "ChunkEmbedded",
    "PromptVersionPublished",
    "EvalCaseResult",
    "EvalRunCompleted",
    "DriftDetected",
    "AuditRecord",
    "DeadLetter",
    # added by the gateway (issue 3): breaker/latency state and budget alerts
    "DeploymentHealth",
    "BudgetAlert",
    "CacheFill",
    "CatalogueUpdated",
    "ProbeStarted",
    "DeploymentOutcomes",
    # added by identity (issue 4): the key registry on the compacted sg.identity
    "ApiKeyRecord",
    "TenantRecord",
    "PolicyRecord",
    # added by RAG (issue 5): a document removed from a knowledge base
    "DocumentDeleted",
    # Idempotency-Keys across bridges: claims and settlements on the compacted sg.idempotency
    "IdempotencyClaim",
}


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(registry=InMemorySchemaRegistry())


def test_one_schema_per_design_event() -> None:
    assert {p.stem for p in AVRO_DIR.glob("*.avsc")} == DESIGN_EVENTS
    assert set(EVENT_MODELS) == DESIGN_EVENTS


def test_models_are_generated_from_the_current_schemas() -> None:
    assert codegen.MODELS_PATH.read_text() == codegen.render(), (
        "schemas/models.py is stale: run `python -m sluicegate.schemas.codegen`"
    )


def _field_names(model: type[AvroRecord], schema: dict) -> None:
    assert list(model.model_fields) == [f["name"] for f in schema["fields"]], model.__name__
    for field in schema["fields"]:
        inner = field["type"]
        inner = next((m for m in inner if m != "null"), inner) if isinstance(inner, list) else inner
        if isinstance(inner, dict) and inner.get("type") == "array":
            inner = inner["items"]
        if isinstance(inner, dict) and inner.get("type") == "record":
            annotation = model.model_fields[field["name"]].annotation
            nested = next(
                a
                for a in getattr(annotation, "__args__", (annotation,))
                if isinstance(a, type) and issubclass(a, AvroRecord)
            )
            _field_names(nested, inner)


@pytest.mark.parametrize("name", sorted(DESIGN_EVENTS))
def test_model_fields_match_schema(name: str) -> None:
    schema = json.loads((AVRO_DIR / f"{name}.avsc").read_text())
    _field_names(EVENT_MODELS[name], schema)
    assert EVENT_MODELS[name].AVRO_NAME == f"{schema['namespace']}.{schema['name']}"


@pytest.mark.parametrize("name", sorted(DESIGN_EVENTS))
def test_every_schema_carries_the_envelope(name: str) -> None:
    fields = [f["name"] for f in json.loads((AVRO_DIR / f"{name}.avsc").read_text())["fields"]]
    assert fields[:9] == [
        "event_id",
        "occurred_at",
        "tenant_id",
        "request_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "run_id",
        "producer",
    ]


@pytest.mark.parametrize("name", sorted(DESIGN_EVENTS))
def test_round_trip_through_the_wire_format(name: str, serde: AvroSerde) -> None:
    schema = json.loads((AVRO_DIR / f"{name}.avsc").read_text())
    event = EVENT_MODELS[name].model_validate(sample(schema))
    assert validate(event.model_dump(), parsed_schema(name), strict=True)
    data = serde.encode(event)
    magic, schema_id = struct.unpack_from(">bI", data)
    assert magic == 0
    assert schema_id == serde.schema_id(name) == stable_id(schema_text_of(name))
    assert serde.decode(data) == event


def schema_text_of(name: str) -> str:
    return (AVRO_DIR / f"{name}.avsc").read_text()


def test_schema_ids_do_not_depend_on_the_process() -> None:
    first = AvroSerde(registry=InMemorySchemaRegistry())
    second = AvroSerde(registry=InMemorySchemaRegistry())
    first.register_all()
    assert {n: first.schema_id(n) for n in event_names()} == {
        n: second.schema_id(n) for n in reversed(event_names())
    }
    assert len({first.schema_id(n) for n in event_names()}) == len(event_names())


def test_corrupt_bytes_raise_a_typed_error(serde: AvroSerde) -> None:
    event = RequestReceived.model_validate(sample(json.loads(schema_text_of("RequestReceived"))))
    data = serde.encode(event)
    with pytest.raises(SerializationError, match="magic"):
        serde.decode(b"\x07" + data[1:])
    with pytest.raises(SerializationError, match="shorter"):
        serde.decode(b"\x00\x01")
    with pytest.raises(SerializationError):
        serde.decode(data[:12])
    with pytest.raises(UnknownSchemaError):
        serde.decode(b"\x00\x00\x00\x00\x01" + data[5:])


def test_decode_as_checks_the_event_type(serde: AvroSerde) -> None:
    event = RequestReceived.model_validate(sample(json.loads(schema_text_of("RequestReceived"))))
    with pytest.raises(SerializationError, match="expected ResponseReady"):
        from sluicegate.schemas.models import ResponseReady

        serde.decode_as(serde.encode(event), ResponseReady)


def test_fastavro_reads_what_we_write_as_a_plain_confluent_consumer_would(serde: AvroSerde) -> None:
    import io

    event = RequestReceived.model_validate(sample(json.loads(schema_text_of("RequestReceived"))))
    data = serde.encode(event)
    record = fastavro.schemaless_reader(
        io.BytesIO(data[5:]), parsed_schema("RequestReceived"), None
    )
    assert record["messages"][0]["role"] == event.messages[0].role
