"""Ingestion stages as plain functions: document → chunks → vectors → store operations."""

from __future__ import annotations

import numpy as np
import pytest

from sluicegate.connectors.document_parsers import ParsedDocument
from sluicegate.processors.chunking import RecursiveChunker, RegexTokenizer, build_chunker
from sluicegate.processors.ingestion import (
    ChunkStage,
    DeleteDocument,
    EmbeddingModel,
    EmbedStage,
    InvalidDocumentError,
    Upsert,
    deleted,
    index_plan,
    record_of,
    starts_document,
    submitted,
)
from sluicegate.schemas.models import (
    ChunkCreated,
    ChunkEmbedded,
    DocumentDeleted,
    DocumentSubmitted,
)
from sluicegate.settings import KnowledgeBaseSettings
from tests.builders import envelope
from tests.fakes.embedders import HashEmbedder

pytestmark = pytest.mark.unit

TOKENIZER = RegexTokenizer()
TEXT = "# Guide\n\nInstall the agent first.\n\n## Upgrade\n\nStop it, then replace the binary."


def parsed(text: str = TEXT, **fields) -> ParsedDocument:
    return ParsedDocument(
        doc_id=fields.pop("doc_id", "guide.md"),
        text=text,
        media_type="text/markdown",
        source_uri="guide.md",
        **fields,
    )


def document(text: str = TEXT, **fields) -> DocumentSubmitted:
    return submitted(
        parsed(text),
        knowledge_base=fields.pop("knowledge_base", "docs"),
        tenant_id="acme",
        producer="test",
        **fields,
    )


def chunk_stage(kb: KnowledgeBaseSettings | None = None) -> ChunkStage:
    settings = kb or KnowledgeBaseSettings(chunk_tokens=8, min_chunk_tokens=0)
    return ChunkStage(
        chunker_for=lambda _kb: build_chunker(settings, tokenizer=TOKENIZER),
        max_document_bytes=10_000,
    )


def test_submitted_carries_the_parse_and_the_caller_fields() -> None:
    doc = submitted(
        parsed(title="Guide", metadata={"lang": "en"}, page_starts=(0, 20)),
        knowledge_base="docs",
        tenant_id="acme",
        producer="cli",
        acl=[" role:ops ", "user:k1"],
        metadata={"team": "infra"},
    )
    assert (doc.doc_id, doc.knowledge_base, doc.tenant_id) == ("guide.md", "docs", "acme")
    assert doc.acl == ["role:ops", "user:k1"]
    assert doc.metadata == {"lang": "en", "team": "infra"}
    assert (doc.title, doc.media_type, doc.page_starts) == ("Guide", "text/markdown", [0, 20])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"acl": ["admins"]}, "bad_acl"),
        ({"knowledge_base": "no spaces"}, "bad_knowledge_base"),
        ({"max_bytes": 10}, "too_large"),
    ],
)
def test_submitted_refuses_what_the_pipeline_would(change: dict, reason: str) -> None:
    with pytest.raises(InvalidDocumentError) as refused:
        document(**change)
    assert refused.value.reason == reason


def test_chunks_carry_span_section_and_the_document_fields() -> None:
    doc = document(acl=["role:ops"], metadata={"team": "infra"}, title="Guide")
    emits = chunk_stage().run(doc)
    chunks = [e.event for e in emits]
    assert all(isinstance(c, ChunkCreated) for c in chunks) and len(chunks) >= 2
    assert {e.topic for e in emits} == {"chunks"} and {e.key for e in emits} == {"guide.md"}
    for i, c in enumerate(chunks):
        assert c.chunk_id == f"guide.md#c{i}" and c.ordinal == i
        assert c.text == TEXT[c.start : c.end] and c.tokens > 0
        assert (c.acl, c.title, c.metadata) == (["role:ops"], "Guide", {"team": "infra"})
        assert c.chunker.startswith("recursive:8:")
        assert c.request_id == doc.request_id and c.parent_span_id == doc.span_id
    assert chunks[-1].section == "Guide > Upgrade"


def test_hierarchical_parents_come_first() -> None:
    kb = KnowledgeBaseSettings(chunker="hierarchical", chunk_tokens=8, parent_tokens=20)
    chunks = [e.event for e in chunk_stage(kb).run(document())]
    parents = [c for c in chunks if c.is_parent]
    assert parents and chunks[: len(parents)] == parents
    assert all(c.parent_id in {p.chunk_id for p in parents} for c in chunks if not c.is_parent)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (lambda: document().model_copy(update={"acl": ["everyone"]}), "bad_acl"),
        (lambda: document().model_copy(update={"text": "  \n "}), "empty"),
        (lambda: document().model_copy(update={"text": "x" * 20_000}), "too_large"),
        (lambda: document().model_copy(update={"knowledge_base": "../etc"}), "bad_knowledge_base"),
    ],
)
def test_a_bad_document_from_any_producer_is_refused(doc, reason: str) -> None:
    with pytest.raises(InvalidDocumentError) as refused:
        chunk_stage().run(doc())
    assert refused.value.reason == reason


def created(chunk_id: str, text: str, *, kb: str = "docs", parent: bool = False, **fields):
    return ChunkCreated(
        **envelope(),
        doc_id=chunk_id.split("#")[0],
        chunk_id=chunk_id,
        knowledge_base=kb,
        ordinal=int(chunk_id.rsplit("#", 1)[1][1:]),
        text=text,
        is_parent=parent,
        **fields,
    )


def test_one_embedding_call_per_model_in_order_and_parents_pass_through() -> None:
    minilm, other = HashEmbedder(), HashEmbedder(model_name="e5", dimensions=32)
    models = {
        "docs": EmbeddingModel(minilm, "all-MiniLM-L6-v2", "sha256:abc"),
        "wiki": EmbeddingModel(minilm, "all-MiniLM-L6-v2", "sha256:abc"),
        "legal": EmbeddingModel(other, "e5", "api"),
    }
    stage = EmbedStage(model_for=models.__getitem__)
    chunks = [
        created("a#p0", "parent text", parent=True),
        created("a#c0", "alpha", parent_id="a#p0", acl=["role:ops"], title="A", start=3, end=8),
        created("b#c0", "beta", kb="legal"),
        created("c#c0", "gamma", kb="wiki"),
    ]
    emits = stage.run(chunks)
    assert sorted(minilm.calls) == [2] and other.calls == [1]  # docs + wiki share one call
    events = [e.event for e in emits]
    assert [e.chunk_id for e in events] == ["a#p0", "a#c0", "b#c0", "c#c0"]
    assert {e.topic for e in emits} == {"embeddings"}
    parent, child, legal, _ = events
    assert parent.vector == [] and len(child.vector) == 64 and len(legal.vector) == 32
    assert (child.embedding_model, child.embedding_model_version) == (
        "all-MiniLM-L6-v2",
        "sha256:abc",
    )
    assert (legal.embedding_model, legal.embedding_model_version) == ("e5", "api")
    assert (child.acl, child.title, child.start, child.end, child.parent_id) == (
        ["role:ops"], "A", 3, 8, "a#p0"
    )  # fmt: skip
    assert child.run_id is None


def test_a_replay_marks_its_vectors_with_its_run() -> None:
    model = EmbeddingModel(HashEmbedder(), "all-MiniLM-L6-v2")
    stage = EmbedStage(model_for=lambda _kb: model, run_id="reembed-1")
    assert stage.run([created("a#c0", "alpha")])[0].event.run_id == "reembed-1"


def embedded(chunk_id: str, *, parent: bool = False, **fields) -> ChunkEmbedded:
    fields.setdefault("knowledge_base", "docs")
    fields.setdefault("embedding_model", "m")
    return ChunkEmbedded(
        **envelope(run_id=fields.pop("run_id", None)),
        doc_id=chunk_id.split("#")[0],
        chunk_id=chunk_id,
        vector=[] if parent else [1.0, 0.0],
        ordinal=int(chunk_id.rsplit("#", 1)[1][1:]),
        text=f"text of {chunk_id}",
        **fields,
    )


def test_the_first_chunk_of_a_document_starts_it() -> None:
    assert starts_document(embedded("a#c0"))
    assert not starts_document(embedded("a#c1"))
    assert starts_document(embedded("a#p0", parent=True))
    assert not starts_document(embedded("a#c0", parent_id="a#p0"))  # parents went first


def test_index_plan_deletes_a_documents_old_chunks_before_its_new_ones() -> None:
    events = [
        embedded("a#c0"),
        embedded("a#c1"),
        embedded("b#c1"),  # the tail of a document whose start was in an earlier batch
        embedded("c#c0", knowledge_base="wiki"),
    ]
    plan = index_plan(events, collection_for=lambda kb: f"col_{kb}", model_for=lambda _kb: "m")
    ops = plan.operations
    assert ops[0] == DeleteDocument("col_docs", "acme", "a")
    assert isinstance(ops[1], Upsert) and ops[1].collection == "col_docs"
    assert [r.chunk_id for r in ops[1].records] == ["a#c0", "a#c1", "b#c1"]
    assert ops[2] == DeleteDocument("col_wiki", "acme", "c")
    assert [r.chunk_id for r in ops[3].records] == ["c#c0"] and plan.records == 4


def test_index_plan_leaves_out_other_runs_models_and_knowledge_bases() -> None:
    events = [
        embedded("a#c0"),
        embedded("b#c0", run_id="reembed-1"),
        embedded("c#c0", embedding_model="old-model"),
        embedded("d#p0", parent=True, embedding_model="old-model"),  # no vector: kept
        embedded("e#c0", knowledge_base="other"),
    ]
    plan = index_plan(
        events,
        collection_for=lambda kb: kb,
        model_for=lambda _kb: "m",
        knowledge_bases=["docs"],
    )
    kept = [r.chunk_id for op in plan.operations if isinstance(op, Upsert) for r in op.records]
    assert kept == ["a#c0", "d#p0"]
    assert plan.skipped == {"other_run": 1, "other_model": 1, "other_knowledge_base": 1}
    replay = index_plan(
        events, collection_for=lambda kb: kb, model_for=lambda _kb: "m", run_id="reembed-1"
    )
    assert [
        r.chunk_id for op in replay.operations if isinstance(op, Upsert) for r in op.records
    ] == ["b#c0"]


def test_record_of_an_embedded_chunk() -> None:
    record = record_of(embedded("a#c2", acl=["role:ops"], section="S", metadata={"k": "v"}))
    assert record.chunk_id == "a#c2" and record.doc_id == "a" and record.tenant_id == "acme"
    assert np.allclose(record.vector, [1.0, 0.0]) and record.acl == ("role:ops",)
    assert record.readers == frozenset({"acme/role:ops"}) and record.metadata == {"k": "v"}
    assert record_of(embedded("a#p0", parent=True)).is_parent


def test_the_same_document_gives_the_same_chunk_ids() -> None:
    chunker = RecursiveChunker(tokenizer=TOKENIZER, chunk_tokens=8)
    stage = ChunkStage(chunker_for=lambda _kb: chunker)
    first = [(e.event.chunk_id, e.event.text) for e in stage.run(document())]
    again = [(e.event.chunk_id, e.event.text) for e in stage.run(document())]
    assert first == again


# -- deletions ---------------------------------------------------------------------------------


def deletion(doc_id: str = "guide.md", **fields) -> DocumentDeleted:
    fields.setdefault("knowledge_base", "docs")
    return deleted(tenant_id="acme", doc_id=doc_id, producer="test", requested_by="k1", **fields)


def test_a_deletion_names_its_tenant_document_and_caller() -> None:
    event = deletion()
    assert (event.tenant_id, event.doc_id, event.knowledge_base) == ("acme", "guide.md", "docs")
    assert event.requested_by == "k1" and event.run_id is None
    with pytest.raises(InvalidDocumentError):
        deletion(knowledge_base="bad name")
    with pytest.raises(InvalidDocumentError):
        deletion(doc_id=" ")


def test_the_chunk_and_embed_stages_forward_a_deletion_in_its_place() -> None:
    gone = deletion("b")
    (forwarded,) = chunk_stage().run(gone)
    assert (forwarded.topic, forwarded.key) == ("chunks", "b")
    on_chunks = forwarded.event
    assert isinstance(on_chunks, DocumentDeleted) and on_chunks.doc_id == "b"
    assert on_chunks.parent_span_id == gone.span_id and on_chunks.producer == "rag.chunk"

    embedder = HashEmbedder()
    model = EmbeddingModel(embedder, "all-MiniLM-L6-v2")
    items = [created("a#c0", "alpha"), on_chunks, created("c#c0", "gamma")]
    emits = EmbedStage(model_for=lambda _kb: model).run(items)
    assert embedder.calls == [2]  # the deletion does not split the batch
    assert [type(e.event).__name__ for e in emits] == [
        "ChunkEmbedded", "DocumentDeleted", "ChunkEmbedded"
    ]  # fmt: skip
    assert {e.topic for e in emits} == {"embeddings"} and emits[1].key == "b"
    assert emits[1].event.run_id is None
    replayed = EmbedStage(model_for=lambda _kb: model, run_id="rechunk-1").run([on_chunks])
    assert replayed[0].event.run_id == "rechunk-1"


def test_index_plan_applies_a_deletion_between_the_upserts_around_it() -> None:
    gone = deletion("a").model_copy(update={"knowledge_base": "docs"})
    events = [embedded("a#c0"), embedded("a#c1"), gone, embedded("b#c0")]
    plan = index_plan(events, collection_for=lambda kb: kb, model_for=lambda _kb: "m")
    assert plan.operations == [
        DeleteDocument("docs", "acme", "a"),
        Upsert("docs", plan.operations[1].records),
        DeleteDocument("docs", "acme", "a"),
        DeleteDocument("docs", "acme", "b"),
        Upsert("docs", plan.operations[4].records),
    ]
    assert [r.chunk_id for r in plan.operations[1].records] == ["a#c0", "a#c1"]
    assert plan.deletions == 1


def test_live_deletions_apply_to_replays_and_a_replays_copies_not_to_the_live_index() -> None:
    live = deletion("a")
    copy = live.model_copy(update={"run_id": "reembed-1"})
    other = live.model_copy(update={"run_id": "reembed-2"})
    elsewhere = deletion("a", knowledge_base="wiki")

    def deletes(run_id: str | None) -> int:
        plan = index_plan(
            [live, copy, other, elsewhere],
            collection_for=lambda kb: kb,
            model_for=lambda _kb: "m",
            run_id=run_id,
            knowledge_bases=["docs"],
        )
        return plan.deletions

    assert deletes(None) == 1  # the live index: only the live deletion
    assert deletes("reembed-1") == 2  # a replay: the live one and its own copy
