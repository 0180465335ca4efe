"""Through the bridge with the official `openai` client: bridge → Kafka → worker → upstream."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.schemas.models import CostEntry, RequestReceived, ResponseReady
from sluicegate.settings import Settings
from tests.conftest import CALLER_TOKEN, api_key_id
from tests.topics_io import wait_for_event

AUTH = {"Authorization": f"Bearer {CALLER_TOKEN}"}

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def client(bridge_url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{bridge_url}/v1", api_key=CALLER_TOKEN, max_retries=0, timeout=60
    )


@pytest.fixture(scope="module")
def serde(settings: Settings):
    return build_serde(settings)


def request_id_of(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-")
    return completion_id.removeprefix("chatcmpl-")


def test_models_lists_the_catalogue(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"gpt-fake", "blackhole", "smollm2-135m"} <= ids


def test_sync_completion_is_journaled_and_answered(
    client: openai.OpenAI, settings: Settings, serde, upstream
) -> None:
    completion = client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "ping one"}], temperature=0
    )
    assert "ping one" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens > 0
    request_id = request_id_of(completion.id)
    journaled = wait_for_event(
        settings, serde, settings.topic("requests"), RequestReceived, request_id
    )
    assert journaled.messages[0].content == "ping one" and journaled.params.temperature == 0
    answered = wait_for_event(
        settings, serde, settings.topic("responses"), ResponseReady, request_id
    )
    assert answered.message.content == completion.choices[0].message.content
    assert answered.trace_id == journaled.trace_id
    cost = wait_for_event(settings, serde, settings.topic("cost"), CostEntry, request_id)
    usage = completion.usage
    assert (cost.prompt_tokens, cost.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    expected = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.60) / 1_000_000
    assert cost.usd == pytest.approx(expected) and cost.pricing_version == "test-2026-11"
    assert cost.tenant_id == journaled.tenant_id and cost.deployment == "fake"
    assert cost.api_key_id == journaled.api_key_id == api_key_id(CALLER_TOKEN)


def test_streaming_completion_in_the_sdk_chunk_format(
    client: openai.OpenAI, settings: Settings, serde
) -> None:
    stream = client.chat.completions.create(
        model="gpt-fake",
        messages=[{"role": "user", "content": "stream these words please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream these words please" in text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    request_id = request_id_of(chunks[0].id)
    answered = wait_for_event(
        settings, serde, settings.topic("responses"), ResponseReady, request_id
    )
    assert answered.message.content == text


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "invalid_json"),
        (
            json.dumps({"model": "gpt-fake"}).encode(),
            {"Content-Type": "application/json"},
            400,
            None,
        ),
        (
            json.dumps(
                {"model": "gpt-fake", "messages": [{"role": "user", "content": "x"}]}
            ).encode(),
            {"Content-Type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        (
            b"{" + b" " * (10 * 1024 * 1024) + b"}",
            {"Content-Type": "application/json"},
            413,
            "request_too_large",
        ),
    ],
)
def test_bad_input_gets_an_openai_error(
    bridge_url: str,
    client: openai.OpenAI,
    content: bytes,
    headers: dict,
    status: int,
    code: str | None,
) -> None:
    response = httpx.post(
        f"{bridge_url}/v1/chat/completions",
        content=content,
        headers={**headers, **AUTH},
        timeout=30,
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code
    good = client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "still fine"}]
    )
    assert "still fine" in good.choices[0].message.content


def test_missing_messages_names_the_param(bridge_url: str) -> None:
    response = httpx.post(
        f"{bridge_url}/v1/chat/completions", json={"model": "gpt-fake"}, headers=AUTH
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert raised.value.body["code"] == "model_not_found"


def test_timeout_is_a_504_and_the_request_stays_journaled(
    bridge_url: str, settings: Settings, serde
) -> None:
    client = openai.OpenAI(
        base_url=f"{bridge_url}/v1",
        api_key=CALLER_TOKEN,
        max_retries=0,
        default_headers={"X-Sluicegate-Timeout": "1.5"},
    )
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model="blackhole", messages=[{"role": "user", "content": "hello?"}]
        )
    assert raised.value.status_code == 504
    message = raised.value.body["message"]
    request_id = message.split("request ")[1].split(" ")[0]
    journaled = wait_for_event(
        settings, serde, settings.topic("requests"), RequestReceived, request_id
    )
    assert journaled.model == "blackhole"


def test_idempotency_key_returns_the_first_answer_without_a_second_inference(
    client: openai.OpenAI, upstream
) -> None:
    key = {"Idempotency-Key": "idem-42"}
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "only once"}]}
    before = len(upstream.requests)
    first = client.chat.completions.create(**body, extra_headers=key)
    second = client.chat.completions.create(**body, extra_headers=key)
    assert second.id == first.id
    assert second.choices[0].message.content == first.choices[0].message.content
    assert len(upstream.requests) - before == 1
    third = client.chat.completions.create(**body, extra_headers={"Idempotency-Key": "idem-43"})
    assert third.id != first.id and len(upstream.requests) - before == 2


def test_metrics_count_requests(bridge_url: str, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "m"}])
    text = httpx.get(f"{bridge_url}/metrics").text
    assert 'sluicegate_bridge_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "sluicegate_bridge_request_seconds_bucket" in text
    assert httpx.get(f"{bridge_url}/healthz").json()["status"] == "ok"


@pytest.mark.slow
def test_local_model_really_generates(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    text = completion.choices[0].message.content
    assert text and len(text.split()) >= 2
    assert completion.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=24,
        stream=True,
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 2
