"""The event contract: one Avro schema per event (schemas/avro/*.avsc) and models derived from it.

`models.py` is generated from the `.avsc` files by `codegen.py`; `serde.py` turns models into the
Confluent wire format (magic byte, 4-byte schema id, Avro body) and back.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

from sluicegate.schemas.models import EVENT_MODELS, AvroRecord, Event

AVRO_DIR = Path(__file__).with_name("avro")


@cache
def schema_text(name: str) -> str:
    """The `.avsc` text of an event, e.g. `schema_text("RequestReceived")`."""
    return (AVRO_DIR / f"{name}.avsc").read_text()


@cache
def parsed_schema(name: str) -> dict[str, Any]:
    return fastavro.parse_schema(json.loads(schema_text(name)))


def event_names() -> list[str]:
    return sorted(EVENT_MODELS)


__all__ = [
    "AVRO_DIR",
    "EVENT_MODELS",
    "AvroRecord",
    "Event",
    "event_names",
    "parsed_schema",
    "schema_text",
]
