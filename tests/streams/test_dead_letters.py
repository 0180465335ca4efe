"""A record an agent cannot process lands on `<topic>.dlq` with the reason; the agent goes on."""

from __future__ import annotations

import uuid

import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import DeadLetter, ResponseReady
from sluicegate.settings import Settings
from tests.builders import request
from tests.topics_io import produce, wait_for, wait_for_event

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("topic", ["requests", "inference.default"])
def test_corrupt_record_is_dead_lettered_and_the_next_one_is_processed(
    settings: Settings, worker, topic: str
) -> None:
    serde = build_serde(settings)
    marker = f"corrupt-{uuid.uuid4()}".encode()
    garbage = b"\x00\x00\x00\x00\x09" + b"\xff" * 7 if topic == "requests" else b"\x00" + marker
    produce(settings, settings.topic(topic), marker, garbage)

    _key, value = wait_for(
        settings, f"{settings.topic(topic)}.dlq", lambda key, _value: key == marker
    )
    letter = serde.decode(value)
    assert isinstance(letter, DeadLetter)
    assert letter.original_value == garbage and letter.original_key == marker
    assert letter.original_topic == settings.topic(topic)
    assert letter.error_class in {"UnknownSchemaError", "SerializationError"}
    assert letter.error_message

    good = request("gpt-fake")
    produce(settings, settings.topic("requests"), good.tenant_id.encode(), serde.encode(good))
    answer = wait_for_event(
        settings, serde, settings.topic("responses"), ResponseReady, good.request_id
    )
    assert "Say hi" in answer.message.content
