"""Few-shot selection: first k, similarity with an injected embedder, caching, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from sluicegate.processors.prompt_fewshot import (
    Example,
    ExampleEmbeddings,
    FewShotConfig,
    example_messages,
    parse_few_shot,
    select_examples,
)
from sluicegate.processors.prompt_templates import PromptInvalidError
from tests.fakes.embedders import HashEmbedder

pytestmark = pytest.mark.unit

EXAMPLES = [
    {"input": "refund my order please", "output": "Refunds take 5 days."},
    {"input": "reset my password", "output": "Use the reset link."},
    {"input": "where is my parcel", "output": "Track it online."},
    {"input": "cancel my subscription", "output": "Settings → Billing."},
]


def config(select: str = "similarity", k: int = 2) -> FewShotConfig:
    parsed = parse_few_shot({"examples": EXAMPLES, "k": k, "select": select})
    assert parsed is not None
    return parsed


def test_parse_checks_the_shape() -> None:
    assert config().k == 2 and config().examples[0] == Example(**EXAMPLES[0])
    assert parse_few_shot(None) is None and parse_few_shot({"examples": []}) is None
    for bad in (
        {"examples": [{"input": "a"}]},
        {"examples": EXAMPLES, "k": 0},
        {"examples": EXAMPLES, "k": True},
        {"examples": EXAMPLES, "select": "random"},
        {"examples": EXAMPLES, "order": "asc"},
    ):
        with pytest.raises(PromptInvalidError):
            parse_few_shot(bad)


def test_first_takes_the_first_k() -> None:
    chosen = select_examples(config("first"), "password", embed=HashEmbedder().embed)
    assert [e.input for e in chosen.examples] == [EXAMPLES[0]["input"], EXAMPLES[1]["input"]]
    assert chosen.method == "first" and chosen.note is None


def test_similarity_ranks_by_cosine_with_the_best_last() -> None:
    embedder = HashEmbedder()
    chosen = select_examples(config(k=2), "I forgot my password, reset it", embed=embedder.embed)
    assert chosen.method == "similarity"
    assert chosen.examples[-1].input == "reset my password"  # nearest the query


def test_example_embeddings_are_cached_per_version_and_embedder() -> None:
    embedder, cache = HashEmbedder(), ExampleEmbeddings()
    for query in ("reset password", "refund order", "parcel"):
        select_examples(
            config(), query, embed=embedder.embed, version_key=("t", "p", 1), cache=cache
        )
    assert embedder.calls == [4, 1, 1, 1]  # the examples once, then only the queries
    select_examples(config(), "x", embed=embedder.embed, version_key=("t", "p", 2), cache=cache)
    other = HashEmbedder(dimensions=32)
    select_examples(config(), "x", embed=other.embed, version_key=("t", "p", 1), cache=cache)
    assert len(cache) == 3 and other.calls == [4, 1]


def test_the_cache_is_bounded() -> None:
    cache = ExampleEmbeddings(max_entries=2)
    for key in range(5):
        cache.get(key, lambda: np.zeros(2))
    assert len(cache) == 2


def test_without_an_embedder_or_query_it_falls_back_and_says_so() -> None:
    no_embedder = select_examples(config(), "reset password")
    assert no_embedder.method == "first" and "no embedder" in (no_embedder.note or "")
    no_query = select_examples(config(), None, embed=HashEmbedder().embed)
    assert no_query.method == "first" and "no user message" in (no_query.note or "")


def test_a_failing_embedder_falls_back() -> None:
    chosen = select_examples(config(), "boom", embed=HashEmbedder(fail_on="boom").embed)
    assert chosen.method == "first" and "embedder failed" in (chosen.note or "")


def test_examples_become_user_assistant_pairs() -> None:
    assert example_messages((Example("q", "a"),)) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
