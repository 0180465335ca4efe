"""RAG through Kafka: ingestion throughput of the rag worker, and what enrichment adds to admission.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m bench.rag_pipeline
    python -m bench.rag_pipeline --documents 200 --cranfield ../shared/datasets/cranfield
    python -m bench.rag_pipeline --corpus corpus.jsonl          # BEIR-style `_id`, `title`, `text`

**Ingestion**: N documents (Cranfield abstracts by default, or any BEIR-style corpus) are
published as DocumentSubmitted to topics of a fresh prefix; the rag worker (in this process, its
three stages on their own consumer groups, the real MiniLM embedder and LanceDB in a temporary
directory) chunks, embeds and indexes them. Reported: documents/s and chunks/s from the first
publish to the last chunk upserted, and the share of that time spent embedding.

**Enrichment**: admission (processors/admission.py) with the enricher over the collection just
built (after the rag worker optimized it, which it does once writes pause for 10 s), on one
alias with a knowledge base and one without; p50/p95 of `run` → `retrieve` → `resume`, i.e.
the latency enrichment adds in the Faust worker before the inference task leaves (the Kafka
hops are the same with or without it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from bench.retrieval import load_beir, load_cranfield
from sluicegate.connectors.document_parsers import ParsedDocument
from sluicegate.connectors.knowledge import KnowledgeServices
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.processors.admission import Admission
from sluicegate.processors.enrichment import AwaitingRetrieval, Enricher
from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.processors.ingestion import submitted
from sluicegate.schemas.models import (
    ApiKeyRecord,
    ChatMessage,
    RequestReceived,
    SamplingParams,
    TenantRecord,
)
from sluicegate.serving.rag_worker import RagWorker
from sluicegate.settings import (
    Deployment,
    KafkaSettings,
    ModelAlias,
    RagSettings,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics

KB = "bench"
TENANT = "bench"


def documents(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    if args.corpus:
        return load_beir(args.corpus, args.corpus, args.corpus).documents[: args.documents]
    return load_cranfield(args.cranfield).documents[: args.documents]


def ingest(settings: Settings, docs: list[tuple[str, str, str]]) -> tuple[KnowledgeServices, str]:
    serde = build_serde(settings)
    services = KnowledgeServices(settings.rag)
    services.embedder("all-MiniLM-L6-v2")  # loaded before the clock starts
    worker = RagWorker(settings=settings, serde=serde, services=services)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(3)  # the three consumer groups get their partitions
    producer = Producer(
        {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    started = time.perf_counter()
    for doc_id, title, text in docs:
        event = submitted(
            ParsedDocument(doc_id=doc_id, text=text, media_type="text/plain", source_uri=doc_id),
            knowledge_base=KB,
            tenant_id=TENANT,
            producer="bench",
            title=title or None,
        )
        producer.produce(
            settings.topic("documents"), key=doc_id.encode(), value=serde.encode(event)
        )
        producer.poll(0)
    producer.flush(60)
    stats = worker.stats
    while stats.documents < len(docs) or stats.indexed < stats.chunks or stats.chunks == 0:
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    time.sleep(12)  # the index stage optimizes the collection once writes pause for 10 s
    worker.stop()
    thread.join(60)
    print("## Ingestion through Kafka (rag worker)\n")
    print(f"- {len(docs)} documents → {stats.chunks} chunks in {elapsed:.1f} s")
    print(f"- {len(docs) / elapsed:.2f} documents/s, {stats.chunks / elapsed:.2f} chunks/s")
    print(f"- embedding: {stats.embed_seconds:.1f} s ({stats.embed_seconds / elapsed:.0%})\n")
    reader = KnowledgeServices(settings.rag, embedders=[services.embedder("all-MiniLM-L6-v2")])
    return reader, f"{stats.chunks}"


class Directory:
    def __init__(self) -> None:
        base = {"event_id": "e", "occurred_at": now(), "tenant_id": TENANT, "request_id": "r"}
        base |= {"trace_id": "t" * 32, "span_id": "s" * 16, "producer": "bench"}
        self._key = ApiKeyRecord(
            **base,
            key_id="k",
            secret_hash="x",
            roles=["developer"],
            status="active",
            created_at_ms=0,
            revision=1,
        )
        self._tenant = TenantRecord(**base, name=TENANT, status="active", revision=1)

    def key(self, key_id: str) -> ApiKeyRecord | None:
        return self._key

    def tenant(self, tenant_id: str) -> TenantRecord | None:
        return self._tenant

    def access_rules(self, tenant_id: str) -> tuple:
        return ()


def enrichment(settings: Settings, services: KnowledgeServices, queries: list[str]) -> None:
    enricher = Enricher(
        rag=settings.rag, auth=settings.auth, retrievers=services, directory=Directory()
    )
    admission = Admission(settings=settings, enricher=enricher)

    def request(model: str, question: str) -> RequestReceived:
        return RequestReceived(
            event_id=new_event_id(),
            occurred_at=now(),
            tenant_id=TENANT,
            request_id=new_event_id(),
            trace_id=new_trace_id(),
            span_id=new_span_id(),
            producer="bench",
            model=model,
            messages=[ChatMessage(role="user", content=question)],
            params=SamplingParams(max_tokens=64),
            api_key_id="k",
        )

    def timed(model: str) -> list[float]:
        out = []
        for question in queries:
            started = time.perf_counter()
            outcome = admission.run(request(model, question))
            if isinstance(outcome, AwaitingRetrieval):
                outcome.resume(outcome.retrieve())
            out.append((time.perf_counter() - started) * 1000)
        return out

    timed("rag")  # warm-up: the table opens, the first query embeds
    plain, enriched = np.asarray(timed("plain")), np.asarray(timed("rag"))
    print("## Enrichment in admission (in process, same collection)\n")
    print("| admission | p50 ms | p95 ms |\n|---|---|---|")
    for label, values in (("without a knowledge base", plain), ("with enrichment", enriched)):
        p50, p95 = np.percentile(values, [50, 95])
        print(f"| {label} | {p50:.2f} | {p95:.2f} |")
    added = np.percentile(enriched, 50) - np.percentile(plain, 50)
    print(f"\nenrichment adds {added:.1f} ms at p50 over {len(queries)} queries\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--cranfield", type=Path, default=Path("../shared/datasets/cranfield"))
    parser.add_argument("--corpus", type=Path, help="BEIR-style corpus JSONL instead")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            kafka=KafkaSettings(
                bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                topic_prefix=f"bench{run}.",
            ),
            worker=WorkerSettings(app_id=f"bench-rag-{run}", metrics_port=None),
            rag=RagSettings(path=Path(tmp), embed_batch_s=0.2, index_batch_s=0.5),
            deployments=[Deployment(name="d", backend="openai", provider_model="m")],
            models=[
                ModelAlias(name="plain", deployments=["d"]),
                ModelAlias(name="rag", deployments=["d"], knowledge_base=KB),
            ],
        )
        ensure_topics(settings)
        docs = documents(args)
        services, _ = ingest(settings, docs)
        queries = [title or text[:80] for _, title, text in docs[: args.queries]]
        enrichment(settings, services, queries)


if __name__ == "__main__":
    main()
