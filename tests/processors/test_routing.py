from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from sluicegate.errors import SluicegateError
from sluicegate.processors.health import HealthSnapshot
from sluicegate.processors.routing import (
    RouteDecision,
    RouteNeeds,
    Router,
    RoutingError,
    estimate_prompt_tokens,
    needs_of,
)
from sluicegate.schemas.models import ChatMessage, RequestReceived, SamplingParams
from sluicegate.settings import Capabilities, Deployment, ModelAlias, Settings
from tests.builders import envelope

pytestmark = pytest.mark.unit

NOW = 1_000_000
ALL_CAPS = Capabilities(tools=True, json_mode=True, vision=True, streaming=True)


def dep(name: str, **fields: Any) -> Deployment:
    return Deployment(name=name, backend="openai", provider_model=name, **fields)


def router(
    *deployments: Deployment, strategy: str = "priority", rng: random.Random | None = None
) -> Router:
    alias = ModelAlias(name="chat", deployments=[d.name for d in deployments], strategy=strategy)
    return Router({d.name: d for d in deployments}, {"chat": alias}, rng=rng)


def needs(**fields: Any) -> RouteNeeds:
    return RouteNeeds(**{"prompt_tokens": 100, "completion_tokens": 100, **fields})


def route(
    r: Router, health: dict[str, HealthSnapshot] | None = None, **fields: Any
) -> RouteDecision:
    return r.route("chat", needs(**fields), health or {}, NOW)


def open_breaker(name: str, until: int | None = NOW + 5_000) -> HealthSnapshot:
    return HealthSnapshot(deployment=name, breaker="open", open_until_ms=until)


def received(
    messages: list[ChatMessage] | None = None, *, stream: bool = False, **params: Any
) -> RequestReceived:
    return RequestReceived(
        **envelope(),
        model="chat",
        messages=messages or [ChatMessage(role="user", content="Say hi")],
        params=SamplingParams(**params),
        stream=stream,
    )


# -- strategies ------------------------------------------------------------------------------------


def test_priority_orders_by_priority_then_catalogue_order() -> None:
    r = router(dep("a", priority=2), dep("b", priority=1), dep("c", priority=1), dep("d"))
    decision = route(r)
    assert decision.chain == ("d", "b", "c", "a")
    assert decision.strategy == "priority"
    assert decision.deployment == "d" and decision.fallbacks == ("b", "c", "a")
    assert decision.reason.startswith("priority: d") and decision.skipped == {}


def test_cost_picks_the_cheapest_for_this_request_shape() -> None:
    cheap_in = dep(
        "cheap-in", input_usd_per_mtok=0.1, output_usd_per_mtok=10.0, context_window=100_000
    )
    cheap_out = dep("cheap-out", input_usd_per_mtok=5.0, output_usd_per_mtok=1.0)
    mid = dep("mid", input_usd_per_mtok=2.0, output_usd_per_mtok=4.0, context_window=100_000)
    r = router(cheap_out, cheap_in, mid, strategy="cost")
    # Long prompt, short answer: input price dominates.
    long_prompt = route(r, prompt_tokens=50_000, completion_tokens=10)
    assert long_prompt.chain == ("cheap-in", "mid")  # cheap-out's 8192 window is too small
    # Short prompt, long answer: output price dominates.
    long_answer = route(r, prompt_tokens=10, completion_tokens=4_000)
    assert long_answer.chain == ("cheap-out", "mid", "cheap-in")
    assert long_answer.strategy == "cost"
    assert long_answer.reason.startswith("cost: cheap-out cheapest (est. $0.004")


def test_cost_ties_fall_back_to_priority() -> None:
    r = router(dep("a", priority=5), dep("b", priority=1), dep("c", priority=3), strategy="cost")
    assert route(r).chain == ("b", "c", "a")


def test_latency_prefers_unmeasured_then_lowest_ewma() -> None:
    r = router(dep("slow"), dep("fast"), dep("new"), dep("mid"), dep("fresh"), strategy="latency")
    health = {
        "slow": HealthSnapshot("slow", latency_ewma_ms=900.0),
        "fast": HealthSnapshot("fast", latency_ewma_ms=100.0),
        "mid": HealthSnapshot("mid", latency_ewma_ms=300.0),
        "fresh": HealthSnapshot("fresh"),  # a snapshot without an observation yet
    }
    decision = route(r, health)
    assert decision.chain == ("new", "fresh", "fast", "mid", "slow")
    assert "not measured yet" in decision.reason
    del health["fresh"]
    health["new"] = HealthSnapshot("new", latency_ewma_ms=200.0)
    health["fresh"] = HealthSnapshot("fresh", latency_ewma_ms=5_000.0)
    decision = route(r, health)
    assert decision.chain == ("fast", "new", "mid", "slow", "fresh")
    assert decision.reason.startswith("latency: fast fastest (ewma 100 ms)")


def test_weighted_follows_the_weights_with_the_rest_by_priority() -> None:
    r = router(
        dep("a", weight=1.0, priority=3),
        dep("b", weight=3.0, priority=1),
        dep("c", weight=0.0, priority=2),
        strategy="weighted",
        rng=random.Random(1234),
    )
    firsts: Counter[str] = Counter()
    for _ in range(10_000):
        decision = route(r)
        firsts[decision.chain[0]] += 1
        rest = decision.chain[1:]
        assert set(decision.chain) == {"a", "b", "c"}
        assert list(rest) == sorted(rest, key={"b": 1, "c": 2, "a": 3}.__getitem__)
    # Expected 2500 / 7500 / 0; with n=10000 one standard deviation is ~43, so ±500 is >11 sd.
    assert firsts["c"] == 0
    assert abs(firsts["a"] - 2_500) < 500 and abs(firsts["b"] - 7_500) < 500
    assert route(r).strategy == "weighted"


def test_weighted_is_reproducible_with_a_seed() -> None:
    deployments = [dep(f"d{i}", weight=float(i + 1)) for i in range(5)]
    first = router(*deployments, strategy="weighted", rng=random.Random(7))
    second = router(*deployments, strategy="weighted", rng=random.Random(7))
    assert [route(first).chain for _ in range(50)] == [route(second).chain for _ in range(50)]


def test_weighted_with_only_zero_weights_goes_by_priority() -> None:
    r = router(dep("a", weight=0, priority=2), dep("b", weight=0, priority=1), strategy="weighted")
    decision = route(r)
    assert decision.chain == ("b", "a") and "all weights 0" in decision.reason


def test_weighted_zero_weight_is_still_a_fallback_when_the_others_are_down() -> None:
    r = router(dep("a", weight=1), dep("z", weight=0), strategy="weighted")
    assert route(r, {"a": open_breaker("a")}).chain == ("z",)


def test_capability_prefers_the_least_over_provisioned() -> None:
    big = dep("big", context_window=128_000, capabilities=ALL_CAPS)
    small_all = dep("small-all", context_window=16_000, capabilities=ALL_CAPS)
    small_tools = dep("small-tools", context_window=16_000, capabilities=Capabilities(tools=True))
    tiny = dep("tiny", context_window=4_096, capabilities=Capabilities(tools=True))
    r = router(big, small_all, small_tools, tiny, strategy="capability")
    decision = route(r, tools=True, prompt_tokens=5_000, completion_tokens=1_000)
    assert decision.chain == ("small-tools", "small-all", "big")
    assert decision.skipped == {"tiny": "context 4096 < 6000 needed"}
    assert "context 16000" in decision.reason and "1 extra capabilities" in decision.reason


# -- filters --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["priority", "cost", "latency", "weighted", "capability"])
def test_capability_and_context_filters_apply_under_every_strategy(strategy: str) -> None:
    r = router(
        dep("plain"),
        dep("tools", capabilities=Capabilities(tools=True)),
        dep("tools-json", capabilities=Capabilities(tools=True, json_mode=True)),
        dep("short", capabilities=ALL_CAPS, context_window=1_000),
        dep("vision", capabilities=Capabilities(vision=True, json_mode=True, tools=True)),
        dep("no-stream", capabilities=Capabilities(tools=True, json_mode=True, streaming=False)),
        strategy=strategy,
        rng=random.Random(0),
    )
    decision = route(r, tools=True, json_mode=True, streaming=True, prompt_tokens=2_000)
    assert set(decision.chain) == {"tools-json", "vision"}
    assert decision.skipped == {
        "plain": "no tools, no json mode",
        "tools": "no json mode",
        "short": "context 1000 < 2100 needed",
        "no-stream": "no streaming",
    }
    vision = route(r, vision=True, prompt_tokens=2_000)
    assert vision.chain == ("vision",)


def test_context_that_fits_exactly_is_allowed() -> None:
    r = router(dep("a", context_window=1_000))
    assert route(r, prompt_tokens=900, completion_tokens=100).chain == ("a",)


def test_open_breakers_are_skipped_and_cool_down_over_is_the_probe() -> None:
    r = router(dep("a", priority=1), dep("b", priority=2), dep("c", priority=3), dep("d"))
    health = {
        "d": open_breaker("d"),  # cooling down: skipped
        "a": open_breaker("a", until=NOW),  # cool-down just over: allowed (half-open probe)
        "b": HealthSnapshot("b", breaker="half_open", open_until_ms=NOW + 1),  # probe in flight
        "c": HealthSnapshot("c", breaker="half_open", open_until_ms=NOW - 1),  # lease expired
    }
    decision = route(r, health)
    assert decision.chain == ("a", "c")
    assert decision.skipped == {
        "d": "breaker open (5000 ms of cool-down left)",
        "b": "breaker half-open (probe in flight)",
    }
    assert "2 skipped" in decision.reason


def test_open_breaker_without_a_deadline_stays_closed_to_traffic() -> None:
    r = router(dep("a"), dep("b"))
    decision = route(r, {"a": open_breaker("a", until=None)})
    assert decision.chain == ("b",) and decision.skipped == {"a": "breaker open"}


# -- override -------------------------------------------------------------------------------------


def test_override_deployment_goes_first_then_the_rest_by_strategy() -> None:
    r = router(dep("a", priority=1), dep("b", priority=2), dep("c", priority=3))
    decision = route(r, override_deployment="c")
    assert decision.chain == ("c", "a", "b")
    assert decision.reason.startswith("override: c pinned; then priority: a")


def test_override_strategy_replaces_the_alias_strategy() -> None:
    r = router(
        dep("pricey", input_usd_per_mtok=10, output_usd_per_mtok=10),
        dep("cheap", input_usd_per_mtok=1, output_usd_per_mtok=1, priority=5),
    )
    assert route(r).chain == ("pricey", "cheap")
    decision = route(r, override_strategy="cost")
    assert decision.chain == ("cheap", "pricey") and decision.strategy == "cost"


def test_override_to_an_unusable_deployment_is_reported_and_the_request_still_routed() -> None:
    r = router(dep("a"), dep("b"))
    decision = route(r, {"b": open_breaker("b")}, override_deployment="b")
    assert decision.chain == ("a",)
    assert decision.reason.startswith("override: b not usable (breaker open")


def test_override_must_name_a_deployment_of_the_alias() -> None:
    r = router(dep("a"))
    with pytest.raises(RoutingError) as caught:
        route(r, override_deployment="elsewhere")
    assert (caught.value.code, caught.value.http_status) == ("invalid_override", 400)
    assert caught.value.error_type == "invalid_request_error"
    with pytest.raises(RoutingError, match="unknown routing strategy"):
        route(r, override_strategy="fastest")


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_alias_is_model_not_found_404() -> None:
    with pytest.raises(RoutingError) as caught:
        router(dep("a")).route("nope", needs(), {}, NOW)
    assert (caught.value.code, caught.value.http_status) == ("model_not_found", 404)
    assert isinstance(caught.value, SluicegateError)


def test_nothing_capable_is_400_with_the_reasons() -> None:
    r = router(dep("a"), dep("b", capabilities=Capabilities(tools=True), context_window=1_000))
    with pytest.raises(RoutingError) as caught:
        route(r, {"a": open_breaker("a")}, tools=True, prompt_tokens=5_000)
    error = caught.value
    assert (error.code, error.http_status) == ("no_capable_deployment", 400)
    assert error.skipped == {"a": "no tools", "b": "context 1000 < 5100 needed"}
    assert "a: no tools" in str(error) and "tools" in error.message


def test_all_breakers_open_is_503_with_the_earliest_retry() -> None:
    r = router(dep("a"), dep("b"), dep("c", capabilities=Capabilities()))
    health = {"a": open_breaker("a", NOW + 7_000), "b": open_breaker("b", NOW + 2_500)}
    assert route(r, health).chain == ("c",)  # c has no breaker; now take it down too
    health["c"] = open_breaker("c", NOW + 9_000)
    with pytest.raises(RoutingError) as caught:
        route(r, health)
    error = caught.value
    assert (error.code, error.http_status, error.error_type) == (
        "all_breakers_open",
        503,
        "server_error",
    )
    assert error.retry_after_s == 2.5 and set(error.skipped) == {"a", "b", "c"}


def test_all_breakers_open_mixed_with_incapable_ones_is_still_503() -> None:
    r = router(dep("a"), dep("b", capabilities=Capabilities(tools=True)))
    with pytest.raises(RoutingError) as caught:
        route(r, {"b": open_breaker("b")}, tools=True)
    assert caught.value.code == "all_breakers_open"
    assert caught.value.skipped == {
        "a": "no tools",
        "b": "breaker open (5000 ms of cool-down left)",
    }


def test_skipped_is_a_private_copy_per_decision() -> None:
    r = router(dep("a"), dep("b", capabilities=Capabilities(tools=True)))
    first = route(r, tools=True)
    first.skipped["x"] = "mutated"  # type: ignore[index]
    assert route(r, tools=True).skipped == {"a": "no tools"}


def test_from_settings_and_duplicate_deployments_in_an_alias() -> None:
    settings = Settings(
        deployments=[dep("a"), dep("b")],
        models=[ModelAlias(name="chat", deployments=["b", "a", "b"])],
    )
    assert Router.from_settings(settings).route("chat", needs(), {}, NOW).chain == ("b", "a")


def test_unknown_deployment_in_an_alias_fails_at_start_up() -> None:
    from sluicegate.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        Router({}, {"chat": ModelAlias(name="chat", deployments=["ghost"])})


# -- needs_of -------------------------------------------------------------------------------------


def test_estimate_prompt_tokens_is_chars_over_four_plus_overheads() -> None:
    messages = [ChatMessage(role="system", content="x" * 10), ChatMessage(role="user", content="")]
    # ceil(10/4) = 3, 2 messages x 4, 3 for the reply.
    assert estimate_prompt_tokens(messages) == 3 + 8 + 3
    assert estimate_prompt_tokens([]) == 3


def test_estimate_counts_images_at_a_fixed_price_not_their_payload() -> None:
    parts = [
        {"type": "text", "text": "y" * 8},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}},
    ]
    message = ChatMessage(role="user", content_parts_json=json.dumps(parts))
    assert estimate_prompt_tokens([message]) == 2 + 4 + 3 + 765


def test_needs_of_a_plain_request() -> None:
    result = needs_of(received(max_tokens=64))
    assert result == RouteNeeds(prompt_tokens=2 + 4 + 3, completion_tokens=64)
    assert needs_of(received()).completion_tokens == 256
    assert needs_of(received(), default_completion_tokens=10).completion_tokens == 10


def test_needs_of_tools_json_mode_vision_and_streaming() -> None:
    tools = json.dumps([{"type": "function", "function": {"name": "f", "parameters": {}}}])
    parts = json.dumps([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])
    request = received(
        [ChatMessage(role="user", content_parts_json=parts)],
        stream=True,
        tools_json=tools,
        response_format_json='{"type": "json_schema", "json_schema": {"name": "s"}}',
    )
    result = needs_of(request)
    assert (result.tools, result.json_mode, result.vision, result.streaming) == (
        True,
        True,
        True,
        True,
    )
    assert result.prompt_tokens == 765 + 4 + 3 + -(-len(tools) // 4)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("tools_json", "[]", False),
        ("tools_json", None, False),
        ("response_format_json", '{"type": "text"}', False),
        ("response_format_json", '{"type": "json_object"}', True),
        ("response_format_json", "not json", False),
    ],
)
def test_needs_of_edge_values(field: str, value: str | None, expected: bool) -> None:
    result = needs_of(received(**{field: value}))
    assert (result.tools if field == "tools_json" else result.json_mode) is expected


def test_needs_of_text_parts_are_not_vision() -> None:
    parts = json.dumps([{"type": "text", "text": "hello"}])
    assert needs_of(received([ChatMessage(role="user", content_parts_json=parts)])).vision is False


def test_needs_of_reads_the_override_from_extra_json() -> None:
    extra = {"user_tag": 1, "sluicegate": {"deployment": "b", "strategy": "latency"}}
    result = needs_of(received(extra_json=json.dumps(extra)))
    assert (result.override_deployment, result.override_strategy) == ("b", "latency")
    assert needs_of(received(extra_json='{"other": 1}')).override_deployment is None
    assert needs_of(received(extra_json='{"sluicegate": null}')).override_strategy is None
    # Other stages' options share the object: the cache opt-in is not a routing error.
    cache_only = needs_of(received(extra_json='{"sluicegate": {"cache": true}}'))
    assert (cache_only.override_deployment, cache_only.override_strategy) == (None, None)


@pytest.mark.parametrize(
    "extra",
    [
        '{"sluicegate": {"strategy": "fastest"}}',
        '{"sluicegate": {"deployment": ""}}',
        '{"sluicegate": {"deployment": 3}}',
        '{"sluicegate": {"deploymnet": "b"}}',
        '{"sluicegate": "b"}',
        '{"sluicegate": ',
    ],
)
def test_needs_of_rejects_a_bad_override(extra: str) -> None:
    with pytest.raises(RoutingError) as caught:
        needs_of(received(extra_json=extra))
    assert (caught.value.code, caught.value.http_status) == ("invalid_override", 400)


def test_needs_feed_the_router_end_to_end() -> None:
    r = router(dep("plain"), dep("tools", capabilities=Capabilities(tools=True)))
    tools = json.dumps([{"type": "function", "function": {"name": "f"}}])
    decision = r.route("chat", needs_of(received(tools_json=tools)), {}, NOW)
    assert decision.chain == ("tools",) and decision.skipped == {"plain": "no tools"}


# -- priority classes (processors/priority.py) ----------------------------------------------------


def test_needs_of_reads_the_priority() -> None:
    assert needs_of(received()).priority == "interactive"
    batch = needs_of(received(extra_json='{"sluicegate": {"priority": "batch"}}'))
    assert batch.priority == "batch" and batch.override_strategy is None
    both = needs_of(received(extra_json='{"sluicegate": {"priority": "interactive"}}'))
    assert both.priority == "interactive"


def test_needs_of_rejects_an_unknown_priority_with_the_known_ones() -> None:
    with pytest.raises(RoutingError) as caught:
        needs_of(received(extra_json='{"sluicegate": {"priority": "urgent"}}'))
    assert (caught.value.code, caught.value.http_status) == ("invalid_override", 400)
    assert caught.value.message == "unknown priority 'urgent'; known: ['batch', 'interactive']"


def test_a_batch_request_goes_to_the_cheapest_capable_deployment() -> None:
    r = router(
        dep("fast", priority=-1, input_usd_per_mtok=5, output_usd_per_mtok=15),
        dep("cheapest", input_usd_per_mtok=0.1, output_usd_per_mtok=0.2),
        dep("cheap-no-tools", input_usd_per_mtok=0.01, output_usd_per_mtok=0.01),
        dep("mid", input_usd_per_mtok=1, output_usd_per_mtok=2, capabilities=ALL_CAPS),
    )
    assert route(r).deployment == "fast"  # interactive: the alias's strategy (priority)
    assert route(r, tools=False, priority="batch").chain[0] == "cheap-no-tools"
    decision = route(r, priority="batch", tools=True)
    assert decision.strategy == "cost" and decision.priority == "batch"
    assert decision.chain == ("mid",)  # capability filters apply as usual
    assert decision.reason.startswith("batch: cost: mid cheapest")
    opened = route(r, {"cheap-no-tools": open_breaker("cheap-no-tools")}, priority="batch")
    assert opened.chain[0] == "cheapest"  # and breakers
    # The caller's own strategy still wins.
    assert route(r, priority="batch", override_strategy="priority").chain[0] == "fast"
