"""The rag worker (`sluicegate rag`): documents → chunks → vectors → the vector store.

Three stages, each a librdkafka consumer group on one topic in a thread of its own, each
batching by size and time and committing a batch's offsets only after its outputs are
acknowledged by the broker (acks=all, idempotent producer) or written to the store:

    sg.documents  ──chunk──▶  sg.chunks  ──embed──▶  sg.embeddings  ──index──▶  vector store
    (DocumentSubmitted)       (ChunkCreated)         (ChunkEmbedded)            (upsert, delete)

- **chunk** (`<app_id>-rag-chunk`): validates and chunks each document with its knowledge
  base's chunker (processors/ingestion.py: ChunkStage).
- **embed** (`<app_id>-rag-embed`): up to `rag.embed_batch_size` chunks or `rag.embed_batch_s`
  seconds per batch, one embedding call per model (the numpy MiniLM does ~10 long chunks/s on
  two cores: it is the bottleneck, so it gets big batches and a thread of its own).
- **index** (`<app_id>-rag-index`): up to `rag.index_batch_size` records or
  `rag.index_batch_s` per upsert (LanceDB writes a version per upsert), deletes a re-submitted
  document's old chunks first (processors/ingestion.py: index_plan).

A `DocumentDeleted` on sg.documents is forwarded by the chunk and embed stages in its place
(sg.chunks, sg.embeddings) and applied by the index stage (`store.delete_document`), so it
always lands after the chunks of the document's earlier versions.

At-least-once: a crash re-delivers the uncommitted batch, and every output is keyed so a repeat
overwrites itself (chunk ids are stable; the store upserts by tenant and chunk id). A record a
stage cannot process — undecodable, an invalid ACL, no text, a vector the collection cannot
hold — goes to `<topic>.dlq` as a DeadLetter with the reason and the loop goes on. A failure
that is not the record's fault (the broker, the store, an embedding server) is retried with
backoff, without committing and without reading on.

Re-indexing and re-embedding are replays into a new collection (serving/rag_replay.py,
`sluicegate rag --reindex`); vectors a replay computes carry a `run_id`, which the live index
stage leaves alone.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from sluicegate.connectors.knowledge import KnowledgeServices
from sluicegate.connectors.vector_store import CollectionNotFoundError, VectorStoreError
from sluicegate.errors import BrokerError, SerializationError
from sluicegate.processors.envelope import Emit
from sluicegate.processors.ingestion import (
    ChunkStage,
    DeleteDocument,
    EmbedStage,
    Upsert,
    index_plan,
)
from sluicegate.schemas.models import (
    ChunkCreated,
    ChunkEmbedded,
    DocumentDeleted,
    DocumentSubmitted,
    Event,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from sluicegate.streams.dlq import dead_letter

log = logging.getLogger(__name__)
RETRY_MAX_S = 30.0


@dataclass
class RagStats:
    """Counters of one worker process (read by tests and the periodic log line)."""

    documents: int = 0
    chunks: int = 0
    embedded: int = 0
    indexed: int = 0
    deleted_documents: int = 0  # documents whose chunks a delete removed (re-submission or not)
    deletions: int = 0  # DocumentDeleted events applied by the index stage
    dead_letters: int = 0
    retries: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    embed_seconds: float = 0.0

    def skip(self, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n


class Outputs:
    """An idempotent, acks=all producer whose `wait` says whether everything sent since the
    last wait was acknowledged."""

    def __init__(
        self, client_config: Mapping[str, str], serde: AvroSerde, prefix: Callable[[str], str]
    ) -> None:
        self._serde = serde
        self._topic = prefix
        self._failures: list[str] = []
        self._producer = Producer(
            {
                **client_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "partitioner": "murmur2_random",
            }
        )

    def send(self, emit: Emit) -> None:
        self.send_raw(self._topic(emit.topic), emit.key, self._serde.encode(emit.event))

    def send_raw(self, topic: str, key: str | bytes | None, value: bytes) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                self._failures.append(f"{topic}: {error.str()}")

        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=delivered)
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self._producer.poll(0.1)

    def dead_letter(self, message: Message, error: BaseException, stage: str) -> None:
        record = dead_letter(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=message.key(),
            value=message.value() or b"",
            error=error,
            stage=stage,
        )
        log.warning(
            "%s: dead-lettered %s[%s]@%s: %s: %s",
            stage,
            message.topic(),
            message.partition(),
            message.offset(),
            type(error).__name__,
            error,
        )
        self.send_raw(f"{message.topic()}.dlq", message.key(), self._serde.encode(record))

    def wait(self, timeout_s: float = 60.0) -> None:
        """Every record sent so far acknowledged, else BrokerError (retriable)."""
        left = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if left or failures:
            raise BrokerError(
                f"{left} records unacknowledged, failures: {failures[:3]}", retriable=True
            )

    def close(self) -> None:
        self._producer.flush(10)


Handler = Callable[[list[Message]], None]


class StageLoop:
    """One stage: a consumer group on one topic, batches by size and time, `handle(batch)`
    (retried with backoff until it succeeds or the loop stops), then a synchronous commit."""

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        topic: str,
        group: str,
        batch_size: int,
        batch_s: float,
        handle: Handler,
        stop: threading.Event,
        stats: RagStats,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.failed = False  # the loop died (a bug, not a record): the process should exit
        self._on_idle = on_idle
        self._topic = topic
        self._batch_size = batch_size
        self._batch_s = batch_s
        self._handle = handle
        self._stop = stop
        self._stats = stats
        self._batch: list[Message] = []
        self._opened: float | None = None
        self._consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": group,
                "client.id": f"{name}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                # Embedding a batch can take seconds; an hour of it would still not be a stall.
                "max.poll.interval.ms": 3_600_000,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1500,
            }
        )

    def run(self) -> None:
        self._consumer.subscribe([self._topic], on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                wait = 0.2 if self._opened is None else max(0.0, self._due_in())
                room = max(1, min(500, self._batch_size - len(self._batch)))
                messages = self._consumer.consume(num_messages=room, timeout=min(0.2, wait))
                if not messages and not self._batch and self._on_idle is not None:
                    self._on_idle()
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("%s consumer: %s", self.name, error)
                        continue
                    if self._opened is None:
                        self._opened = time.monotonic()
                    self._batch.append(message)
                if self._batch and (len(self._batch) >= self._batch_size or self._due_in() <= 0):
                    self._flush()
        except Exception:
            log.exception("%s: stage loop failed; stopping the worker", self.name)
            self.failed = True
            self._stop.set()
        finally:
            self._consumer.close()

    def _due_in(self) -> float:
        return 0.0 if self._opened is None else self._opened + self._batch_s - time.monotonic()

    def _flush(self) -> None:
        batch = self._batch
        if not batch:
            return
        delay = 0.2
        while True:
            try:
                self._handle(batch)
                break
            except Exception as error:  # not a record's fault: the broker, store or model
                self._stats.retries += 1
                log.warning(
                    "%s: batch of %d failed, retrying in %.1fs: %s: %s",
                    self.name,
                    len(batch),
                    delay,
                    type(error).__name__,
                    error,
                    exc_info=delay == 0.2,  # the trace once, not on every retry
                )
                if self._stop.wait(delay):
                    return  # stopped: the batch stays uncommitted and comes back
                delay = min(delay * 2, RETRY_MAX_S)
        offsets: dict[tuple[str, int], int] = {}
        for message in batch:
            offsets[(message.topic(), message.partition())] = message.offset() + 1
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as error:  # revoked meanwhile: the new owner redoes the batch
            log.warning("%s: commit failed (the batch will be redone): %s", self.name, error)
        self._batch, self._opened = [], None

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        self._flush()  # finish what we hold before the partitions move


class RagWorker:
    """The three stages of one process (see the module doc)."""

    def __init__(
        self,
        *,
        settings: Settings,
        serde: AvroSerde,
        services: KnowledgeServices | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.serde = serde
        self.services = services or KnowledgeServices(settings.rag)
        self.stop_event = stop or threading.Event()
        self.stats = RagStats()
        rag = settings.rag
        app_id = settings.worker.app_id
        self._chunker = ChunkStage(
            chunker_for=self.services.chunker, max_document_bytes=rag.max_document_bytes
        )
        self._embedder = EmbedStage(model_for=self.services.embedding_model)
        self._outputs = {
            name: Outputs(settings.kafka.client_config(), serde, settings.topic)
            for name in ("chunk", "embed", "index")
        }
        self.stages = [
            self._loop("chunk", "documents", f"{app_id}-rag-chunk", 50, 0.1, self._chunk),
            self._loop(
                "embed",
                "chunks",
                f"{app_id}-rag-embed",
                rag.embed_batch_size,
                rag.embed_batch_s,
                self._embed,
            ),
            self._loop(
                "index",
                "embeddings",
                f"{app_id}-rag-index",
                rag.index_batch_size,
                rag.index_batch_s,
                self._index,
                on_idle=self._optimize_when_idle,
            ),
        ]
        self._written: dict[str, float] = {}  # collection → when last written, not optimized

    def _loop(
        self,
        name: str,
        topic: str,
        group: str,
        size: int,
        seconds: float,
        handle: Handler,
        on_idle: Callable[[], None] | None = None,
    ) -> StageLoop:
        return StageLoop(
            on_idle=on_idle,
            name=f"rag.{name}",
            settings=self.settings,
            topic=self.settings.topic(topic),
            group=group,
            batch_size=size,
            batch_s=seconds,
            handle=handle,
            stop=self.stop_event,
            stats=self.stats,
        )

    def run(self) -> None:
        """All three stages until `stop()`; returns once they have stopped."""
        threads = [
            threading.Thread(target=stage.run, name=stage.name, daemon=True)
            for stage in self.stages
        ]
        for thread in threads:
            thread.start()
        last = time.monotonic()
        reported = RagStats()
        while not self.stop_event.wait(1.0):
            if time.monotonic() - last >= 30 and self.stats != reported:
                log.info("rag: %s", self.stats)
                reported = replace(self.stats, skipped=dict(self.stats.skipped))
                last = time.monotonic()
        for thread in threads:
            thread.join(30)
        for outputs in self._outputs.values():
            outputs.close()
        self.services.close()
        log.info("rag worker stopped: %s", self.stats)
        failed = [stage.name for stage in self.stages if stage.failed]
        if failed:
            raise RuntimeError(f"rag worker stages failed: {failed}")

    def stop(self) -> None:
        self.stop_event.set()

    # -- the stages' handlers: outputs acknowledged (or stored) before they return -----------

    def _chunk(self, batch: list[Message]) -> None:
        outputs = self._outputs["chunk"]
        documents = chunks = dead = 0
        for message in batch:
            try:
                document = decode_one_of(self.serde, message, DocumentSubmitted, DocumentDeleted)
                emits = self._chunker.run(document)
            except Exception as error:  # a bad document never stops the loop
                outputs.dead_letter(message, error, "rag.chunk")
                dead += 1
                continue
            for emit in emits:
                outputs.send(emit)
            if isinstance(document, DocumentSubmitted):
                documents += 1
                chunks += len(emits)
        outputs.wait()
        self.stats.documents += documents
        self.stats.chunks += chunks
        self.stats.dead_letters += dead

    def _embed(self, batch: list[Message]) -> None:
        outputs = self._outputs["embed"]
        items: list[tuple[Message, ChunkCreated | DocumentDeleted]] = []
        dead = 0
        for message in batch:
            try:
                item = decode_one_of(self.serde, message, ChunkCreated, DocumentDeleted)
                items.append((message, item))
            except Exception as error:
                outputs.dead_letter(message, error, "rag.embed")
                dead += 1
        started = time.perf_counter()
        emits, failed = embed_isolating(self._embedder, items)
        for message, error in failed:
            outputs.dead_letter(message, error, "rag.embed")
        for emit in emits:
            outputs.send(emit)
        outputs.wait()
        self.stats.embed_seconds += time.perf_counter() - started
        self.stats.embedded += sum(1 for e in emits if isinstance(e.event, ChunkEmbedded))
        self.stats.dead_letters += dead + len(failed)

    def _index(self, batch: list[Message]) -> None:
        outputs = self._outputs["index"]
        items: list[tuple[Message, ChunkEmbedded | DocumentDeleted]] = []
        for message in batch:
            try:
                items.append(
                    (message, decode_one_of(self.serde, message, ChunkEmbedded, DocumentDeleted))
                )
            except Exception as error:
                outputs.dead_letter(message, error, "rag.index")
                self.stats.dead_letters += 1
        events = [event for _, event in items]
        indexed, deleted, failed, skipped = apply_index(
            self.services, events, messages=[m for m, _ in items]
        )
        for event in events:
            self._written[self.services.collection(event.knowledge_base)] = time.monotonic()
        for message, error in failed:
            if message is not None:
                outputs.dead_letter(message, error, "rag.index")
        outputs.wait()
        self.stats.indexed += indexed
        self.stats.deleted_documents += deleted
        self.stats.deletions += sum(
            1 for e in events if isinstance(e, DocumentDeleted) and e.run_id is None
        )
        self.stats.dead_letters += len(failed)
        self.stats.skip(skipped)

    def _optimize_when_idle(self, quiet_s: float = 10.0) -> None:
        """Fold what trickled in into the store's indices once writes pause: many small upserts
        leave many small files, and LanceDB searched ~2.5x slower before this (measured on 156
        chunks written in ~100 upserts: 61 → 24 ms per enriched request)."""
        optimize = getattr(self.services.store, "optimize", None)
        now = time.monotonic()
        for collection, written in list(self._written.items()):
            if now - written < quiet_s:
                continue
            del self._written[collection]
            if optimize is None:
                continue
            try:
                optimize(collection)
            except Exception as error:  # an optimisation, not a duty: the next pause retries
                log.warning("rag.index: optimizing %s failed: %s", collection, error)


def decode_one_of(serde: AvroSerde, message: Message, *models: type[Event]) -> Any:
    """The record's event if it is one of `models`, else SerializationError (dead-lettered)."""
    event = serde.decode(message.value() or b"")
    if not isinstance(event, models):
        names = " or ".join(m.__name__ for m in models)
        raise SerializationError(f"expected {names}, got {type(event).__name__}")
    return event


def embed_isolating(
    stage: EmbedStage, decoded: Sequence[tuple[Message, ChunkCreated | DocumentDeleted]]
) -> tuple[list[Emit], list[tuple[Message, BaseException]]]:
    """Embed a batch; if the batch call fails, each chunk alone, so one chunk an embedding
    server refuses is dead-lettered instead of blocking the partition. When every chunk fails
    alone too, the model (not a chunk) is the problem: the error is raised, to be retried."""
    if not decoded:
        return [], []
    try:
        return stage.run([chunk for _, chunk in decoded]), []
    except Exception as batch_error:
        if len(decoded) == 1:
            raise
        emits: list[Emit] = []
        failed: list[tuple[Message, BaseException]] = []
        for message, chunk in decoded:
            try:
                emits += stage.run([chunk])
            except Exception as error:
                failed.append((message, error))
        if not emits:
            raise batch_error from None
        return emits, failed


def apply_index(
    services: KnowledgeServices,
    events: Sequence[ChunkEmbedded | DocumentDeleted],
    *,
    messages: Sequence[Any] = (),
    collection: str | None = None,
    run_id: str | None = None,
    knowledge_bases: Sequence[str] = (),
) -> tuple[int, int, list[tuple[Any, BaseException]], dict[str, int]]:
    """Write a batch of ChunkEmbedded to the store in order; returns (records upserted,
    documents deleted, records that failed for good with their message, skipped counts).

    A retriable store error is raised (the batch is retried); a non-retriable one (e.g. a
    vector the collection's width does not match) fails only the records concerned."""
    plan = index_plan(
        events,
        collection_for=(lambda _kb: collection) if collection else services.collection,
        model_for=services.model_name,
        run_id=run_id,
        knowledge_bases=knowledge_bases,
    )
    message_of = {
        (e.tenant_id, e.chunk_id): m
        for e, m in zip(events, messages, strict=False)
        if isinstance(e, ChunkEmbedded)
    }
    store = services.store
    upserted = deleted = 0
    failed: list[tuple[Any, BaseException]] = []
    for op in plan.operations:
        if isinstance(op, DeleteDocument):
            try:
                if store.delete_document(op.collection, tenant_id=op.tenant_id, doc_id=op.doc_id):
                    deleted += 1
            except CollectionNotFoundError:
                pass  # nothing indexed there yet
            continue
        assert isinstance(op, Upsert)
        try:
            upserted += store.upsert(op.collection, op.records)
        except (VectorStoreError, ValueError) as error:  # ValueError: an ACL off the grammar
            if _retriable(error):
                raise
            for record in op.records:  # find the records at fault
                try:
                    upserted += store.upsert(op.collection, [record])
                except (VectorStoreError, ValueError) as single:
                    if _retriable(single):
                        raise
                    failed.append((message_of.get((record.tenant_id, record.chunk_id)), single))
    return upserted, deleted, failed, plan.skipped


def _retriable(error: BaseException) -> bool:
    return isinstance(error, VectorStoreError) and error.retriable


def run_rag(settings: Settings) -> None:
    """The `sluicegate rag` process; blocks until SIGINT/SIGTERM."""
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.streams.topics import ensure_topics

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    ensure_topics(settings)
    worker = RagWorker(settings=settings, serde=build_serde(settings))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    log.info(
        "rag worker: %s → %s → %s → %s store",
        settings.topic("documents"),
        settings.topic("chunks"),
        settings.topic("embeddings"),
        settings.rag.store,
    )
    worker.run()
