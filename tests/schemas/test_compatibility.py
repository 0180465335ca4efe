"""Every schema still reads the records written with each of its earlier published versions.

Fixtures are captured by tests/fixtures/schemas/make_fixtures.py whenever a schema changes; a
published schema is never edited in place, only evolved so that these reads keep working.
"""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import pytest

from sluicegate.connectors.schema_registry import normalized
from sluicegate.schemas import AVRO_DIR, EVENT_MODELS, parsed_schema

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schemas"
CASES = sorted((p.parent.name, p) for p in FIXTURES.glob("*/v*.avro"))


def test_every_schema_has_fixtures_and_the_current_version_is_captured() -> None:
    for name in EVENT_MODELS:
        captured = [normalized(p.read_text()) for p in (FIXTURES / name).glob("v*.avsc")]
        assert normalized((AVRO_DIR / f"{name}.avsc").read_text()) in captured, (
            f"{name}.avsc changed: run tests/fixtures/schemas/make_fixtures.py"
        )


@pytest.mark.parametrize(("name", "fixture"), CASES, ids=[f"{n}/{p.stem}" for n, p in CASES])
def test_current_schema_reads_old_records(name: str, fixture: Path) -> None:
    writer = json.loads(fixture.with_suffix(".avsc").read_text())
    with fixture.open("rb") as handle:
        records = list(fastavro.reader(handle, reader_schema=parsed_schema(name)))
    assert records, fixture
    for record in records:
        EVENT_MODELS[name].model_validate(record)
    assert writer["name"] == name
