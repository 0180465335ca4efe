"""The Faust app: the stateful stages' agents (today: admission), wired to their processors.

Inference is not here: serving replicas are stateless and consume their pool topics with
librdkafka directly (serving/inference_worker.py).

Agents are thin: read raw bytes, decode through the serde (a record that does not decode goes to
the dead-letter topic with the reason, instead of being skipped inside a codec), hand the event
to the processor, publish what it returns. Values stay raw bytes on the Faust side so the Avro
wire format (and the registry's ids) is the only codec.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import EventT

from sluicegate.processors.admission import Admission
from sluicegate.processors.envelope import Emit
from sluicegate.processors.rejection import internal_error
from sluicegate.schemas.models import Event, RequestReceived
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from sluicegate.streams.dlq import dead_letter

log = logging.getLogger(__name__)


class Publisher:
    """Encodes and sends Emits on the app's producer; topic objects are made once per name."""

    def __init__(self, *, app: faust.App, settings: Settings, serde: AvroSerde) -> None:
        self._app = app
        self._settings = settings
        self._serde = serde
        self._topics: dict[str, Any] = {}

    def topic(self, full_name: str) -> Any:
        topic = self._topics.get(full_name)
        if topic is None:
            topic = self._topics[full_name] = self._app.topic(
                full_name, key_serializer="raw", value_serializer="raw", internal=False
            )
        return topic

    async def emit(self, emit: Emit) -> None:
        """Hand the record to the app's producer without waiting for the broker's ack.

        Straight to the transport producer: Faust's channel layer (FutureMessage, callbacks)
        costs more CPU than the send itself here. At-least-once still holds, because Faust
        flushes this producer before it commits the offsets of the events that caused it.
        """
        await self._app.producer.send(
            self._settings.topic(emit.topic),
            emit.key.encode(),
            self._serde.encode(emit.event),
            partition=None,
            timestamp=None,
            headers=None,
        )

    async def dead_letter(self, event: EventT, error: BaseException, stage: str) -> None:
        message = event.message
        record = dead_letter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            error=error,
            stage=stage,
        )
        log.warning(
            "dead-lettered %s[%s]@%s: %s", message.topic, message.partition, message.offset, error
        )
        await self.topic(f"{message.topic}.dlq").send(
            key=message.key, value=self._serde.encode(record)
        )


async def consume(
    stream: faust.StreamT,
    *,
    publisher: Publisher,
    serde: AvroSerde,
    model: type[Event],
    stage: str,
    handle: Callable[[Any], Awaitable[None]],
) -> None:
    """The loop every agent runs: decode, handle, and dead-letter whatever fails."""
    async for event in stream.events():
        decoded: Event | None = None
        try:
            decoded = serde.decode_as(event.value, model)
            await handle(decoded)
        except Exception as error:  # one bad record must never stop the worker
            await publisher.dead_letter(event, error, stage)
            if decoded is not None:
                await publisher.emit(internal_error(decoded, stage=stage, error=error))


def create_app(settings: Settings, *, serde: AvroSerde) -> faust.App:
    app = faust.App(
        settings.worker.app_id,
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(settings.worker.data_dir),
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        producer_acks=-1,
        producer_linger=0.0,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_wait_empty=False,
    )
    publisher = Publisher(app=app, settings=settings, serde=serde)
    admission = Admission(settings=settings)

    async def admit(request: RequestReceived) -> None:
        for emit in admission.run(request):
            await publisher.emit(emit)

    @app.agent(publisher.topic(settings.topic("requests")), name="admission")
    async def admission_agent(stream: faust.StreamT) -> None:
        await consume(
            stream,
            publisher=publisher,
            serde=serde,
            model=RequestReceived,
            stage="admission",
            handle=admit,
        )

    return app
