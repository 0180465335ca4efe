"""Re-index, re-embed and re-chunk by replay (`sluicegate rag --reindex`, `rag rechunk`).

Every vector in the store can be rebuilt from the log, so moving a knowledge base to a new
store, a new collection, a new embedding model or new chunk sizes is a replay, not a migration:

- `--from embeddings` (default): the ChunkEmbedded records of one knowledge base on
  sg.embeddings, from the beginning to the end the topic had when the replay started, upserted
  into the new collection. No model runs; the same vectors give the same results.
- `--from chunks`: the ChunkCreated records on sg.chunks embedded again with the model the
  knowledge base is configured with now, published to sg.embeddings with a fresh `run_id`
  (the log keeps every vector with its model and version; the live index stage leaves a
  replay's vectors alone) and upserted into the new collection.
- `rechunk` (`run_rechunk`, source `documents`): the DocumentSubmitted records on sg.documents
  chunked again with other chunker settings, embedded with the knowledge base's model,
  published to sg.embeddings under a `rechunk-…` run id and upserted into a new collection, or
  into the live one, where each document's first new chunk replaces its old chunks. The new
  chunks are not put on sg.chunks (the live embed stage would embed them a second time); their
  vectors carry the same text and spans, so `--reindex --run-id rechunk-…` rebuilds them.

Records are applied in the topic's order through the same `index_plan` as the live stage, so a
document submitted twice ends as its last version.

**Deletions.** A DocumentDeleted rides all three topics in the document's order, so a replay
meets it after the records it deletes. Before the replay proper, one pass over the topic notes
where each document was last deleted; records before that point are skipped, so a deleted
document is never embedded or upserted again — not even for the moment between its upsert and
its deletion in a live collection. Live deletions apply to every replay; a replay's own copies
(with its run id) are ignored by the live index stage. A deletion journaled after the replay
began reaches the live collection only: re-issue it (deleting is idempotent) after switching
the knowledge base to the new collection.

Then point the knowledge base at the new collection (`rag.knowledge_bases.<kb>.collection`,
and `embedding_model` for a new model, the chunker settings after a re-chunk).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import Message

from sluicegate.connectors.knowledge import KnowledgeServices
from sluicegate.processors.ingestion import ChunkStage, EmbedStage, InvalidDocumentError
from sluicegate.schemas.models import (
    ChunkCreated,
    ChunkEmbedded,
    DocumentDeleted,
    DocumentSubmitted,
    Event,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.rag_worker import Outputs, apply_index
from sluicegate.serving.topic_read import read_to_end
from sluicegate.settings import KnowledgeBaseSettings, Settings

log = logging.getLogger(__name__)

Source = Literal["embeddings", "chunks", "documents"]
_RECORDS: dict[str, type[Event]] = {
    "embeddings": ChunkEmbedded,
    "chunks": ChunkCreated,
    "documents": DocumentSubmitted,
}
_RUN_PREFIX = {"chunks": "reembed", "documents": "rechunk"}


@dataclass
class ReindexReport:
    knowledge_base: str
    collection: str
    source: str
    records: int = 0
    documents: int = 0
    deleted: int = 0  # DocumentDeleted events applied to the collection
    skipped: dict[str, int] = field(default_factory=dict)
    run_id: str | None = None
    seconds: float = 0.0

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n


@dataclass
class LastDeletions:
    """Where each document was last deleted on a topic (partition, offset), so a replay skips
    what a later deletion removes. A document's records share its key, hence a partition, so
    offsets compare within it."""

    at: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def note(self, event: DocumentDeleted, partition: int, offset: int) -> None:
        self.at[(event.tenant_id, event.doc_id)] = (partition, offset)

    def supersede(self, event: Any, partition: int, offset: int) -> bool:
        """Whether a later deletion of the event's document removes what it adds."""
        if isinstance(event, DocumentDeleted):
            return False
        last = self.at.get((event.tenant_id, event.doc_id))
        return last is not None and last[0] == partition and offset < last[1]


def last_deletions(
    settings: Settings, serde: AvroSerde, topic: str, *, knowledge_base: str, run_id: str | None
) -> LastDeletions:
    """The first pass of a replay: the deletions of `knowledge_base` on `topic` that apply to
    it (live ones, and those of its own run)."""
    found = LastDeletions()
    for messages in read_to_end(settings, topic):
        for message in messages:
            event = _decoded(serde, message, DocumentDeleted, quiet=True)
            if (
                event is not None
                and event.knowledge_base == knowledge_base
                and event.run_id in (None, run_id)
            ):
                found.note(event, message.partition(), message.offset())
    return found


def run_reindex(
    settings: Settings,
    serde: AvroSerde,
    *,
    knowledge_base: str,
    collection: str,
    source: Source = "embeddings",
    run_id: str | None = None,
    services: KnowledgeServices | None = None,
    progress: Callable[[ReindexReport], None] | None = None,
) -> ReindexReport:
    """Replay one knowledge base into `collection`.

    `source="embeddings"`: the vectors on sg.embeddings (those of `run_id`; None = the live
    ones) — no model runs. `source="chunks"`: every chunk on sg.chunks embedded again with the
    knowledge base's configured model. `source="documents"`: every document on sg.documents
    chunked with `services.chunker` (see `run_rechunk`) and embedded. The vectors of the last
    two are published to sg.embeddings with a fresh run id (reported) and indexed here.
    """
    services = services or KnowledgeServices(settings.rag)
    report = ReindexReport(knowledge_base=knowledge_base, collection=collection, source=source)
    started = time.perf_counter()
    if source == "embeddings":
        replay_run = run_id
    else:
        replay_run = report.run_id = run_id or f"{_RUN_PREFIX[source]}-{uuid.uuid4().hex[:12]}"
    topic = settings.topic(source)
    deletions = last_deletions(
        settings, serde, topic, knowledge_base=knowledge_base, run_id=replay_run
    )
    chunker = ChunkStage(
        chunker_for=services.chunker, max_document_bytes=settings.rag.max_document_bytes
    )
    embedder = EmbedStage(model_for=services.embedding_model, run_id=replay_run)
    documents: set[tuple[str, str]] = set()
    outputs = Outputs(settings.kafka.client_config(), serde, settings.topic)
    try:
        for messages in read_to_end(settings, topic, batch=settings.rag.embed_batch_size):
            items = _mine(serde, messages, source, knowledge_base, deletions, report)
            if source == "documents":
                items = _chunked(chunker, items, report)
            if source != "embeddings":
                emits = embedder.run(items) if items else []
                for emit in emits:
                    outputs.send(emit)
                outputs.wait()
                items = [e.event for e in emits]
            upserted, _deleted, failed, skipped = apply_index(
                services,
                items,
                collection=collection,
                run_id=replay_run,
                knowledge_bases=[knowledge_base],
            )
            report.records += upserted
            for event in items:
                key = (event.tenant_id, event.doc_id)
                if isinstance(event, DocumentDeleted):
                    if event.run_id in (None, replay_run):
                        report.deleted += 1
                        documents.discard(key)
                elif event.run_id == replay_run:
                    documents.add(key)
            for reason, n in skipped.items():
                report.skip(reason, n)
            report.skip("failed", len(failed))
            report.documents = len(documents)
            if progress is not None:
                progress(report)
    finally:
        outputs.close()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def run_rechunk(
    settings: Settings,
    serde: AvroSerde,
    *,
    knowledge_base: str,
    chunking: KnowledgeBaseSettings,
    collection: str | None = None,
    services: KnowledgeServices | None = None,
    progress: Callable[[ReindexReport], None] | None = None,
) -> ReindexReport:
    """Re-chunk one knowledge base from sg.documents with the chunker settings `chunking`
    (its embedding model is the one used) into `collection` — None: the knowledge base's own
    collection, each document's new chunks replacing its old ones. `services` lends its store,
    tokenizer and embedder (a loaded model is not loaded twice)."""
    base = services or KnowledgeServices(settings.rag)
    kbs = {**settings.rag.knowledge_bases, knowledge_base: chunking}
    rechunking = KnowledgeServices(
        settings.rag.model_copy(update={"knowledge_bases": kbs}),
        store=base.store,
        embedders=[base.embedder(chunking.embedding_model)],
        tokenizer=base.tokenizer,
    )
    try:
        return run_reindex(
            settings,
            serde,
            knowledge_base=knowledge_base,
            collection=collection or base.collection(knowledge_base),
            source="documents",
            services=rechunking,
            progress=progress,
        )
    finally:
        if services is None:
            base.close()


def _mine(
    serde: AvroSerde,
    messages: Sequence[Message],
    source: str,
    knowledge_base: str,
    deletions: LastDeletions,
    report: ReindexReport,
) -> list[Any]:
    """The batch's records of `knowledge_base`, less those a later deletion removes."""
    mine: list[Any] = []
    for message in messages:
        event = _decoded(serde, message, _RECORDS[source], DocumentDeleted)
        if event is None:
            continue
        if event.knowledge_base != knowledge_base:
            report.skip("other_knowledge_base")
        elif deletions.supersede(event, message.partition(), message.offset()):
            report.skip("deleted_later")
        else:
            mine.append(event)
    return mine


def _chunked(stage: ChunkStage, documents: Sequence[Any], report: ReindexReport) -> list[Any]:
    """Documents → their chunks (deletions pass through); a document the live chunk stage
    dead-lettered is skipped here too."""
    out: list[Any] = []
    for document in documents:
        try:
            out += [emit.event for emit in stage.run(document)]
        except InvalidDocumentError as error:
            report.skip(f"invalid_document:{error.reason}")
    return out


def _decoded(serde: AvroSerde, message: Message, *models: type[Event], quiet: bool = False) -> Any:
    """The record's event if it is one of `models`; None (logged) if it does not decode."""
    try:
        event = serde.decode(message.value() or b"")
    except Exception as error:
        if not quiet:
            log.warning(
                "replay: skipping undecodable %s@%s: %s", message.topic(), message.offset(), error
            )
        return None
    return event if isinstance(event, models) else None
