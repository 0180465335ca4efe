"""Ingestion as events: a document → its chunks → their vectors → store records.

Three pure stages that the rag worker (serving/rag_worker.py) runs on three topics, each able to
be replayed on its own:

- `submitted` builds the `DocumentSubmitted` that `sluicegate ingest` and the upload endpoint
  publish, from a parsed file (parsing happens at the door, so a bad file is refused there, with
  its reason, and the event carries plain text).
- `ChunkStage` (sg.documents → sg.chunks): validates a document (ACL grammar, size, text) and
  chunks it with its knowledge base's chunker; one `ChunkCreated` per chunk, parents first.
  A document that fails raises `InvalidDocumentError`: the worker dead-letters it with the
  reason and goes on.
- `EmbedStage` (sg.chunks → sg.embeddings): embeds a batch of chunks with each knowledge base's
  model, one call per model; every `ChunkEmbedded` carries what the index needs (text, ACL,
  title, span, metadata) and the model's name and version, so indexing reads one topic and a
  replay of it rebuilds any store. Parents pass through with an empty vector.
- `index_plan` (sg.embeddings → the store): the records to upsert, per collection, in order. A
  document's first chunk (ordinal 0 of the first kind emitted: parent `p0`, else `c0`) deletes
  the document's earlier chunks first, so a re-submitted, shorter document leaves no stale
  chunks. Records of one document share a key (doc_id), hence a partition, hence an order.

A `DocumentDeleted` (`deleted`: `DELETE /v1/knowledge/{kb}/documents/{id}`, `sluicegate rag
delete`) goes on sg.documents under the document's key and each stage forwards it, in place, to
the next topic: the chunk stage to sg.chunks, the embed stage to sg.embeddings, where the index
stage removes the document's chunks. Deleting directly from the store at the door would race
the document's chunks still on their way (a deletion right after an upload would be undone by
the upload's late upsert); forwarded in order it lands after them, and every replay of any of
the three topics meets it at the same place. A later submission of the same id indexes again.

Chunk ids are `<doc_id>#c<n>` (parents `#p<n>`), stable across replays; stores key them by
(tenant, chunk id), so a redelivered batch overwrites itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sluicegate.connectors.document_parsers import ParsedDocument
from sluicegate.connectors.vector_store import (
    COLLECTION_NAME,
    ChunkRecord,
    InvalidAclError,
    readers_for,
)
from sluicegate.errors import SluicegateError
from sluicegate.processors.chunking import Chunker, TextEmbedder
from sluicegate.processors.envelope import Emit, child_envelope, origin_envelope
from sluicegate.schemas.models import (
    ChunkCreated,
    ChunkEmbedded,
    DocumentDeleted,
    DocumentSubmitted,
)

CHUNK_PRODUCER = "rag.chunk"
EMBED_PRODUCER = "rag.embed"


class InvalidDocumentError(SluicegateError, ValueError):
    """A document the pipeline refuses; `reason` is a short machine-readable word."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_knowledge_base(name: str) -> str:
    """Knowledge-base names are collection names by default: a letter, then letters, digits,
    `_` or `-` (at most 63)."""
    if not COLLECTION_NAME.match(name):
        raise InvalidDocumentError(
            f"knowledge base {name!r}: a letter, then letters, digits, `_` or `-` (≤ 63)",
            reason="bad_knowledge_base",
        )
    return name


def check_acl(tenant_id: str, acl: Sequence[str]) -> list[str]:
    try:
        readers_for(tenant_id, acl)
    except InvalidAclError as error:
        raise InvalidDocumentError(str(error), reason="bad_acl") from error
    return [entry.strip() for entry in acl]


def submitted(
    parsed: ParsedDocument,
    *,
    knowledge_base: str,
    tenant_id: str,
    producer: str,
    acl: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
    title: str | None = None,
    doc_id: str | None = None,
    max_bytes: int | None = None,
) -> DocumentSubmitted:
    """The event for one parsed document, validated as the chunk stage will (ACL, size, KB)."""
    check_knowledge_base(knowledge_base)
    size = len(parsed.text.encode())
    if max_bytes is not None and size > max_bytes:
        raise InvalidDocumentError(
            f"{parsed.source_uri}: {size} bytes of text, more than the {max_bytes} allowed "
            "(rag.max_document_bytes); split it",
            reason="too_large",
        )
    return DocumentSubmitted(
        **origin_envelope(tenant_id, producer=producer),
        doc_id=doc_id or parsed.doc_id,
        knowledge_base=knowledge_base,
        text=parsed.text,
        source_uri=parsed.source_uri,
        acl=check_acl(tenant_id, acl),
        metadata={**parsed.metadata, **(metadata or {})},
        title=title or parsed.title,
        media_type=parsed.media_type,
        page_starts=list(parsed.page_starts),
    )


def deleted(
    *,
    knowledge_base: str,
    tenant_id: str,
    doc_id: str,
    producer: str,
    requested_by: str | None = None,
) -> DocumentDeleted:
    """The event that removes one tenant's document from a knowledge base (see module doc)."""
    check_knowledge_base(knowledge_base)
    if not doc_id.strip():
        raise InvalidDocumentError("a document id cannot be empty", reason="bad_doc_id")
    return DocumentDeleted(
        **origin_envelope(tenant_id, producer=producer),
        doc_id=doc_id,
        knowledge_base=knowledge_base,
        requested_by=requested_by,
    )


def forwarded(
    deletion: DocumentDeleted, *, topic: str, producer: str, run_id: str | None = None
) -> Emit:
    """A deletion passed on to the next stage's topic, as a child event (a replay marks it with
    its `run_id`, so the live index stage leaves it alone)."""
    envelope = child_envelope(deletion, producer=producer)
    if run_id is not None:
        envelope["run_id"] = run_id
    event = DocumentDeleted(
        **envelope,
        doc_id=deletion.doc_id,
        knowledge_base=deletion.knowledge_base,
        requested_by=deletion.requested_by,
    )
    return Emit(topic, deletion.doc_id, event)


class ChunkStage:
    """DocumentSubmitted → ChunkCreated per chunk (parents first), or InvalidDocumentError; a
    DocumentDeleted is forwarded to sg.chunks."""

    def __init__(
        self, *, chunker_for: Callable[[str], Chunker], max_document_bytes: int | None = None
    ) -> None:
        self._chunker_for = chunker_for
        self._max_bytes = max_document_bytes

    def run(self, document: DocumentSubmitted | DocumentDeleted) -> list[Emit]:
        check_knowledge_base(document.knowledge_base)
        if isinstance(document, DocumentDeleted):
            return [forwarded(document, topic="chunks", producer=CHUNK_PRODUCER)]
        acl = check_acl(document.tenant_id, document.acl)
        if self._max_bytes is not None and len(document.text.encode()) > self._max_bytes:
            raise InvalidDocumentError(
                f"{document.doc_id}: text larger than {self._max_bytes} bytes", reason="too_large"
            )
        if not document.text.strip():
            raise InvalidDocumentError(f"{document.doc_id}: no text", reason="empty")
        chunker = self._chunker_for(document.knowledge_base)
        chunks = chunker.run(doc_id=document.doc_id, text=document.text)
        if not chunks:
            raise InvalidDocumentError(f"{document.doc_id}: no chunks", reason="empty")
        return [
            Emit(
                "chunks",
                document.doc_id,
                ChunkCreated(
                    **child_envelope(document, producer=CHUNK_PRODUCER),
                    doc_id=document.doc_id,
                    chunk_id=chunk.chunk_id,
                    knowledge_base=document.knowledge_base,
                    ordinal=chunk.ordinal,
                    text=chunk.text,
                    acl=acl,
                    start=chunk.start,
                    end=chunk.end,
                    tokens=chunk.tokens,
                    section=chunk.section,
                    parent_id=chunk.parent_id,
                    is_parent=chunk.is_parent,
                    chunker=chunker.spec,
                    title=document.title,
                    source_uri=document.source_uri,
                    metadata=dict(document.metadata),
                ),
            )
            for chunk in chunks
        ]


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """What the embed stage needs of a model: the port, and the name and version it records."""

    embedder: TextEmbedder
    name: str
    version: str = ""


class EmbedStage:
    """A batch of ChunkCreated → ChunkEmbedded, in the same order; one embedding call per model.
    A DocumentDeleted in the batch is forwarded to sg.embeddings in its place.

    `model_for(knowledge_base)` gives the model a knowledge base is embedded with. `run_id`
    marks the vectors (and forwarded deletions) of a replay (`sluicegate rag --reindex --from
    chunks`, `sluicegate rag rechunk`), which the live index stage leaves alone.
    """

    def __init__(
        self, *, model_for: Callable[[str], EmbeddingModel], run_id: str | None = None
    ) -> None:
        self._model_for = model_for
        self._run_id = run_id

    def run(self, items: Sequence[ChunkCreated | DocumentDeleted]) -> list[Emit]:
        vectors: dict[int, list[float]] = {}
        models: dict[int, EmbeddingModel] = {}
        by_model: dict[str, list[int]] = {}
        chunks: dict[int, ChunkCreated] = {}
        for i, item in enumerate(items):
            if isinstance(item, ChunkCreated):
                chunks[i] = item
                models[i] = self._model_for(item.knowledge_base)
                if not item.is_parent:
                    by_model.setdefault(models[i].name, []).append(i)
        for positions in by_model.values():
            matrix = np.asarray(
                models[positions[0]].embedder.embed([chunks[i].text for i in positions]),
                dtype=np.float32,
            )
            for row, i in enumerate(positions):
                vectors[i] = [float(x) for x in matrix[row]]
        return [
            Emit("embeddings", item.doc_id, self._embedded(item, models[i], vectors.get(i, [])))
            if isinstance(item, ChunkCreated)
            else forwarded(item, topic="embeddings", producer=EMBED_PRODUCER, run_id=self._run_id)
            for i, item in enumerate(items)
        ]

    def _embedded(
        self, chunk: ChunkCreated, model: EmbeddingModel, vector: list[float]
    ) -> ChunkEmbedded:
        envelope = child_envelope(chunk, producer=EMBED_PRODUCER)
        if self._run_id is not None:
            envelope["run_id"] = self._run_id
        return ChunkEmbedded(
            **envelope,
            doc_id=chunk.doc_id,
            chunk_id=chunk.chunk_id,
            knowledge_base=chunk.knowledge_base,
            embedding_model=model.name,
            embedding_model_version=model.version,
            vector=vector,
            text=chunk.text,
            acl=list(chunk.acl),
            title=chunk.title,
            source_uri=chunk.source_uri,
            section=chunk.section,
            start=chunk.start,
            end=chunk.end,
            ordinal=chunk.ordinal,
            parent_id=chunk.parent_id,
            metadata=dict(chunk.metadata),
        )


# -- indexing ---------------------------------------------------------------------------------


def record_of(event: ChunkEmbedded) -> ChunkRecord:
    """The store record of one embedded chunk (a parent when its vector is empty)."""
    return ChunkRecord(
        chunk_id=event.chunk_id,
        doc_id=event.doc_id,
        tenant_id=event.tenant_id,
        text=event.text,
        vector=np.asarray(event.vector, dtype=np.float32) if event.vector else None,
        acl=tuple(event.acl),
        title=event.title,
        source_uri=event.source_uri,
        section=event.section,
        ordinal=event.ordinal,
        start=event.start,
        end=event.end,
        parent_id=event.parent_id,
        metadata=dict(event.metadata),
        embedding_model=event.embedding_model,
    )


def starts_document(event: ChunkEmbedded) -> bool:
    """The first record of a document's chunking: `p0` when it has parents, else `c0`."""
    if event.ordinal != 0:
        return False
    return not event.vector or event.parent_id is None


@dataclass(frozen=True, slots=True)
class Upsert:
    collection: str
    records: list[ChunkRecord]


@dataclass(frozen=True, slots=True)
class DeleteDocument:
    collection: str
    tenant_id: str
    doc_id: str


@dataclass
class IndexPlan:
    """The store operations for a batch, in order, and what was left out and why;
    `deletions` counts the DocumentDeleted events among them."""

    operations: list[Upsert | DeleteDocument] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    deletions: int = 0

    @property
    def records(self) -> int:
        return sum(len(op.records) for op in self.operations if isinstance(op, Upsert))


def index_plan(
    events: Sequence[ChunkEmbedded | DocumentDeleted],
    *,
    collection_for: Callable[[str], str],
    model_for: Callable[[str], str],
    run_id: str | None = None,
    knowledge_bases: Sequence[str] = (),
) -> IndexPlan:
    """Store operations for a batch of ChunkEmbedded and DocumentDeleted: upserts grouped per
    collection between deletes, so the store sees them in the topic's order.

    Left out (counted in `skipped`): vectors of another replay run than `run_id` (None: live
    vectors only), vectors of another model than the knowledge base's `model_for` (they would
    be compared with queries embedded by a different model), and other knowledge bases than
    `knowledge_bases` when that is given. A deletion applies when it is live or of `run_id`'s
    own replay: a replay honours every live deletion (a deleted document never comes back),
    while the live stage ignores a replay's copies of deletions it has already applied.
    """
    plan = IndexPlan()
    pending: dict[str, list[ChunkRecord]] = {}

    def skip(reason: str) -> None:
        plan.skipped[reason] = plan.skipped.get(reason, 0) + 1

    def flush() -> None:
        for collection, records in pending.items():
            plan.operations.append(Upsert(collection, records))
        pending.clear()

    for event in events:
        if knowledge_bases and event.knowledge_base not in knowledge_bases:
            skip("other_knowledge_base")
            continue
        if isinstance(event, DocumentDeleted):
            if event.run_id not in (None, run_id):
                skip("other_run")
                continue
            flush()
            collection = collection_for(event.knowledge_base)
            plan.operations.append(DeleteDocument(collection, event.tenant_id, event.doc_id))
            plan.deletions += 1
            continue
        if event.run_id != run_id:
            skip("other_run")
            continue
        if event.vector and event.embedding_model != model_for(event.knowledge_base):
            skip("other_model")
            continue
        collection = collection_for(event.knowledge_base)
        if starts_document(event):
            flush()
            plan.operations.append(DeleteDocument(collection, event.tenant_id, event.doc_id))
        pending.setdefault(collection, []).append(record_of(event))
    flush()
    return plan


def chunk_summary(emits: Sequence[Emit]) -> dict[str, Any]:
    """How many chunks and parents a document became (for logs and the CLI)."""
    events = [e.event for e in emits if isinstance(e.event, ChunkCreated)]
    return {
        "chunks": sum(1 for e in events if not e.is_parent),
        "parents": sum(1 for e in events if e.is_parent),
    }
