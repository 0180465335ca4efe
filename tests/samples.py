"""Sample records for any Avro schema: every field filled, every optional branch taken.

Used by the round-trip tests and by `make_fixtures.py`, so every schema is exercised without a
hand-written example per event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

MOMENT = datetime(2026, 11, 24, 12, 0, 0, 123000, tzinfo=UTC)


def sample(avro: Any, named: dict[str, Any] | None = None, field: str = "x") -> Any:
    named = {} if named is None else named
    if isinstance(avro, str):
        primitives = {
            "string": f"{field}-value",
            "long": 42,
            "int": 7,
            "double": 1.5,
            "float": 0.25,
            "boolean": True,
            "bytes": b"\x00\x01",
            "null": None,
        }
        if avro in primitives:
            return primitives[avro]
        return sample(named[avro.split(".")[-1]], named, field)
    if isinstance(avro, list):
        return sample(next(m for m in avro if m != "null"), named, field)
    kind = avro["type"]
    if avro.get("logicalType") == "timestamp-millis":
        return MOMENT
    if kind == "record":
        named[avro["name"]] = avro
        return {f["name"]: sample(f["type"], named, f["name"]) for f in avro["fields"]}
    if kind == "array":
        return [sample(avro["items"], named, field)]
    if kind == "map":
        return {"k": sample(avro["values"], named, field)}
    return sample(kind, named, field)
