"""The Faust app: the stateful stages' agents, wired to their processors and tables.

- `admission` on sg.requests (by tenant): route, rate limits, budgets → InferenceTask;
- `spend` on sg.cost (by tenant, co-partitioned with sg.requests): budgets and token settling
  in the same `limits` table → BudgetAlert;
- `cache_fill` on sg.cache (by tenant): answers stored in the `cache` table admission reads;
- `health` on sg.health.outcomes (by deployment; the inference workers' outcome summaries):
  breakers and latency EWMAs in the `health` table → DeploymentHealth on the compacted
  sg.health, which every router reads whole.

Tables are changelog-backed (memory store, changelog topics created with the catalogue), so a
restarted worker resumes with the same counters, budgets and breaker states.

Inference is not here: serving replicas are stateless and consume their pool topics with
librdkafka directly (serving/inference_worker.py).

Agents are thin: read raw bytes, decode through the serde (a record that does not decode goes to
the dead-letter topic with the reason, instead of being skipped inside a codec), hand the event
to the processor, publish what it returns. Values stay raw bytes on the Faust side so the Avro
wire format (and the registry's ids) is the only codec.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from faust.types import EventT

from sluicegate.connectors.embeddings import Embedder, single
from sluicegate.processors.admission import Admission, AwaitingEmbedding
from sluicegate.processors.cache import ResponseCache
from sluicegate.processors.cache_fill import CacheFiller
from sluicegate.processors.envelope import Emit
from sluicegate.processors.health_stage import HealthStage
from sluicegate.processors.rejection import internal_error
from sluicegate.processors.spend import Spend
from sluicegate.schemas.models import (
    CacheFill,
    CostEntry,
    DeploymentOutcomes,
    Event,
    ProbeStarted,
    RequestReceived,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.event_metrics import EventMetrics
from sluicegate.settings import Settings
from sluicegate.streams.catalogue_view import CatalogueView
from sluicegate.streams.dlq import dead_letter
from sluicegate.streams.health_view import HealthView

log = logging.getLogger(__name__)


class Publisher:
    """Encodes and sends Emits on the app's producer; topic objects are made once per name."""

    def __init__(
        self,
        *,
        app: faust.App,
        settings: Settings,
        serde: AvroSerde,
        metrics: EventMetrics | None = None,
    ) -> None:
        self._app = app
        self._settings = settings
        self._serde = serde
        self._metrics = metrics
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
        if self._metrics is not None:
            self._metrics.observe(emit)

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
    model: type[Event] | tuple[type[Event], ...],
    stage: str,
    handle: Callable[[Any], Awaitable[None]],
) -> None:
    """The loop every agent runs: decode, handle, and dead-letter whatever fails."""
    models = model if isinstance(model, tuple) else (model,)
    async for event in stream.events():
        decoded: Event | None = None
        try:
            decoded = serde.decode(event.value)
            if not isinstance(decoded, models):
                raise TypeError(
                    f"{type(decoded).__name__} on a topic of {[m.__name__ for m in models]}"
                )
            await handle(decoded)
        except Exception as error:  # one bad record must never stop the worker
            await publisher.dead_letter(event, error, stage)
            if decoded is not None:
                await publisher.emit(internal_error(decoded, stage=stage, error=error))


def create_app(
    settings: Settings,
    *,
    serde: AvroSerde,
    health_view: HealthView | None = None,
    embedder: Embedder | None = None,
    catalogue_view: CatalogueView | None = None,
    metrics: EventMetrics | None = None,
) -> faust.App:
    """The app; `health_view` (started by the caller) gives routing the breakers' state and
    `embedder` the cache its semantic tier (None: exact tier only)."""
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
        topic_partitions=settings.kafka.default_partitions,
        producer_acks=-1,
        producer_linger=0.0,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_wait_empty=False,
    )
    publisher = Publisher(app=app, settings=settings, serde=serde, metrics=metrics)
    limits = _table(app, settings, "limits")
    health_table = _table(app, settings, "health")
    cache = None
    if settings.cache.enabled:
        cache = ResponseCache(
            settings.cache,
            _table(app, settings, "cache", on_recover=lambda: cache and cache.rebuild_index()),
            single(embedder) if embedder is not None else None,
            embedding_model=embedder.model_name if embedder is not None else "",
        )
    admission = Admission(
        settings=settings,
        limits_state=limits,
        health=(lambda: health_view.snapshots) if health_view is not None else (lambda: {}),
        cache=cache,
        defer_embedding=embedder is not None,
    )
    # Embeddings (~7 ms of CPU each) run here, off the event loop the other agents share.
    embedding_pool = ThreadPoolExecutor(1, thread_name_prefix="embed")

    async def embed(text: str) -> Any:
        assert embedder is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(embedding_pool, single(embedder), text)

    async def admit(request: RequestReceived) -> None:
        outcome = admission.run(request)
        if isinstance(outcome, AwaitingEmbedding):
            outcome = outcome.resume(await embed(outcome.text))
        for emit in outcome:
            await publisher.emit(emit)

    if catalogue_view is not None:
        catalogue_view.subscribe(lambda c: admission.reconfigure(settings.with_catalogue(c)))
    spend = Spend(limiter=admission.limiter)
    health = HealthStage(settings=settings.resilience, store=health_table)

    def publishing(run: Callable[[Any], list[Emit]]) -> Callable[[Any], Awaitable[None]]:
        async def handle(event: Any) -> None:
            for emit in run(event):
                await publisher.emit(emit)

        return handle

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

    if settings.limits.counts_spend:  # else nothing reads it: skip a topic per request

        @app.agent(publisher.topic(settings.topic("cost")), name="spend")
        async def spend_agent(stream: faust.StreamT) -> None:
            await consume(
                stream,
                publisher=publisher,
                serde=serde,
                model=CostEntry,
                stage="spend",
                handle=publishing(spend.run),
            )

    if cache is not None:
        filler = CacheFiller(cache=cache)

        async def fill(event: CacheFill) -> None:
            text = filler.text_to_embed(event) if embedder is not None else None
            filler.run(event, vector=await embed(text) if text is not None else None)

        @app.agent(publisher.topic(settings.topic("cache")), name="cache_fill")
        async def cache_fill_agent(stream: faust.StreamT) -> None:
            await consume(
                stream,
                publisher=publisher,
                serde=serde,
                model=CacheFill,
                stage="cache_fill",
                handle=fill,
            )

    @app.agent(publisher.topic(settings.topic("health.outcomes")), name="health")
    async def health_agent(stream: faust.StreamT) -> None:
        await consume(
            stream,
            publisher=publisher,
            serde=serde,
            model=(DeploymentOutcomes, ProbeStarted),
            stage="health",
            handle=publishing(health.observe),
        )

    return app


def _table(
    app: faust.App, settings: Settings, name: str, on_recover: Callable[[], Any] | None = None
) -> Any:
    """A changelog-backed table (JSON keys and values, Faust's default for untyped tables),
    partitioned like the topics that feed it. `on_recover` runs after its changelog is read."""

    async def recovered() -> None:
        if on_recover is not None:
            on_recover()

    return app.Table(
        name,
        default=None,
        partitions=settings.kafka.default_partitions,
        on_recover=recovered if on_recover is not None else None,
    )
