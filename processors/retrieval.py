"""Retrieval: hybrid search, fusion, permission filtering, context assembly and citations.

`Retriever.run` is what enrichment (the admission agent) and `/v1/knowledge/{kb}/search` call:

1. **Route** the query (`route_query`): identifier-like or quoted queries go to BM25 only, long
   plain-language questions to dense only, everything else to both (`RagSettings.routing`
   picks a mode for all queries, or `auto` for this per-query choice).
2. **Search** the knowledge base's collection densely (cosine over MiniLM vectors) and by BM25,
   `candidates` hits each, with the caller's permission filter pushed into the store.
3. **Re-check** every hit against the caller (`SearchFilter.admits`): defence in depth, so a
   store bug or a stale index cannot leak a chunk. The same holds for parents (below).
4. **Fuse** the two rankings: reciprocal-rank fusion, `Σ w / (k + rank)` (robust to the two
   score scales; the default), or weighted fusion of min-max-normalised scores, `w_d · dense +
   w_k · bm25` (70/30 by default). Both use `dense_weight` / `keyword_weight`.
5. **Rerank** the fused candidates (processors/rerank.py), keep `top_k`.
6. **Assemble** the context within a token budget: greedily by score; a hierarchical child is
   replaced by its parent when the caller may read the parent (else the child stays — a parent
   is never a way around an ACL), parents are deduplicated, and a parent that does not fit
   falls back to the child. Each block is numbered `[n]`; citations are numbered in the order
   their blocks appear in the context, with title, URI, chunk ids and character spans.

Pure apart from the two ports it is given (a `VectorStore` and an embedder), so it runs the
same in the agent, the bridge, the CLI and the benchmarks.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from sluicegate.connectors.vector_store import (
    Caller,
    ChunkRecord,
    Hit,
    SearchFilter,
    VectorStore,
)
from sluicegate.processors.chunking import Chunk, TextEmbedder, Tokenizer

if TYPE_CHECKING:
    from sluicegate.settings import RagSettings

log = logging.getLogger(__name__)

Mode = Literal["keyword", "semantic", "hybrid"]
Routing = Literal["auto", "keyword", "semantic", "hybrid"]

__all__ = [
    "Caller",
    "Candidate",
    "Citation",
    "Reranker",
    "RetrievalResult",
    "Retriever",
    "assemble_context",
    "records_for",
    "route_query",
    "rrf_fuse",
    "weighted_fuse",
]


# -- routing ----------------------------------------------------------------------------------

_IDENTIFIER = re.compile(
    r"""(
        \w*\d\w*[-_./:]\w+            # ERR-7731, v2.4, 10.0.0.1, a/b:c
      | \w+[-_./:]\w*\d\w*
      | \w+(?:[./:]\w+){2,}           # max.poll.interval.ms, a/b/c, host:port:x
      | [a-z]+[A-Z]\w*                # camelCase
      | \w+_\w+                       # snake_case
      | \b[A-Z]{2,}\d*\b              # ACRONYMS, HTTP2
      | \w*\d{3,}\w*                  # long numbers, codes
    )""",
    re.VERBOSE,
)
_QUESTION = re.compile(
    r"^(how|why|what|which|who|when|where|explain|describe|can|could|should|is|are|does|do)\b",
    re.IGNORECASE,
)


def route_query(query: str) -> Mode:
    """keyword / semantic / hybrid from surface features of the query.

    Identifiers, error codes and quoted phrases are what embeddings blur and BM25 nails: a
    short query made of them goes to BM25 alone. A long question in plain words is what
    embeddings are for. Everything in between, and anything mixed, gets both.
    """
    words = query.split()
    if not words:
        return "hybrid"
    identifiers = sum(1 for w in words if _IDENTIFIER.search(w))
    if '"' in query or (identifiers and len(words) <= 4):
        return "keyword"
    if not identifiers and len(words) >= 8 and _QUESTION.match(query.strip()):
        return "semantic"
    return "hybrid"


# -- fusion -----------------------------------------------------------------------------------


def rrf_fuse(
    rankings: Sequence[Sequence[str]], *, k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: `score(d) = Σ_i w_i / (k + rank_i(d))`, ranks from 1.

    Ties keep the order in which ids were first seen (the first ranking wins), so the result is
    deterministic.
    """
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, key in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    order = {key: i for i, key in enumerate(scores)}
    return sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))


def _min_max(scored: Sequence[tuple[str, float]]) -> dict[str, float]:
    if not scored:
        return {}
    values = [s for _, s in scored]
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return {key: 1.0 for key, _ in scored}
    return {key: (s - low) / (high - low) for key, s in scored}


def weighted_fuse(
    scored: Sequence[Sequence[tuple[str, float]]], *, weights: Sequence[float]
) -> list[tuple[str, float]]:
    """Weighted sum of min-max-normalised scores; a list that misses an id contributes 0."""
    scores: dict[str, float] = {}
    for ranking, weight in zip(scored, weights, strict=True):
        for key, value in _min_max(ranking).items():
            scores[key] = scores.get(key, 0.0) + weight * value
    order = {key: i for i, key in enumerate(scores)}
    return sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A retrieved chunk with its fused score and what each retriever said about it."""

    record: ChunkRecord
    score: float
    dense_score: float | None = None
    keyword_score: float | None = None
    dense_rank: int | None = None
    keyword_rank: int | None = None


@dataclass(frozen=True, slots=True)
class Citation:
    """A numbered source of the context: `[number]` marks its block in the context text."""

    number: int
    doc_id: str
    chunk_ids: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    score: float
    title: str | None = None
    source_uri: str | None = None
    section: str = ""


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    query: str
    knowledge_base: str
    mode: Mode
    candidates: list[Candidate]
    context: str = ""
    citations: list[Citation] = field(default_factory=list)
    context_tokens: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


class Reranker(Protocol):
    """Re-scores fused candidates for a query; returns them best first."""

    def run(
        self, *, query: str, query_vector: np.ndarray | None, candidates: Sequence[Candidate]
    ) -> list[Candidate]: ...


# -- context assembly -------------------------------------------------------------------------


def _header(record: ChunkRecord, number: int) -> str:
    name = record.title or record.source_uri or record.doc_id
    return f"[{number}] {name}" + (f" — {record.section}" if record.section else "")


def assemble_context(
    candidates: Sequence[Candidate],
    *,
    parents: Mapping[str, ChunkRecord],
    tokenizer: Tokenizer,
    budget_tokens: int,
) -> tuple[str, list[Citation], int]:
    """Greedy by score: each candidate's unit (its parent when given, else itself) is added
    when its numbered block still fits the budget; units are never repeated. `parents` maps
    a record `key` to a parent the caller may read. Returns (context, citations, tokens)."""
    blocks: list[str] = []
    citations: list[Citation] = []
    unit_of: dict[str, int] = {}  # unit key → index into citations
    used = 0
    for candidate in sorted(candidates, key=lambda c: -c.score):
        child = candidate.record
        parent = parents.get(f"{child.tenant_id}/{child.parent_id}") if child.parent_id else None
        for unit in (parent, child) if parent is not None else (child,):
            if unit.key in unit_of:  # the parent is in already: cite this child too
                i = unit_of[unit.key]
                cited = citations[i]
                if child.chunk_id not in cited.chunk_ids:
                    citations[i] = replace(
                        cited,
                        chunk_ids=(*cited.chunk_ids, child.chunk_id),
                        spans=(*cited.spans, (child.start, child.end)),
                    )
                break
            number = len(citations) + 1
            block = f"{_header(unit, number)}\n{unit.text}"
            cost = tokenizer.count(block)
            if used + cost > budget_tokens:
                continue  # a parent that does not fit falls back to the child
            blocks.append(block)
            used += cost
            spans = [(unit.start, unit.end)]
            if unit is not child:
                spans.append((child.start, child.end))
            unit_of[unit.key] = len(citations)
            citations.append(
                Citation(
                    number=number,
                    doc_id=unit.doc_id,
                    chunk_ids=(child.chunk_id,)
                    if unit is child
                    else (unit.chunk_id, child.chunk_id),
                    spans=tuple(spans),
                    score=candidate.score,
                    title=unit.title,
                    source_uri=unit.source_uri,
                    section=unit.section,
                )
            )
            break
    context = "\n\n".join(blocks)
    return context, citations, tokenizer.count(context) if context else 0


# -- the retriever ----------------------------------------------------------------------------


class Retriever:
    """Hybrid retrieval over one store, for callers identified by a `Caller`."""

    def __init__(
        self,
        *,
        store: VectorStore,
        embedder: TextEmbedder,
        tokenizer: Tokenizer,
        settings: RagSettings,
        reranker: Reranker | None = None,
        executor: Executor | None = None,
    ) -> None:
        """`executor`, when given, runs the BM25 search while the query is embedded and
        searched densely (LanceDB and Weaviate release the GIL), so hybrid costs about the
        slower of the two rather than their sum."""
        self._store = store
        self._embedder = embedder
        self._tokenizer = tokenizer
        self._settings = settings
        self._reranker = reranker
        self._executor = executor

    def run(
        self,
        *,
        query: str,
        knowledge_base: str,
        caller: Caller,
        top_k: int | None = None,
        mode: Routing | None = None,
        budget_tokens: int | None = None,
        doc_ids: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> RetrievalResult:
        """Search, fuse, rerank and assemble the context for one query."""
        result = self.search(
            query=query,
            knowledge_base=knowledge_base,
            caller=caller,
            top_k=top_k,
            mode=mode,
            doc_ids=doc_ids,
            metadata=metadata,
        )
        started = time.perf_counter()
        where = SearchFilter.for_caller(caller)
        parents = self._parents(self._settings.collection(knowledge_base), result.candidates, where)
        context, citations, tokens = assemble_context(
            result.candidates,
            parents=parents,
            tokenizer=self._tokenizer,
            budget_tokens=budget_tokens or self._settings.context_token_budget,
        )
        timings = {**result.timings_ms, "assemble": _ms(started)}
        return replace(
            result,
            context=context,
            citations=citations,
            context_tokens=tokens,
            timings_ms=timings,
        )

    def search(
        self,
        *,
        query: str,
        knowledge_base: str,
        caller: Caller,
        top_k: int | None = None,
        mode: Routing | None = None,
        doc_ids: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> RetrievalResult:
        """The ranked chunks only (no context): what direct search returns."""
        settings = self._settings
        collection = settings.collection(knowledge_base)
        chosen = mode or settings.routing
        resolved: Mode = route_query(query) if chosen == "auto" else chosen
        where = SearchFilter.for_caller(caller, doc_ids=doc_ids, metadata=metadata)
        timings: dict[str, float] = {}
        query_vector: np.ndarray | None = None
        dense: list[Hit] = []
        keyword: list[Hit] = []

        def keyword_search() -> tuple[list[Hit], float]:
            started = time.perf_counter()
            hits = self._store.keyword_search(
                collection, query, top_k=settings.candidates, where=where
            )
            return self._admitted(hits, where), _ms(started)

        pending: Future[tuple[list[Hit], float]] | None = None
        if resolved == "hybrid" and self._executor is not None:
            pending = self._executor.submit(keyword_search)
        if resolved in ("semantic", "hybrid"):
            started = time.perf_counter()
            query_vector = np.asarray(self._embedder.embed([query])[0], dtype=np.float32)
            timings["embed"] = _ms(started)
            started = time.perf_counter()
            dense = self._admitted(
                self._store.dense_search(
                    collection, query_vector, top_k=settings.candidates, where=where
                ),
                where,
            )
            timings["dense"] = _ms(started)
        if pending is not None:
            keyword, timings["keyword"] = pending.result()
        elif resolved in ("keyword", "hybrid"):
            keyword, timings["keyword"] = keyword_search()
        started = time.perf_counter()
        candidates = self._fuse(dense, keyword)
        timings["fuse"] = _ms(started)
        if self._reranker is not None and candidates:
            started = time.perf_counter()
            candidates = self._reranker.run(
                query=query, query_vector=query_vector, candidates=candidates
            )
            timings["rerank"] = _ms(started)
        return RetrievalResult(
            query=query,
            knowledge_base=knowledge_base,
            mode=resolved,
            candidates=candidates[: top_k or settings.top_k],
            timings_ms=timings,
        )

    @staticmethod
    def _admitted(hits: list[Hit], where: SearchFilter) -> list[Hit]:
        kept = [h for h in hits if where.admits(h.record)]
        if len(kept) != len(hits):
            log.error(
                "vector store returned %d chunks the caller may not read", len(hits) - len(kept)
            )
        return kept

    def _fuse(self, dense: list[Hit], keyword: list[Hit]) -> list[Candidate]:
        s = self._settings
        by_key: dict[str, ChunkRecord] = {}
        for hit in (*dense, *keyword):
            by_key.setdefault(hit.record.key, hit.record)
        dense_of = {h.record.key: h for h in dense}
        keyword_of = {h.record.key: h for h in keyword}
        lists = [(dense, s.dense_weight), (keyword, s.keyword_weight)]
        lists = [(hits, w) for hits, w in lists if hits]
        if len(lists) == 1:
            fused = [(h.record.key, h.score) for h in lists[0][0]]
        elif s.fusion == "rrf":
            fused = rrf_fuse(
                [[h.record.key for h in hits] for hits, _ in lists],
                k=s.rrf_k,
                weights=[w for _, w in lists],
            )
        else:
            fused = weighted_fuse(
                [[(h.record.key, h.score) for h in hits] for hits, _ in lists],
                weights=[w for _, w in lists],
            )
        out = []
        for key, score in fused:
            d, k = dense_of.get(key), keyword_of.get(key)
            out.append(
                Candidate(
                    record=by_key[key],
                    score=score,
                    dense_score=d.score if d else None,
                    keyword_score=k.score if k else None,
                    dense_rank=d.rank if d else None,
                    keyword_rank=k.rank if k else None,
                )
            )
        return out

    def _parents(
        self, collection: str, candidates: Sequence[Candidate], where: SearchFilter
    ) -> dict[str, ChunkRecord]:
        wanted: dict[str, list[str]] = {}
        for c in candidates:
            if c.record.parent_id:
                wanted.setdefault(c.record.tenant_id, []).append(c.record.parent_id)
        parents: dict[str, ChunkRecord] = {}
        for tenant_id, ids in wanted.items():
            for record in self._store.fetch(collection, ids, tenant_id=tenant_id, where=where):
                if where.admits(record):  # never widen access through a parent
                    parents[record.key] = record
        return parents


# -- indexing ---------------------------------------------------------------------------------


def records_for(
    chunks: Sequence[Chunk],
    vectors: Sequence[np.ndarray] | np.ndarray,
    *,
    tenant_id: str,
    acl: Sequence[str] = (),
    title: str | None = None,
    source_uri: str | None = None,
    metadata: Mapping[str, str] | None = None,
    embedding_model: str = "",
) -> list[ChunkRecord]:
    """A document's chunks as store records: what the indexing stage upserts.

    `vectors` are aligned with the chunks that are not parents (parents are stored without a
    vector, never searched). Document-level fields (ACL, title, URI, metadata) are copied to
    every chunk, so each chunk is self-sufficient for filtering and citing.
    """
    searchable = [c for c in chunks if not c.is_parent]
    if len(vectors) != len(searchable):
        raise ValueError(f"{len(vectors)} vectors for {len(searchable)} chunks")
    vector_of = {
        c.chunk_id: np.asarray(v, dtype=np.float32)
        for c, v in zip(searchable, vectors, strict=True)
    }
    return [
        ChunkRecord(
            chunk_id=c.chunk_id,
            doc_id=c.doc_id,
            tenant_id=tenant_id,
            text=c.text,
            vector=vector_of.get(c.chunk_id),
            acl=tuple(acl),
            title=title,
            source_uri=source_uri,
            section=c.section,
            ordinal=c.ordinal,
            start=c.start,
            end=c.end,
            parent_id=c.parent_id,
            metadata=dict(metadata or {}),
            embedding_model=embedding_model,
        )
        for c in chunks
    ]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
