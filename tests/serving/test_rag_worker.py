"""The rag worker through the real broker: documents of several formats become searchable, a
bad document is dead-lettered while the loop goes on, a replay into a new collection gives
the same results, a deleted document leaves every search (and no replay brings it back), and a
re-chunk changes the chunks' size while search still works."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sluicegate.connectors.document_parsers import parse
from sluicegate.connectors.knowledge import KnowledgeServices
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.connectors.vector_store import Caller, CollectionNotFoundError, SearchFilter
from sluicegate.processors.ingestion import deleted, submitted
from sluicegate.processors.retrieval import Retriever
from sluicegate.schemas.models import DeadLetter
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.rag_replay import run_rechunk, run_reindex
from sluicegate.serving.rag_worker import RagWorker
from sluicegate.settings import (
    KafkaSettings,
    KnowledgeBaseSettings,
    RagSettings,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics
from tests.connectors.test_document_parsers import make_pdf
from tests.topics_io import produce, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KB = "handbook"
ACME = Caller(tenant_id="acme", subject="k1", roles=frozenset({"developer"}))
FILES = {
    "deploy.md": b"# Deploying\n\nRoll out the gateway with `sluicegate up`.\n\n## Canary\n\n"
    b"Send five percent of traffic to the canary pool first.",
    "oncall.html": b"<html><body><nav>menu</nav><main><h1>On call</h1><p>The pager rotates "
    b"every Monday at nine.</p></main></body></html>",
    "errors.csv": b"code,title,text\nERR-7731,Quota,Raise the tenant budget when ERR-7731 "
    b"appears.\nERR-1200,Timeout,Retry with backoff after ERR-1200.\n",
    "vacation.txt": b"Vacation requests go to the people team two weeks ahead.",
}


@dataclass
class Running:
    settings: Settings
    serde: AvroSerde
    worker: RagWorker
    services: KnowledgeServices

    def search(self, query: str, *, collection: str | None = None) -> list[str]:
        """Chunk ids, best first, as the acme developer sees them (empty before any index)."""
        rag = self.settings.rag
        if collection is not None:
            kb = KnowledgeBaseSettings(collection=collection)
            rag = rag.model_copy(update={"knowledge_bases": {KB: kb}})
        retriever = Retriever(
            store=self.services.store,
            embedder=self.services.embedder("all-MiniLM-L6-v2"),
            tokenizer=self.services.tokenizer,
            settings=rag,
        )
        try:
            result = retriever.search(query=query, knowledge_base=KB, caller=ACME)
        except CollectionNotFoundError:
            return []
        return [c.record.chunk_id for c in result.candidates]

    def indexed(self, doc_id: str) -> bool:
        return any(c.startswith(f"{doc_id}#") for c in self.search(doc_id))


@pytest.fixture(scope="module")
def running(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"r{run}."),
        worker=WorkerSettings(app_id=f"sluicegate-rag-{run}", metrics_port=None),
        rag=RagSettings(
            path=tmp_path_factory.mktemp("lancedb"),
            embed_batch_size=16,
            embed_batch_s=0.2,
            index_batch_size=200,
            index_batch_s=0.3,
        ),
    )
    ensure_topics(settings)
    serde = build_serde(settings)
    services = KnowledgeServices(settings.rag)
    services.embedder("all-MiniLM-L6-v2")  # load the model before the clock starts
    worker = RagWorker(settings=settings, serde=serde, services=services)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield Running(settings, serde, worker, services)
    finally:
        worker.stop()
        thread.join(60)


def submit(running: Running, name: str, data: bytes, **fields) -> list[str]:
    events = [
        submitted(doc, knowledge_base=KB, tenant_id="acme", producer="test", **fields)
        for doc in parse(data, source=name)
    ]
    for event in events:
        topic = running.settings.topic("documents")
        produce(running.settings, topic, event.doc_id.encode(), running.serde.encode(event))
    return [e.doc_id for e in events]


def wait_until(check, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_documents_of_every_format_become_searchable(running: Running) -> None:
    started = time.monotonic()
    files = {**FILES, "runbook.pdf": make_pdf(["Restart the broker with kafka.sh restart."])}
    doc_ids = {name: submit(running, name, data) for name, data in files.items()}
    assert doc_ids["errors.csv"] == ["errors.csv#0", "errors.csv#1"]  # a document per row
    every = [d for ids in doc_ids.values() for d in ids]
    wait_until(lambda: all(running.indexed(d) for d in every))
    elapsed = time.monotonic() - started
    stats = running.worker.stats
    assert stats.documents >= 6 and stats.indexed >= stats.chunks >= 6
    print(
        f"\n{len(every)} documents, {stats.chunks} chunks searchable in {elapsed:.1f}s "
        f"({len(every) / elapsed:.1f} docs/s, {stats.chunks / elapsed:.1f} chunks/s)"
    )
    best = {
        "canary pool traffic": "deploy.md#",
        "when does the pager rotate": "oncall.html#",  # the nav was dropped, <main> kept
        "ERR-7731": "errors.csv#0#",
        "vacation requests to the people team": "vacation.txt#",
        "restart the broker": "runbook.pdf#",
    }
    for query, prefix in best.items():
        assert running.search(query)[0].startswith(prefix), query


def test_a_bad_document_is_dead_lettered_and_the_loop_goes_on(running: Running) -> None:
    settings, serde = running.settings, running.serde
    topic = settings.topic("documents")
    (good,) = parse(b"The espresso machine is on floor three.", source="kitchen.txt")
    bad = submitted(good, knowledge_base=KB, tenant_id="acme", producer="test").model_copy(
        update={"doc_id": "bad-acl.txt", "acl": ["admins"]}  # a foreign producer's mistake
    )
    produce(settings, topic, b"bad-acl.txt", serde.encode(bad))
    produce(settings, topic, b"garbage", b"\x00\x00\x00\x00\x07not avro")
    submit(running, "kitchen.txt", b"The espresso machine is on floor three.")

    _key, value = wait_for(settings, f"{topic}.dlq", lambda key, _v: key == b"bad-acl.txt")
    letter = serde.decode(value)
    assert isinstance(letter, DeadLetter) and letter.stage == "rag.chunk"
    assert letter.error_class == "InvalidDocumentError" and "admins" in letter.error_message
    assert letter.original_value == serde.encode(bad)
    _key, value = wait_for(settings, f"{topic}.dlq", lambda key, _v: key == b"garbage")
    assert serde.decode(value).error_class in {"UnknownSchemaError", "SerializationError"}
    wait_until(lambda: any(c.startswith("kitchen.txt") for c in running.search("espresso")))


def test_a_resubmitted_document_replaces_its_chunks(running: Running) -> None:
    long = "\n\n".join(f"Paragraph {i} about the staging cluster rollout. " * 6 for i in range(8))
    submit(running, "staging.md", long.encode())
    wait_until(lambda: len(staging(running)) > 1)
    submit(running, "staging.md", b"The staging cluster is retired.")
    wait_until(lambda: staging(running) == ["staging.md#c0"])


def staging(running: Running, collection: str | None = None) -> list[str]:
    hits = running.search("staging cluster", collection=collection)
    return [c for c in hits if c.startswith("staging.md#")]


def test_reindex_by_replay_gives_the_same_results(running: Running) -> None:
    wait_until(lambda: running.indexed("kitchen.txt") and staging(running) == ["staging.md#c0"])
    queries = ["canary pool traffic", "ERR-1200 timeout", "pager", "espresso", "staging"]
    live = {q: running.search(q) for q in queries}
    report = run_reindex(
        running.settings,
        running.serde,
        knowledge_base=KB,
        collection="handbook_v2",
        services=running.services,
    )
    assert report.records > 0 and report.documents >= 8 and report.run_id is None
    assert {q: running.search(q, collection="handbook_v2") for q in queries} == live

    again = run_reindex(
        running.settings,
        running.serde,
        knowledge_base=KB,
        collection="handbook_v3",
        source="chunks",
        services=running.services,
    )
    assert again.run_id and again.run_id.startswith("reembed-")
    assert {q: running.search(q, collection="handbook_v3") for q in queries} == live
    # The new vectors are on the log, marked with their run; the live index leaves them alone.
    wait_until(lambda: running.worker.stats.skipped.get("other_run", 0) >= again.records)


def delete(running: Running, doc_id: str) -> None:
    event = deleted(knowledge_base=KB, tenant_id="acme", doc_id=doc_id, producer="test")
    topic = running.settings.topic("documents")
    produce(running.settings, topic, doc_id.encode(), running.serde.encode(event))


def stored(running: Running, doc_id: str, collection: str = KB) -> list[str]:
    """The chunk ids of a document in a collection, whoever may read them."""
    wanted = [f"{doc_id}#{kind}{n}" for kind in "cp" for n in range(100)]
    records = running.services.store.fetch(
        collection, wanted, tenant_id="acme", where=SearchFilter.unrestricted()
    )
    return sorted(r.chunk_id for r in records)


def test_a_deleted_document_leaves_every_search_and_can_come_back(running: Running) -> None:
    submit(running, "zeppelin.md", b"The zeppelin hangar opens at dawn for inspections.")
    wait_until(lambda: running.indexed("zeppelin.md"))
    deletions = running.worker.stats.deletions
    delete(running, "zeppelin.md")
    wait_until(lambda: running.worker.stats.deletions > deletions)
    assert stored(running, "zeppelin.md") == []
    assert not any(c.startswith("zeppelin.md#") for c in running.search("zeppelin hangar"))
    keyword = running.services.store.keyword_search(
        KB, "zeppelin", top_k=10, where=SearchFilter.unrestricted()
    )
    assert [h.record.doc_id for h in keyword] == []

    # Uploaded and deleted at once: the deletion follows the chunks, so they never stay.
    submit(running, "flash.md", b"A flash notice about the zeppelin hangar roof.")
    delete(running, "flash.md")
    wait_until(lambda: running.worker.stats.deletions > deletions + 1)
    assert stored(running, "flash.md") == []

    # A later submission of the same id indexes again.
    submit(running, "zeppelin.md", b"The zeppelin hangar reopened after the inspection.")
    wait_until(lambda: stored(running, "zeppelin.md") == ["zeppelin.md#c0"])
    assert running.search("zeppelin hangar reopened")[0] == "zeppelin.md#c0"
    delete(running, "zeppelin.md")  # gone for good: the replays below must not bring it back
    wait_until(lambda: stored(running, "zeppelin.md") == [])


def test_replays_never_bring_a_deleted_document_back(running: Running) -> None:
    wait_until(lambda: stored(running, "zeppelin.md") == [] and stored(running, "flash.md") == [])
    from_vectors = run_reindex(
        running.settings,
        running.serde,
        knowledge_base=KB,
        collection="handbook_after_delete",
        services=running.services,
    )
    assert from_vectors.deleted >= 3 and from_vectors.skipped["deleted_later"] >= 3
    assert stored(running, "zeppelin.md", "handbook_after_delete") == []
    assert stored(running, "flash.md", "handbook_after_delete") == []
    assert stored(running, "kitchen.txt", "handbook_after_delete") == ["kitchen.txt#c0"]
    from_chunks = run_reindex(
        running.settings,
        running.serde,
        knowledge_base=KB,
        collection="handbook_after_delete_e",
        source="chunks",
        services=running.services,
    )
    assert stored(running, "zeppelin.md", "handbook_after_delete_e") == []
    assert from_chunks.skipped["deleted_later"] >= 3  # never embedded again


LONG = "\n\n".join(
    f"## Step {i}\n\n" + f"Step {i} of the failover drill moves the primary broker {i} racks. " * 5
    for i in range(6)
)


def test_rechunk_by_replay_changes_the_chunk_size_and_search_still_works(
    running: Running,
) -> None:
    submit(running, "drill.md", LONG.encode())
    wait_until(lambda: running.indexed("drill.md"))
    tokenizer = running.services.tokenizer
    before = stored(running, "drill.md")
    skipped = running.worker.stats.skipped.get("other_run", 0)
    report = run_rechunk(
        running.settings,
        running.serde,
        knowledge_base=KB,
        chunking=KnowledgeBaseSettings(chunk_tokens=40, min_chunk_tokens=0),
        collection="handbook_small",
        services=running.services,
    )
    assert report.run_id and report.run_id.startswith("rechunk-") and report.records > 0
    small = running.services.store.fetch(
        "handbook_small",
        [f"drill.md#c{n}" for n in range(100)],
        tenant_id="acme",
        where=SearchFilter.unrestricted(),
    )
    assert len(small) > len(before) >= 1
    assert all(tokenizer.count(r.text) <= 40 for r in small)
    assert max(tokenizer.count(r.text) for r in small) > 20  # packed, not split into words
    assert stored(running, "drill.md") == before  # the live collection is untouched
    assert stored(running, "zeppelin.md", "handbook_small") == []  # deletions honoured
    hits = running.search("failover drill primary broker racks", collection="handbook_small")
    assert hits[0].startswith("drill.md#c")
    assert running.search("espresso", collection="handbook_small")[0] == "kitchen.txt#c0"
    # Its vectors are on the log under its run; the live index leaves them alone.
    wait_until(lambda: running.worker.stats.skipped.get("other_run", 0) >= skipped + report.records)

    # Into the knowledge base's own collection: each document's chunks are replaced.
    again = run_rechunk(
        running.settings,
        running.serde,
        knowledge_base=KB,
        chunking=KnowledgeBaseSettings(chunk_tokens=40, min_chunk_tokens=0),
        services=running.services,
    )
    assert again.collection == KB
    live = running.services.store.fetch(
        KB,
        [f"drill.md#c{n}" for n in range(100)],
        tenant_id="acme",
        where=SearchFilter.unrestricted(),
    )
    assert sorted((r.chunk_id, r.text) for r in live) == sorted((r.chunk_id, r.text) for r in small)
    assert running.search("failover drill primary broker racks")[0].startswith("drill.md#c")
