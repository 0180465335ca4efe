"""Reranking the fused candidates — honestly, without a cross-encoder.

A cross-encoder (query and passage read together by one transformer, e.g. ms-marco-MiniLM)
is the usual reranker. None installs offline here: flashrank's wheel (14 KB, checked) downloads
its ONNX model from the Hugging Face hub at first use, the sentence-transformers rerankers do
the same, and a search of the PyPI package lists (names and summaries) found no package that
ships a passage-reranking cross-encoder's weights. So the reranker here is
`FeatureBlendReranker` (`RagSettings.reranker = "blend"`), a transparent linear blend of
features that fusion alone does not use well:

- **dense**: cosine similarity of the query and the chunk with the MiniLM bi-encoder, computed
  for *every* candidate from its stored vector — fusion only knows it for the chunks the dense
  retriever happened to return, so a BM25-only hit gets its semantic score here;
- **bm25**: the store's BM25 score, min-max normalised over the candidates (0 when absent);
- **coverage**: the share of the query's distinct content terms found in the chunk, which BM25
  under-rewards when one frequent term dominates;
- **proximity**: the share of the query's adjacent term pairs that occur adjacently in the
  chunk (a cheap phrase signal).

Each feature is min-max normalised over the candidate set and blended with `weights`; the
fused score is kept as a small tie-breaking prior. It is a hand-set heuristic, not a learned
model, and its measured effect is mixed (docs/rag.md: better on the small labelled set, neutral
on Cranfield), which is why it is off by default. A real cross-encoder plugs in behind the same
`Reranker` protocol (processors/retrieval.py) when a deployment can load one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import pairwise

import numpy as np

from sluicegate.connectors.vector_store import keyword_terms
from sluicegate.processors.chunking import TextEmbedder
from sluicegate.processors.retrieval import Candidate

DEFAULT_WEIGHTS: Mapping[str, float] = {
    "dense": 0.45,
    "bm25": 0.2,
    "coverage": 0.15,
    "proximity": 0.05,
    "fused": 0.15,
}


def _normalised(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return array
    low, high = float(array.min()), float(array.max())
    if high - low < 1e-12:
        return np.ones_like(array) if high > 0 else np.zeros_like(array)
    return (array - low) / (high - low)


def term_features(query: str, text: str) -> tuple[float, float]:
    """(coverage, proximity) of the query's content terms in `text`."""
    wanted = keyword_terms(query)
    if not wanted:
        return 0.0, 0.0
    words = keyword_terms(text)
    present = set(words)
    distinct = set(wanted)
    coverage = sum(1 for t in distinct if t in present) / len(distinct)
    pairs = set(pairwise(wanted))
    if not pairs:
        return coverage, coverage
    adjacent = set(pairwise(words))
    return coverage, sum(1 for p in pairs if p in adjacent) / len(pairs)


class FeatureBlendReranker:
    """MiniLM cosine + BM25 + term coverage + proximity, blended linearly (see module doc)."""

    def __init__(
        self, *, embedder: TextEmbedder, weights: Mapping[str, float] | None = None
    ) -> None:
        self._embedder = embedder
        self._weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = set(self._weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown reranker features {sorted(unknown)}")

    def run(
        self, *, query: str, query_vector: np.ndarray | None, candidates: Sequence[Candidate]
    ) -> list[Candidate]:
        if not candidates:
            return []
        features = self.features(query=query, query_vector=query_vector, candidates=candidates)
        score = sum(
            self._weights.get(name, 0.0) * _normalised(values) for name, values in features.items()
        )
        order = sorted(range(len(candidates)), key=lambda i: (-score[i], i))
        return [replace(candidates[i], score=float(score[i])) for i in order]

    def features(
        self, *, query: str, query_vector: np.ndarray | None, candidates: Sequence[Candidate]
    ) -> dict[str, list[float]]:
        """The raw feature values per candidate (before normalisation), for inspection."""
        dense = self._cosines(query, query_vector, candidates)
        terms = [term_features(query, c.record.text) for c in candidates]
        return {
            "dense": dense,
            "bm25": [c.keyword_score or 0.0 for c in candidates],
            "coverage": [t[0] for t in terms],
            "proximity": [t[1] for t in terms],
            "fused": [c.score for c in candidates],
        }

    def _cosines(
        self, query: str, query_vector: np.ndarray | None, candidates: Sequence[Candidate]
    ) -> list[float]:
        missing = [i for i, c in enumerate(candidates) if c.record.vector is None]
        vectors: list[np.ndarray | None] = [c.record.vector for c in candidates]
        texts = [query] if query_vector is None else []
        texts += [candidates[i].record.text for i in missing]
        if texts:
            embedded = self._embedder.embed(texts)
            if query_vector is None:
                query_vector, embedded = embedded[0], embedded[1:]
            for i, row in zip(missing, embedded, strict=True):
                vectors[i] = row
        assert query_vector is not None
        q = np.asarray(query_vector, dtype=np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        out = []
        for vector in vectors:
            v = np.asarray(vector, dtype=np.float32)
            out.append(float(v @ q / max(float(np.linalg.norm(v)), 1e-12)))
        return out


def build_reranker(kind: str, *, embedder: TextEmbedder) -> FeatureBlendReranker | None:
    """The configured reranker (`RagSettings.reranker`): `blend`, or None for `none`."""
    if kind == "none":
        return None
    if kind == "blend":
        return FeatureBlendReranker(embedder=embedder)
    raise ValueError(f"unknown reranker {kind!r}")
