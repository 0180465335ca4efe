"""The response cache core, with a fake embedder of fixed vectors so similarities are exact."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from sluicegate.processors.cache import (
    CachedAnswer,
    CacheKey,
    ResponseCache,
    chunk_from_response,
    response_from_hit,
)
from sluicegate.schemas.models import ChatMessage, RequestReceived, ResponseReady, SamplingParams
from sluicegate.settings import CacheSettings
from tests.builders import envelope

pytestmark = pytest.mark.unit

THRESHOLD = 0.95
DIM = 4


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def at_cosine(similarity: float) -> np.ndarray:
    """A unit vector whose cosine with unit(1) is exactly `similarity` (to float32 precision)."""
    return unit(similarity, math.sqrt(1 - similarity**2))


class FakeEmbedder:
    """Texts map to fixed vectors; unknown texts get an orthogonal axis so they never match."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.calls: list[str] = []

    def __call__(self, text: str) -> np.ndarray:
        self.calls.append(text)
        return self.vectors.get(text, unit(0, 0, 0, 1))


def req(
    content: str = "What is the capital of France?",
    *,
    tenant: str = "acme",
    model: str = "chat",
    system: str | None = "Be brief.",
    stream: bool = False,
    user: str | None = None,
    metadata: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    **params: Any,
) -> RequestReceived:
    messages = [ChatMessage(role="system", content=system)] if system else []
    messages.append(ChatMessage(role="user", content=content))
    sampling = {"temperature": 0.0, "max_tokens": 64, **params}
    if extra is not None:
        sampling["extra_json"] = json.dumps(extra)
    return RequestReceived(
        **envelope(tenant_id=tenant),
        model=model,
        messages=messages,
        params=SamplingParams(**sampling),
        stream=stream,
        user=user,
        metadata=metadata or {},
    )


def answer(content: str = "Paris.", *, finish_reason: str = "stop", usd: float = 0.002):
    return CachedAnswer(
        content=content,
        finish_reason=finish_reason,
        prompt_tokens=20,
        completion_tokens=3,
        deployment="gpt-main",
        provider_model="gpt-4o-2024-08-06",
        usd=usd,
        latency_ms=812.0,
    )


def make_cache(
    entries: dict[str, dict[str, Any]] | None = None,
    embed: FakeEmbedder | None = None,
    **settings: Any,
) -> tuple[ResponseCache, dict[str, dict[str, Any]]]:
    store: dict[str, dict[str, Any]] = {} if entries is None else entries
    config = CacheSettings(**{"similarity_threshold": THRESHOLD, "ttl_s": 60.0, **settings})
    return ResponseCache(config, store, embed, embedding_model="fake"), store


# ----- exact tier ------------------------------------------------------------------------------


def test_exact_hit_after_store_and_miss_for_another_question() -> None:
    cache, entries = make_cache()
    assert cache.lookup(req(), now_ms=0) is None
    assert cache.store(req(), answer(), now_ms=0)
    hit = cache.lookup(req(), now_ms=1)
    assert hit is not None and hit.tier == "exact" and hit.similarity == 1.0
    assert hit.answer == answer() and hit.created_ms == 0
    assert cache.lookup(req("What is the capital of Spain?"), now_ms=1) is None
    json.dumps(entries)  # the entries are what a Faust table will serialize


def test_streamed_and_non_streamed_requests_share_an_entry_user_and_metadata_ignored() -> None:
    cache, _ = make_cache()
    cache.store(req(stream=False, user="u1"), answer(), now_ms=0)
    assert cache.lookup(req(stream=True), now_ms=1) is not None
    assert cache.lookup(req(user="u2", metadata={"team": "x"}), now_ms=1) is not None
    assert cache.lookup(req(extra={"stream_options": {"include_usage": True}}), now_ms=1)


def test_parameters_that_change_the_output_change_the_key() -> None:
    cache, _ = make_cache()
    cache.store(req(), answer(), now_ms=0)
    for different in (
        req(max_tokens=65),
        req(seed=7),
        req(stop=["\n"]),
        req(top_p=0.5),
        req(response_format_json='{"type":"json_object"}'),
        req(extra={"logprobs": True}),
        req(system="Be verbose."),
        req(model="other"),
    ):
        assert cache.lookup(different, now_ms=1) is None


def test_canonical_json_key_order_does_not_split_the_cache() -> None:
    cache, _ = make_cache()
    cache.store(req(response_format_json='{"type": "json_object", "x": 1}'), answer(), now_ms=0)
    assert cache.lookup(req(response_format_json='{"x":1,"type":"json_object"}'), now_ms=1)


# ----- cacheability ----------------------------------------------------------------------------


def test_non_deterministic_requests_are_not_cached() -> None:
    cache, entries = make_cache()
    for request in (req(temperature=None), req(temperature=0.7)):
        assert not cache.is_cacheable(request)
        assert cache.uncacheable_reason(request) == "not_deterministic"
        assert not cache.store(request, answer(), now_ms=0)
        assert cache.lookup(request, now_ms=1) is None
    assert entries == {}


def test_opt_in_caches_sampled_requests_and_opt_out_wins_over_temperature_zero() -> None:
    cache, _ = make_cache()
    sampled = req(temperature=0.9, extra={"sluicegate": {"cache": True}})
    assert cache.is_cacheable(sampled) and cache.store(sampled, answer(), now_ms=0)
    assert cache.lookup(req(temperature=0.9, extra={"sluicegate": {"cache": True}}), now_ms=1)
    opted_out = req(extra={"sluicegate": {"cache": False}})
    assert cache.uncacheable_reason(opted_out) == "opted_out"
    # The opt-in flag is not part of the key: a temperature-0 request hits either way.
    cache.store(req(), answer("zero"), now_ms=0)
    hit = cache.lookup(req(extra={"sluicegate": {"cache": True}}), now_ms=1)
    assert hit is not None and hit.answer.content == "zero"


def test_tools_need_opt_in_and_n_above_one_is_never_cached() -> None:
    cache, _ = make_cache()
    tools = '[{"type":"function","function":{"name":"weather","parameters":{}}}]'
    assert cache.uncacheable_reason(req(tools_json=tools)) == "tools_need_opt_in"
    assert cache.is_cacheable(req(tools_json=tools, extra={"sluicegate": {"cache": True}}))
    assert cache.uncacheable_reason(req(extra={"n": 2})) == "n_gt_1"
    assert cache.uncacheable_reason(req(extra={"n": 2, "sluicegate": {"cache": True}})) == "n_gt_1"
    assert cache.is_cacheable(req(extra={"n": 1}))


def test_deterministic_only_off_caches_everything_and_disabled_caches_nothing() -> None:
    loose, _ = make_cache(deterministic_only=False)
    assert loose.is_cacheable(req(temperature=None))
    off, entries = make_cache(enabled=False)
    assert off.uncacheable_reason(req()) == "cache_disabled"
    assert not off.store(req(), answer(), now_ms=0) and entries == {}


def test_content_filtered_answers_are_not_stored() -> None:
    cache, entries = make_cache()
    assert not cache.store(req(), answer(finish_reason="content_filter"), now_ms=0)
    assert entries == {}


# ----- expiry, bounds, scopes ------------------------------------------------------------------


def test_entries_expire_after_ttl_and_are_evicted_on_lookup() -> None:
    cache, entries = make_cache(ttl_s=60.0)
    cache.store(req(), answer(), now_ms=1_000)
    assert cache.lookup(req(), now_ms=60_999) is not None
    assert cache.lookup(req(), now_ms=61_000) is None
    assert entries == {} and len(cache) == 0


def test_evict_expired_sweeps_untouched_entries() -> None:
    cache, entries = make_cache(ttl_s=10.0)
    cache.store(req("a"), answer(), now_ms=0)
    cache.store(req("b"), answer(), now_ms=5_000)
    assert cache.evict_expired(now_ms=12_000) == 1
    assert len(entries) == 1 and cache.lookup(req("b"), now_ms=12_000) is not None


def test_scope_is_bounded_least_recently_used_first() -> None:
    cache, entries = make_cache(max_entries_per_scope=3)
    for i, text in enumerate("abc"):
        cache.store(req(text), answer(text), now_ms=i)
    assert cache.lookup(req("a"), now_ms=10) is not None  # a is now the most recent
    cache.store(req("d"), answer("d"), now_ms=11)
    assert len(entries) == 3
    assert cache.lookup(req("b"), now_ms=12) is None
    assert all(cache.lookup(req(t), now_ms=12) for t in "acd")
    # The bound is per scope: another tenant's entries do not evict these.
    cache.store(req("e", tenant="globex"), answer(), now_ms=13)
    assert len(entries) == 4


def test_tenants_are_isolated_in_both_tiers() -> None:
    embed = FakeEmbedder({"capital of France?": unit(1), "France's capital?": at_cosine(0.99)})
    cache, _ = make_cache(embed=embed)
    cache.store(req("capital of France?", tenant="acme"), answer(), now_ms=0)
    assert cache.lookup(req("capital of France?", tenant="globex"), now_ms=1) is None
    assert cache.lookup(req("France's capital?", tenant="globex"), now_ms=1) is None
    hit = cache.lookup(req("France's capital?", tenant="acme"), now_ms=1)
    assert hit is not None and hit.tier == "semantic"


def test_prompt_versions_are_separate_scopes_and_invalidate_drops_them() -> None:
    embed = FakeEmbedder({"q": unit(1)})
    cache, entries = make_cache(embed=embed)
    cache.store(req("q"), answer("v1"), "v1", now_ms=0)
    cache.store(req("q"), answer("v2"), "v2", now_ms=0)
    cache.store(req("q", model="other"), answer("other"), "v1", now_ms=0)
    assert cache.lookup(req("q"), "v3", now_ms=1) is None
    hit = cache.lookup(req("q"), "v2", now_ms=1)
    assert hit is not None and hit.answer.content == "v2"
    assert cache.invalidate("acme", "chat", "v1") == 1
    assert cache.lookup(req("q"), "v1", now_ms=1) is None
    assert cache.lookup(req("q"), "v2", now_ms=1) is not None
    assert cache.invalidate("acme", "chat") == 1
    assert cache.lookup(req("q"), "v2", now_ms=1) is None
    assert len(entries) == 1  # the other model's scope is untouched
    assert cache.lookup(req("q", model="other"), "v1", now_ms=1) is not None


# ----- semantic tier ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("similarity", "hits"), [(THRESHOLD + 1e-4, True), (THRESHOLD - 1e-4, False)]
)
def test_semantic_hit_just_above_and_miss_just_below_the_threshold(
    similarity: float, hits: bool
) -> None:
    embed = FakeEmbedder({"stored": unit(1), "asked": at_cosine(similarity)})
    cache, _ = make_cache(embed=embed)
    cache.store(req("stored"), answer(), now_ms=0)
    hit = cache.lookup(req("asked"), now_ms=1)
    if hits:
        assert hit is not None and hit.tier == "semantic"
        assert hit.similarity == pytest.approx(similarity, abs=1e-6)
    else:
        assert hit is None


def test_semantic_tier_returns_the_nearest_and_skips_expired_candidates() -> None:
    embed = FakeEmbedder({"near": at_cosine(0.99), "nearer": at_cosine(0.999), "asked": unit(1)})
    cache, entries = make_cache(embed=embed, ttl_s=10.0)
    cache.store(req("near"), answer("near"), now_ms=5_000)
    cache.store(req("nearer"), answer("nearer"), now_ms=0)
    hit = cache.lookup(req("asked"), now_ms=1)
    assert hit is not None and hit.answer.content == "nearer"
    hit = cache.lookup(req("asked"), now_ms=11_000)  # "nearer" expired: evicted, next one wins
    assert hit is not None and hit.answer.content == "near"
    assert len(entries) == 1


def test_semantic_tier_still_needs_equal_parameters_and_earlier_turns() -> None:
    embed = FakeEmbedder({"stored": unit(1), "asked": at_cosine(0.99)})
    cache, _ = make_cache(embed=embed)
    cache.store(req("stored"), answer(), now_ms=0)
    assert cache.lookup(req("asked", max_tokens=10), now_ms=1) is None
    assert cache.lookup(req("asked", system="Another persona."), now_ms=1) is None
    assert cache.lookup(req("asked", model="other"), now_ms=1) is None
    assert cache.lookup(req("asked"), now_ms=1) is not None


def test_only_the_last_user_message_is_embedded_and_long_ones_skip_the_semantic_tier() -> None:
    embed = FakeEmbedder({})
    cache, entries = make_cache(embed=embed)
    cache.store(req("  the question  ", system="A long system prompt " * 50), answer(), now_ms=0)
    assert embed.calls == ["the question"]
    long_question = "x" * 1001
    cache.store(req(long_question), answer(), now_ms=0)
    assert embed.calls == ["the question"]
    assert [e["vector"] is None for e in entries.values()] == [False, True]


def test_exact_hits_do_not_embed_and_semantic_misses_embed_once() -> None:
    embed = FakeEmbedder({"q": unit(1)})
    cache, _ = make_cache(embed=embed)
    cache.store(req("q"), answer(), now_ms=0)
    embed.calls.clear()
    assert cache.lookup(req("q"), now_ms=1) is not None and embed.calls == []
    key = cache.key(req("other"))
    assert key is not None
    assert cache.lookup_exact(key, now_ms=1) is None
    assert cache.lookup_semantic(key, now_ms=1) is None and embed.calls == ["other"]
    cache.store_key(key, answer(), now_ms=2)  # the vector from the lookup is reused
    assert embed.calls == ["other"]


def test_a_cache_key_survives_json_between_lookup_and_store() -> None:
    embed = FakeEmbedder({"q": unit(1), "q?": at_cosine(0.99)})
    cache, _ = make_cache(embed=embed)
    key = cache.key(req("q"), "v1")
    assert (
        key is not None and cache.lookup_semantic(key, now_ms=0) is None
    )  # empty index: no embedding yet
    key.vector = embed("q")
    restored = CacheKey.from_dict(json.loads(json.dumps(key.to_dict())))
    assert restored.exact == key.exact and np.array_equal(restored.vector, key.vector)
    cache.store_key(restored, answer(), now_ms=0)
    hit = cache.lookup(req("q?"), "v1", now_ms=1)
    assert hit is not None and hit.tier == "semantic"


def test_without_an_embedder_or_with_semantic_off_only_the_exact_tier_runs() -> None:
    embed = FakeEmbedder({"stored": unit(1), "asked": unit(1)})
    for cache, _ in (make_cache(), make_cache(embed=embed, semantic=False)):
        cache.store(req("stored"), answer(), now_ms=0)
        assert cache.lookup(req("asked"), now_ms=1) is None
        assert cache.lookup(req("stored"), now_ms=1) is not None
    assert embed.calls == []


# ----- restart ---------------------------------------------------------------------------------


def test_rebuild_index_after_restart_finds_semantic_hits_again() -> None:
    embed = FakeEmbedder({"stored": unit(1), "asked": at_cosine(0.99), "other": unit(0, 1)})
    before, entries = make_cache(embed=embed)
    before.store(req("stored"), answer("kept"), now_ms=0)
    before.store(req("other"), answer(), now_ms=0)
    persisted = json.loads(json.dumps(entries))  # what the changelog gives back

    after, _ = make_cache(persisted, embed=embed)
    assert after.lookup(req("asked"), now_ms=1) is None  # the index is in memory only
    assert after.rebuild_index() == 2
    hit = after.lookup(req("asked"), now_ms=1)
    assert hit is not None and hit.tier == "semantic" and hit.answer.content == "kept"
    assert after.invalidate("acme", "chat") == 2 and persisted == {}


def test_rebuild_ignores_vectors_of_another_embedding_model_and_applies_the_bound() -> None:
    embed = FakeEmbedder({"stored": unit(1), "asked": at_cosine(0.99)})
    before, entries = make_cache(embed=embed)
    for i in range(3):
        before.store(req(f"exact {i}"), answer(), now_ms=i)
    before.store(req("stored"), answer(), now_ms=3)
    config = CacheSettings(similarity_threshold=THRESHOLD, ttl_s=60, max_entries_per_scope=2)
    after = ResponseCache(config, entries, embed, embedding_model="another-model")
    assert after.rebuild_index() == 4
    assert len(entries) == 2  # the two oldest went
    assert after.lookup(req("asked"), now_ms=4) is None  # vector of another model: not indexed
    assert after.lookup(req("stored"), now_ms=4) is not None  # the exact tier still serves it


# ----- the answer of a hit ---------------------------------------------------------------------


def test_response_from_hit_marks_the_hit_and_the_usd_saved() -> None:
    cache, _ = make_cache()
    first = req()
    cache.store(first, answer(usd=0.0123), now_ms=0)
    second = req(stream=True)
    hit = cache.lookup(second, now_ms=1)
    assert hit is not None
    response = response_from_hit(second, hit)
    assert isinstance(response, ResponseReady)
    assert response.cache_hit and response.usd_saved == pytest.approx(0.0123)
    assert response.request_id == second.request_id and response.parent_span_id == second.span_id
    assert response.message.content == "Paris." and response.message.role == "assistant"
    assert (response.model, response.deployment) == ("chat", "gpt-main")
    assert response.usage.total_tokens == 23 and response.latency_ms == 0.0
    chunk = chunk_from_response(response)
    assert (chunk.index, chunk.delta, chunk.finish_reason) == (0, "Paris.", "stop")
    assert chunk.request_id == second.request_id and chunk.usage == response.usage


def test_cached_answer_from_a_response_keeps_tool_calls() -> None:
    calls = '[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]'
    response = ResponseReady(
        **envelope(),
        model="chat",
        deployment="d",
        provider_model="p",
        message=ChatMessage(role="assistant", content=None, tool_calls_json=calls),
        finish_reason="tool_calls",
        usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        latency_ms=40.0,
    )
    cached = CachedAnswer.from_response(response, usd=0.5)
    assert cached.tool_calls_json == calls and cached.usd == 0.5
    assert CachedAnswer.from_dict(json.loads(json.dumps(cached.to_dict()))) == cached
