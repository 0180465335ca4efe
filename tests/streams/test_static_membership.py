"""Static group membership (`worker.group_instance_id`): where the id goes, and where it must
not (Ray replicas share one settings object). Its effect — a restarted worker takes its
partitions back at once — is tested end to end in tests/e2e/test_kill9_burst.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.inference_worker import static_membership
from sluicegate.serving.ray_serve import RayServeSettings, replica_settings
from sluicegate.settings import Settings, WorkerSettings
from sluicegate.streams.app import create_app

pytestmark = pytest.mark.unit


def test_the_id_reaches_faust_and_the_inference_consumer() -> None:
    settings = Settings(worker=WorkerSettings(group_instance_id="host-1"))
    app = create_app(settings, serde=AvroSerde(registry=InMemorySchemaRegistry()))
    assert app.conf.consumer_group_instance_id == "host-1"
    assert static_membership(settings.worker.group_instance_id) == {"group.instance.id": "host-1"}


def test_without_an_id_membership_stays_dynamic() -> None:
    app = create_app(Settings(), serde=AvroSerde(registry=InMemorySchemaRegistry()))
    assert app.conf.consumer_group_instance_id is None
    assert static_membership(None) == {}


def test_ray_replicas_never_inherit_the_id() -> None:
    settings = Settings(worker=WorkerSettings(group_instance_id="host-1"))
    replica = replica_settings(settings, "default", RayServeSettings())
    assert replica.worker.group_instance_id is None


@pytest.mark.parametrize("bad", ["", "has space", "slash/no"])
def test_an_id_kafka_would_refuse_is_refused_at_start(bad: str) -> None:
    with pytest.raises(ValidationError):
        WorkerSettings(group_instance_id=bad)
