"""The agent loop: decode, handle, dead-letter failures and still answer the caller."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
from sluicegate.processors.envelope import Emit
from sluicegate.schemas.models import RequestReceived, RequestRejected
from sluicegate.schemas.serde import AvroSerde
from sluicegate.streams.app import consume
from tests.builders import request

pytestmark = pytest.mark.unit


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class Record:
    value: bytes
    message: Message


class Stream:
    def __init__(self, values: list[bytes]) -> None:
        self.records = [
            Record(v, Message("sg.requests", 0, i, b"k", v)) for i, v in enumerate(values)
        ]

    async def events(self):
        for record in self.records:
            yield record


class Publisher:
    def __init__(self) -> None:
        self.emitted: list[Emit] = []
        self.dead: list[tuple[int, str]] = []

    async def emit(self, emit: Emit) -> None:
        self.emitted.append(emit)

    async def dead_letter(self, event: Record, error: BaseException, stage: str) -> None:
        self.dead.append((event.message.offset, type(error).__name__))


async def test_failures_are_dead_lettered_and_the_stream_goes_on() -> None:
    serde = AvroSerde(registry=InMemorySchemaRegistry())
    good, doomed = request("m"), request("m")
    handled: list[str] = []

    async def handle(event: RequestReceived) -> None:
        if event.request_id == doomed.request_id:
            raise RuntimeError("processor bug")
        handled.append(event.request_id)

    publisher = Publisher()
    values = [b"\x00garbage", serde.encode(doomed), serde.encode(good)]
    await consume(
        Stream(values),
        publisher=publisher,
        serde=serde,
        model=RequestReceived,
        stage="admission",
        handle=handle,
    )

    assert handled == [good.request_id]
    assert publisher.dead == [(0, "UnknownSchemaError"), (1, "RuntimeError")]
    answer = publisher.emitted[0]
    assert answer.topic == "responses" and answer.key == doomed.request_id
    assert isinstance(answer.event, RequestRejected) and answer.event.http_status == 500
