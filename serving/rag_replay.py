"""Re-index and re-embed by replay (`sluicegate rag --reindex`).

Every vector in the store can be rebuilt from the log, so moving a knowledge base to a new
store, a new collection or a new embedding model is a replay, not a migration:

- `--from embeddings` (default): the ChunkEmbedded records of one knowledge base on
  sg.embeddings, from the beginning to the end the topic had when the replay started, upserted
  into the new collection. No model runs; the same vectors give the same results.
- `--from chunks`: the ChunkCreated records on sg.chunks embedded again with the model the
  knowledge base is configured with now, published to sg.embeddings with a fresh `run_id`
  (the log keeps every vector with its model and version; the live index stage leaves a
  replay's vectors alone) and upserted into the new collection.

Records are applied in the topic's order through the same `index_plan` as the live stage, so a
document submitted twice ends as its last version. Then point the knowledge base at the new
collection (`rag.knowledge_bases.<kb>.collection`, and `embedding_model` for a new model).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from sluicegate.connectors.knowledge import KnowledgeServices
from sluicegate.processors.ingestion import EmbedStage
from sluicegate.schemas.models import ChunkCreated, ChunkEmbedded
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.rag_worker import Outputs, apply_index
from sluicegate.serving.topic_read import read_to_end
from sluicegate.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ReindexReport:
    knowledge_base: str
    collection: str
    source: str
    records: int = 0
    documents: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    run_id: str | None = None
    seconds: float = 0.0


def run_reindex(
    settings: Settings,
    serde: AvroSerde,
    *,
    knowledge_base: str,
    collection: str,
    source: str = "embeddings",
    run_id: str | None = None,
    services: KnowledgeServices | None = None,
    progress: Callable[[ReindexReport], None] | None = None,
) -> ReindexReport:
    """Replay one knowledge base into `collection`.

    `source="embeddings"`: the vectors on sg.embeddings (those of `run_id`; None = the live
    ones) — no model runs. `source="chunks"`: every chunk on sg.chunks embedded again with the
    knowledge base's configured model; the new vectors are published to sg.embeddings with a
    fresh run id (reported) and indexed into `collection` here.
    """
    services = services or KnowledgeServices(settings.rag)
    report = ReindexReport(knowledge_base=knowledge_base, collection=collection, source=source)
    started = time.perf_counter()
    documents: set[tuple[str, str]] = set()
    outputs = Outputs(settings.kafka.client_config(), serde, settings.topic)
    if source == "chunks":
        report.run_id = run_id or f"reembed-{uuid.uuid4().hex[:12]}"
        stage = EmbedStage(model_for=services.embedding_model, run_id=report.run_id)
    try:
        topic = settings.topic("embeddings" if source == "embeddings" else "chunks")
        for messages in read_to_end(settings, topic, batch=settings.rag.embed_batch_size):
            if source == "embeddings":
                events = [_decoded(serde, m, ChunkEmbedded) for m in messages]
                wanted = [e for e in events if e is not None]
                replay_run = run_id
            else:
                chunks = [_decoded(serde, m, ChunkCreated) for m in messages]
                mine = [c for c in chunks if c is not None and c.knowledge_base == knowledge_base]
                emits = stage.run(mine) if mine else []
                for emit in emits:
                    outputs.send(emit)
                outputs.wait()
                wanted = [e.event for e in emits if isinstance(e.event, ChunkEmbedded)]
                replay_run = report.run_id
            upserted, _deleted, failed, skipped = apply_index(
                services,
                wanted,
                collection=collection,
                run_id=replay_run,
                knowledge_bases=[knowledge_base],
            )
            report.records += upserted
            for event in wanted:
                if event.knowledge_base == knowledge_base:
                    documents.add((event.tenant_id, event.doc_id))
            for reason, n in skipped.items():
                report.skipped[reason] = report.skipped.get(reason, 0) + n
            if failed:
                report.skipped["failed"] = report.skipped.get("failed", 0) + len(failed)
            report.documents = len(documents)
            if progress is not None:
                progress(report)
    finally:
        outputs.close()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _decoded(serde: AvroSerde, message: Message, model: Any) -> Any:
    try:
        return serde.decode_as(message.value() or b"", model)
    except Exception as error:
        log.warning(
            "replay: skipping undecodable %s@%s: %s", message.topic(), message.offset(), error
        )
        return None
