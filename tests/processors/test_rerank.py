"""The offline feature-blend reranker: its features and what they change."""

from __future__ import annotations

import numpy as np
import pytest

from sluicegate.connectors.vector_store import ChunkRecord
from sluicegate.processors.rerank import FeatureBlendReranker, build_reranker, term_features
from sluicegate.processors.retrieval import Candidate

pytestmark = pytest.mark.unit


class AxisEmbedder:
    """'kettle' texts on one axis, everything else on another; counts its calls."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        rows = [[1.0, 0.0] if "kettle" in t.lower() else [0.0, 1.0] for t in texts]
        return np.asarray(rows, dtype=np.float32)


def candidate(chunk_id: str, text: str, score: float, vector, keyword: float | None = None):
    record = ChunkRecord(
        chunk_id=chunk_id,
        doc_id=chunk_id,
        tenant_id="acme",
        text=text,
        vector=None if vector is None else np.asarray(vector, dtype=np.float32),
    )
    return Candidate(record=record, score=score, keyword_score=keyword)


def test_term_features_by_hand() -> None:
    coverage, proximity = term_features("descale kettle vinegar", "Use vinegar to descale it.")
    assert coverage == pytest.approx(2 / 3)  # descale, vinegar; not kettle
    assert proximity == 0.0  # neither (descale, kettle) nor (kettle, vinegar) is adjacent
    coverage, proximity = term_features("the limescale filter", "A limescale filter, blocked.")
    assert (coverage, proximity) == (1.0, 1.0)  # "the" is a stop word
    assert term_features("the of and", "anything") == (0.0, 0.0)


def test_a_semantically_close_keyword_only_hit_moves_up() -> None:
    # Fusion put `lexical` first; `kettle` was found by BM25 only, so fusion never saw its
    # cosine, which the reranker computes from the stored vector.
    candidates = [
        candidate("lexical", "descale descale descale the toaster", 0.030, [0, 1], keyword=9.0),
        candidate("kettle", "how to descale a kettle", 0.016, [1, 0], keyword=3.0),
        candidate("other", "unrelated toaster crumbs", 0.015, [0, 1]),
    ]
    reranked = FeatureBlendReranker(embedder=AxisEmbedder()).run(
        query="descale kettle", query_vector=np.asarray([1.0, 0.0]), candidates=candidates
    )
    assert [c.record.chunk_id for c in reranked] == ["kettle", "lexical", "other"]
    assert reranked[0].score > reranked[1].score > reranked[2].score
    assert reranked[0].keyword_score == 3.0  # everything but the score is kept


def test_the_query_and_vectorless_records_are_embedded_in_one_batch() -> None:
    embedder = AxisEmbedder()
    candidates = [
        candidate("a", "kettle notes", 0.5, None),
        candidate("b", "toaster notes", 0.4, [0, 1]),
    ]
    reranked = FeatureBlendReranker(embedder=embedder).run(
        query="kettle", query_vector=None, candidates=candidates
    )
    assert embedder.batches == [["kettle", "kettle notes"]]
    assert reranked[0].record.chunk_id == "a"


def test_features_are_inspectable_and_weights_checked() -> None:
    reranker = FeatureBlendReranker(embedder=AxisEmbedder())
    features = reranker.features(
        query="kettle",
        query_vector=np.asarray([1.0, 0.0]),
        candidates=[candidate("a", "kettle", 0.2, [1, 0], keyword=2.0)],
    )
    assert features == {
        "dense": [pytest.approx(1.0)],
        "bm25": [2.0],
        "coverage": [1.0],
        "proximity": [1.0],
        "fused": [0.2],
    }
    with pytest.raises(ValueError, match="unknown reranker features"):
        FeatureBlendReranker(embedder=AxisEmbedder(), weights={"colbert": 1.0})
    assert reranker.run(query="x", query_vector=None, candidates=[]) == []


def test_only_the_dense_feature_reproduces_a_dense_ranking() -> None:
    candidates = [
        candidate("far", "x", 0.9, [0.0, 1.0]),
        candidate("near", "y", 0.1, [1.0, 0.0]),
    ]
    reranked = FeatureBlendReranker(embedder=AxisEmbedder(), weights={"dense": 1.0}).run(
        query="q", query_vector=np.asarray([1.0, 0.0]), candidates=candidates
    )
    assert [c.record.chunk_id for c in reranked] == ["near", "far"]


def test_build_reranker() -> None:
    assert build_reranker("none", embedder=AxisEmbedder()) is None
    assert isinstance(build_reranker("blend", embedder=AxisEmbedder()), FeatureBlendReranker)
    with pytest.raises(ValueError):
        build_reranker("cross-encoder", embedder=AxisEmbedder())
