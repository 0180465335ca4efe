"""Replays, backtests and eval runs (a `run_id`) have no live side effects."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from sluicegate.processors.admission import Admission
from sluicegate.processors.cache import ResponseCache
from sluicegate.processors.cache_fill import CacheFiller
from sluicegate.processors.prompting import PromptRequestError, PromptStage
from sluicegate.processors.spend import Spend
from sluicegate.schemas.models import CacheFill, ChatMessage, CostEntry, RequestRejected
from sluicegate.settings import (
    Deployment,
    LimitRule,
    LimitsSettings,
    ModelAlias,
    PromptExperiment,
    PromptSettings,
    Settings,
)
from tests.builders import envelope, request

pytestmark = pytest.mark.unit


def settings(**extra: object) -> Settings:
    return Settings(
        deployments=[
            Deployment(name="a", backend="openai", provider_model="gpt-x", output_usd_per_mtok=10.0)
        ],
        models=[ModelAlias(name="chat", deployments=["a"])],
        limits=LimitsSettings(
            keys={"key-1": LimitRule(requests_per_minute=1)},
            tenants={"acme": LimitRule(usd_per_day=0.01)},
        ),
        **extra,
    )


def test_a_runs_requests_are_not_counted_on_live_rate_limits_nor_hold_budget() -> None:
    state: dict = {}
    admission = Admission(settings=settings(), limits_state=state)
    for _ in range(5):  # the key allows 1/min live
        task = admission.run(request("chat", api_key_id="key-1", run_id="replay-1"))[0].event
        assert task.reserved_usd == 0 and task.run_id == "replay-1"
    assert not any(key.startswith("hold:") and value["buckets"] for key, value in state.items())
    assert admission.run(request("chat", api_key_id="key-1"))[0].topic == "inference.default"
    refused = admission.run(request("chat", api_key_id="key-1"))
    assert next(e.event for e in refused if e.topic == "responses").code == "rate_limit_exceeded"


def test_a_runs_cost_charges_no_budget_and_raises_no_alert() -> None:
    admission = Admission(settings=settings())
    spend = Spend(limiter=admission.limiter)
    entry = CostEntry(
        **envelope(run_id="replay-1"),
        model="chat",
        deployment="a",
        prompt_tokens=10,
        completion_tokens=5,
        usd=1.0,  # a hundred times the tenant's day
        pricing_version="test",
    )
    assert spend.run(entry) == []
    assert admission.run(request("chat"))[0].topic == "inference.default"  # budget intact
    live = entry.model_copy(update={"run_id": None})
    assert spend.run(live)  # the same cost live crosses every threshold
    rejected = next(e.event for e in admission.run(request("chat")) if e.topic == "responses")
    assert rejected.code == "budget_exceeded"


def test_a_run_neither_reads_nor_fills_the_live_cache() -> None:
    s = settings()
    cache = ResponseCache(s.cache, {})
    admission = Admission(settings=s, cache=cache)
    task = admission.run(request("chat"))[0].event
    CacheFiller(cache=cache).run(
        CacheFill(
            **envelope(),
            cache_key_json=task.cache_key,
            content="cached",
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=1,
            deployment="a",
            provider_model="gpt-x",
            usd=0.001,
            latency_ms=5.0,
        )
    )
    assert admission.run(request("chat"))[0].topic == "responses"  # live: a hit
    replayed = admission.run(request("chat", run_id="replay-1"))
    assert replayed[0].topic == "inference.default"  # the run asks the model
    assert replayed[0].event.cache_key is None  # and its answer fills nothing


@dataclass
class FakeRendered:
    messages: list[dict]
    prompt_ref: str


def fake_renderer(tenant_id: str, ref: str, variables: dict, user_messages: list[dict]):
    name, _, version = ref.partition("@")
    if name != "support":
        raise PromptRequestError("prompt_not_found", f"no prompt {name!r}", http_status=404)
    system = {"role": "system", "content": f"v{version or 'latest'} for {variables['product']}"}
    return FakeRendered([system, *user_messages], f"support@{version or '9'}")


def with_prompt(ref: str, **overrides: object):
    incoming = request("chat", **overrides)
    extra = json.dumps({"sluicegate": {"prompt": ref, "variables": {"product": "Acme"}}})
    params = incoming.params.model_copy(update={"extra_json": extra})
    return incoming.model_copy(update={"params": params})


def test_a_prompt_reference_is_rendered_before_routing_and_recorded_on_the_task() -> None:
    stage = PromptStage(renderer=fake_renderer, settings=PromptSettings())
    admission = Admission(settings=settings(), prompts=stage)
    emits = admission.run(with_prompt("support@3"))
    task, admitted = emits[0].event, emits[1].event
    assert task.messages[0] == ChatMessage(role="system", content="v3 for Acme")
    assert task.messages[1].content == "Say hi"
    assert task.prompt_ref == admitted.prompt_ref == "support@3"
    assert emits[-1].event.attributes["prompt_ref"] == "support@3"


def test_an_unknown_prompt_is_refused_with_the_renderers_status() -> None:
    stage = PromptStage(renderer=fake_renderer, settings=PromptSettings())
    emits = Admission(settings=settings(), prompts=stage).run(with_prompt("other@1"))
    rejected = next(e.event for e in emits if e.topic == "responses")
    assert isinstance(rejected, RequestRejected)
    assert (rejected.http_status, rejected.code) == (404, "prompt_not_found")


def test_an_experiment_splits_a_label_by_user_and_keeps_each_user_on_one_variant() -> None:
    experiment = PromptExperiment(
        name="tone", prompt="support", label="prod", variants={"3": 1.0, "4": 1.0}
    )
    stage = PromptStage(renderer=fake_renderer, settings=PromptSettings(experiments=[experiment]))
    seen: dict[str, set[str]] = {}
    for i in range(200):
        user = f"user-{i % 40}"
        prompted = stage.run(with_prompt("support@prod", user=user))
        assert prompted is not None and prompted.attributes["experiment"] == "tone"
        seen.setdefault(user, set()).add(prompted.prompt_ref)
    assert all(len(refs) == 1 for refs in seen.values())  # sticky per user
    variants = [next(iter(refs)) for refs in seen.values()]
    assert 10 <= variants.count("support@3") <= 30  # both arms get traffic
    assert stage.run(with_prompt("support@staging")).attributes.get("experiment") is None
