"""Docs stay in step with the code they describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from sluicegate.settings import Deployment, ModelAlias, Settings

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    groups = {name: field.annotation for name, field in Settings.model_fields.items()}
    for group, annotation in groups.items():
        assert f"## {group}" in text, group
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
        if group == "deployments":
            model = Deployment
        if group == "models":
            model = ModelAlias
        if model is None:  # a plain value: its heading is its documentation
            continue
        for field in _fields(model):
            assert f"`{field}`" in text, f"{group}.{field} missing from docs/configuration.md"


def test_processors_do_not_import_kafka_or_faust() -> None:
    root = Path(__file__).resolve().parent.parent / "processors"
    for path in root.glob("*.py"):
        source = path.read_text()
        for banned in ("import faust", "confluent_kafka", "aiokafka", "from faust"):
            assert banned not in source, f"{path.name} imports {banned}"
