"""The Faust app: the stateful stages' agents, wired to their processors and tables.

- `admission` on sg.requests (by tenant): route, rate limits, budgets → InferenceTask;
- `ledger` on sg.cost (by tenant, co-partitioned with sg.requests): budgets and token settling
  in the same `limits` table → BudgetAlert, and drift detection of tokens, latency and cost →
  DriftDetected (each only when configured);
- `drift_evals` on sg.evals (by run): eval scores into drift detection;
- `cache_fill` on sg.cache (by tenant): answers stored in the `cache` table admission reads;
- `audit` on sg.audit.pending (by tenant): audit facts from every stage, hash-chained per
  tenant into sg.audit, with the chain heads in the `audit` table;
- `health` on sg.health.outcomes (by deployment; the inference workers' outcome summaries):
  breakers and latency EWMAs in the `health` table → DeploymentHealth on the compacted
  sg.health, which every router reads whole.

Drift detection (processors/drift_stage.py) also runs a timer that closes the windows whose
traffic stopped and saves the monitor's state to the `drift` table, and a task that embeds a
sample of admitted prompts off the hot path (streams/drift_io.py).

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
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from faust.types import EventT

from sluicegate.connectors.embeddings import Embedder, single
from sluicegate.connectors.knowledge import KnowledgeServices
from sluicegate.processors.admission import Admission, AwaitingEmbedding
from sluicegate.processors.audit import AuditChain
from sluicegate.processors.cache import ResponseCache
from sluicegate.processors.cache_fill import CacheFiller
from sluicegate.processors.drift_samples import PromptToEmbed
from sluicegate.processors.drift_stage import DriftStage
from sluicegate.processors.enrichment import AwaitingRetrieval, Enricher
from sluicegate.processors.envelope import Emit
from sluicegate.processors.health_stage import HealthStage
from sluicegate.processors.identity import IdentityRegistry
from sluicegate.processors.limits import RuleOverrides
from sluicegate.processors.prompt_registry import PromptRegistry
from sluicegate.processors.prompting import PromptStage, registry_renderer
from sluicegate.processors.rejection import internal_error
from sluicegate.processors.spend import Spend
from sluicegate.schemas.models import (
    AuditRecord,
    CacheFill,
    CostEntry,
    DeploymentOutcomes,
    EvalCaseResult,
    EvalRunCompleted,
    Event,
    ProbeStarted,
    RequestReceived,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.event_metrics import EventMetrics
from sluicegate.settings import Settings
from sluicegate.streams.catalogue_view import CatalogueView
from sluicegate.streams.commit_watchdog import HoleDetector, watch_commits
from sluicegate.streams.dlq import dead_letter
from sluicegate.streams.drift_io import DriftTable, PromptQueue
from sluicegate.streams.health_view import HealthView

log = logging.getLogger(__name__)
# How often the commit watchdog looks, and how long a hole must last before it reads again.
COMMIT_HOLE_CHECK_S = 2.0
COMMIT_HOLE_STALL_S = 10.0


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


BACKGROUND_NICE = 10


def lower_thread_priority() -> None:
    """Give the calling thread a nice value of `BACKGROUND_NICE` (Linux: a thread's id is a
    process id to setpriority), so the scheduler runs the hot path's threads first when the
    cores are busy. Elsewhere, or without permission, the thread keeps its priority."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError as error:
        log.info("background embeddings keep their priority: %s", error)


def create_app(
    settings: Settings,
    *,
    serde: AvroSerde,
    health_view: HealthView | None = None,
    embedder: Embedder | None = None,
    catalogue_view: CatalogueView | None = None,
    metrics: EventMetrics | None = None,
    identity: RuleOverrides | None = None,
    prompt_registry: PromptRegistry | None = None,
) -> faust.App:
    """The app; `health_view` (started by the caller) gives routing the breakers' state,
    `embedder` the cache its semantic tier (None: exact tier only), and `identity` (the key
    registry) the limits bound to keys and tenants; `prompt_registry` (followed by the caller's
    PromptView) renders requests that name a registered prompt."""
    app = faust.App(
        settings.worker.app_id,
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        broker_credentials=settings.kafka.faust_credentials(),
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
        consumer_group_instance_id=settings.worker.group_instance_id,
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
    # RAG enrichment: store and models load on first use (or now, for aliases that name a KB).
    knowledge = KnowledgeServices(
        settings.rag,
        embedders=[embedder] if embedder is not None else [],
        executor=ThreadPoolExecutor(2, thread_name_prefix="bm25"),
    )
    retrieval_pool = ThreadPoolExecutor(2, thread_name_prefix="retrieve")
    for kb in {m.knowledge_base for m in settings.models if m.knowledge_base}:
        retrieval_pool.submit(knowledge.retriever, kb)
    admission = Admission(
        settings=settings,
        limits_state=limits,
        health=(lambda: health_view.snapshots) if health_view is not None else (lambda: {}),
        cache=cache,
        defer_embedding=embedder is not None,
        limit_overrides=identity,
        enricher=Enricher(
            rag=settings.rag,
            auth=settings.auth,
            retrievers=knowledge,
            directory=identity if isinstance(identity, IdentityRegistry) else None,
        ),
        prompts=None
        if prompt_registry is None
        else PromptStage(
            renderer=registry_renderer(
                prompt_registry,
                embed=embedder.embed
                if embedder is not None and settings.prompts.few_shot_embeddings
                else None,
            ),
            settings=settings.prompts,
        ),
    )
    # Embeddings (~7-13 ms of CPU each) run off the event loop the other agents share: a
    # request's (semantic cache lookup) on one thread, background ones (drift samples, cache
    # fills) on another at a lower scheduling priority, so their bursts give way to the hot path.
    embedding_pool = ThreadPoolExecutor(1, thread_name_prefix="embed")
    background_pool = ThreadPoolExecutor(
        1, thread_name_prefix="embed-background", initializer=lower_thread_priority
    )

    def embedding_on(pool: ThreadPoolExecutor) -> Callable[[str], Awaitable[Any]]:
        async def embed(text: str) -> Any:
            assert embedder is not None
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, single(embedder), text)

        return embed

    embed, embed_later = embedding_on(embedding_pool), embedding_on(background_pool)

    drift = _drift_stage(app, settings)
    embeds_prompts = drift is not None and drift.wants_embeddings and embedder is not None
    prompts = PromptQueue(max_per_s=settings.drift.max_embeddings_per_s) if embeds_prompts else None

    async def admit(request: RequestReceived) -> None:
        outcome = admission.run(request)
        if isinstance(outcome, AwaitingRetrieval):  # a knowledge base: search it off the loop
            loop = asyncio.get_running_loop()
            outcome = outcome.resume(await loop.run_in_executor(retrieval_pool, outcome.retrieve))
        if isinstance(outcome, AwaitingEmbedding):
            outcome = outcome.resume(await embed(outcome.text))
        for emit in outcome:
            await publisher.emit(emit)
        if prompts is not None and drift is not None:
            prompt = drift.prompt_of(request, outcome)
            if prompt is not None:
                prompts.offer(prompt)

    if catalogue_view is not None:
        catalogue_view.subscribe(lambda c: admission.reconfigure(settings.with_catalogue(c)))
    spend = Spend(limiter=admission.limiter)
    health = HealthStage(settings=settings.resilience, store=health_table)

    def publishing(*runs: Callable[[Any], list[Emit]]) -> Callable[[Any], Awaitable[None]]:
        """Each processor in turn on the event, publishing what it returns."""

        async def handle(event: Any) -> None:
            for run in runs:
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

    ledger: list[Callable[[Any], list[Emit]]] = []
    # Keys and tenants in the registry may carry limits of their own: then spend counts too.
    if settings.limits.counts_spend or identity is not None:
        ledger.append(spend.run)
    if drift is not None:
        ledger.append(drift.on_cost)
    if ledger:  # else nothing here reads sg.cost: skip a topic per request

        @app.agent(publisher.topic(settings.topic("cost")), name="ledger")
        async def ledger_agent(stream: faust.StreamT) -> None:
            await consume(
                stream,
                publisher=publisher,
                serde=serde,
                model=CostEntry,
                stage="ledger",
                handle=publishing(*ledger),
            )

    if drift is not None:

        @app.agent(publisher.topic(settings.topic("evals")), name="drift_evals")
        async def drift_evals_agent(stream: faust.StreamT) -> None:
            await consume(
                stream,
                publisher=publisher,
                serde=serde,
                model=(EvalCaseResult, EvalRunCompleted),
                stage="drift",
                handle=publishing(drift.on_eval),
            )

        @app.timer(interval=min(10.0, settings.drift.window_s / 10))
        async def drift_timer() -> None:
            for emit in drift.tick(int(time.time() * 1000)):
                await publisher.emit(emit)
            if prompts is not None:
                prompts.report_drops()

    if drift is not None and prompts is not None:

        async def observe_prompt(prompt: PromptToEmbed, vector: Any) -> None:
            for emit in drift.on_embedding(prompt, vector):
                await publisher.emit(emit)

        @app.task
        async def drift_embeddings() -> None:
            await prompts.run(embed_later, observe_prompt)

    if cache is not None:
        filler = CacheFiller(cache=cache)

        async def fill(event: CacheFill) -> None:
            text = filler.text_to_embed(event) if embedder is not None else None
            filler.run(event, vector=await embed_later(text) if text is not None else None)

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

    audit_chain = AuditChain(store=_table(app, settings, "audit"))

    @app.agent(publisher.topic(settings.topic("audit.pending")), name="audit")
    async def audit_agent(stream: faust.StreamT) -> None:
        await consume(
            stream,
            publisher=publisher,
            serde=serde,
            model=AuditRecord,
            stage="audit",
            handle=publishing(audit_chain.run),
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

    # Records a stream skipped without the seek that should follow (streams/commit_watchdog.py).
    holes = HoleDetector(stall_s=COMMIT_HOLE_STALL_S)

    def reread(topic: str, partition: int, offset: int, read: int) -> None:
        if metrics is not None:
            metrics.reread_offsets.child(topic).inc(read - offset + 1)

    @app.timer(interval=COMMIT_HOLE_CHECK_S)
    async def commit_watchdog() -> None:
        await watch_commits(app, holes, time.monotonic, reread)

    return app


def _drift_stage(app: faust.App, settings: Settings) -> DriftStage | None:
    """The drift stage, saving to and recovering from the `drift` table (None when off)."""
    if not settings.drift.enabled:
        return None
    cost = settings.topic("cost")

    def assigned() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == cost}

    stage: DriftStage | None = None
    table = _table(app, settings, "drift", on_recover=lambda: stage and store.recover_into(stage))
    store = DriftTable(table, partitions=settings.kafka.default_partitions, assigned=assigned)
    stage = DriftStage(settings=settings.drift, save=store.save)
    return stage


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
