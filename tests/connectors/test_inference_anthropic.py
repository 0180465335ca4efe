"""The Anthropic adapter against the fake Anthropic upstream (a real HTTP server on loopback that
answers on the recorded response shapes): the OpenAI -> Messages request mapping, the Message ->
Completion mapping, streaming, and the translation of every failure into an error class."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import anthropic
import pytest
import pytest_asyncio

from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.inference_anthropic import (
    DEFAULT_MAX_TOKENS,
    SAMPLING_REMOVED_IN,
    AnthropicBackend,
)
from sluicegate.connectors.ports import Delta
from sluicegate.errors import BackendError
from sluicegate.schemas.models import ChatMessage, InferenceTask, SamplingParams
from sluicegate.settings import Deployment
from tests.fakes.anthropic_upstream import Behaviour, FakeAnthropicUpstream, load_json

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
KEY_ENV = "SLUICEGATE_TEST_ANTHROPIC_KEY"


def make_task(
    content: str = "hello there",
    *,
    messages: list[ChatMessage] | None = None,
    **params: Any,
) -> InferenceTask:
    return InferenceTask(
        event_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC),
        tenant_id="t",
        request_id="r",
        trace_id="0" * 32,
        span_id="0" * 16,
        producer="test",
        model="m",
        deployment="claude",
        provider_model="claude-test",
        pool="default",
        messages=messages or [ChatMessage(role="user", content=content)],
        params=SamplingParams(**{"max_tokens": 16, **params}),
    )


def deployment(base_url: str, *, timeout_s: float = 10.0, key_env: str | None = None) -> Deployment:
    return Deployment(
        name="claude",
        backend="anthropic",
        provider_model="claude-test",
        base_url=base_url,
        timeout_s=timeout_s,
        api_key_env=key_env,
    )


async def collect(deltas: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in deltas]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def upstream() -> AsyncIterator[FakeAnthropicUpstream]:
    async with FakeAnthropicUpstream() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def backend(upstream: FakeAnthropicUpstream) -> AsyncIterator[AnthropicBackend]:
    adapter = AnthropicBackend(deployment=deployment(upstream.base_url))
    yield adapter
    await adapter.aclose()


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeAnthropicUpstream) -> None:
    upstream.reset()


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# -- the request ----------------------------------------------------------------------------


async def test_system_messages_are_lifted_and_same_role_turns_merged(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    messages = [
        ChatMessage(role="system", content="Be brief.", name="rules"),
        ChatMessage(role="user", content="first"),
        ChatMessage(role="user", content="second", name="ada"),
        ChatMessage(role="developer", content="Answer in English."),
        ChatMessage(role="assistant", content="ok"),
        ChatMessage(role="assistant", content=""),
        ChatMessage(role="user", content="third"),
    ]
    await backend.complete(make_task(messages=messages))
    body = upstream.requests[-1]
    assert body["system"] == "Be brief.\n\nAnswer in English."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "third"}]},
    ]
    assert body["model"] == "claude-test" and body["max_tokens"] == 16


async def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    calls = [
        tool_call("call_1", "get_weather", '{"location": "Paris"}'),
        tool_call("call_2", "get_time", ""),
    ]
    messages = [
        ChatMessage(role="user", content="weather and time in Paris?"),
        ChatMessage(role="assistant", content="Checking.", tool_calls_json=json.dumps(calls)),
        ChatMessage(role="tool", content="18C, sunny", tool_call_id="call_1"),
        ChatMessage(role="tool", content="14:05", tool_call_id="call_2"),
        ChatMessage(role="user", content="thanks, and tomorrow?"),
    ]
    await backend.complete(make_task(messages=messages))
    assistant, results = upstream.requests[-1]["messages"][1:]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {
                "type": "tool_use",
                "id": "call_1",
                "name": "get_weather",
                "input": {"location": "Paris"},
            },
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        ],
    }
    # The results of parallel calls share one user turn, ahead of the user's own text.
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "14:05"},
            {"type": "text", "text": "thanks, and tomorrow?"},
        ],
    }


async def test_image_parts_become_base64_and_url_image_blocks(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    parts = [
        {"type": "text", "text": "compare these"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    user = ChatMessage(role="user", content=None, content_parts_json=json.dumps(parts))
    await backend.complete(make_task(messages=[user]))
    assert upstream.requests[-1]["messages"][0]["content"] == [
        {"type": "text", "text": "compare these"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_a_tool_result_with_an_image_keeps_its_blocks(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    parts = [
        {"type": "text", "text": "the chart"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
    ]
    messages = [
        ChatMessage(role="user", content="plot it"),
        ChatMessage(
            role="assistant",
            content=None,
            tool_calls_json=json.dumps([tool_call("toolu_9", "plot", "{}")]),
        ),
        ChatMessage(
            role="tool", content=None, tool_call_id="toolu_9", content_parts_json=json.dumps(parts)
        ),
    ]
    await backend.complete(make_task(messages=messages))
    (result,) = upstream.requests[-1]["messages"][2]["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_9"
    assert [block["type"] for block in result["content"]] == ["text", "image"]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


@pytest.mark.parametrize(
    ("openai_choice", "anthropic_choice"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
        ),
    ],
    ids=["auto", "none", "required", "function"],
)
async def test_tools_and_tool_choice_are_mapped(
    backend: AnthropicBackend,
    upstream: FakeAnthropicUpstream,
    openai_choice: object,
    anthropic_choice: dict[str, Any],
) -> None:
    task = make_task(tools_json=json.dumps(TOOLS), tool_choice_json=json.dumps(openai_choice))
    await backend.complete(task)
    body = upstream.requests[-1]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "input_schema": TOOLS[0]["function"]["parameters"],
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == anthropic_choice


SAMPLING_EXTRA = {
    "user": "u-1",
    "top_k": 5,
    "logit_bias": {"50256": -100},
    "presence_penalty": 0.5,
    "parallel_tool_calls": False,
}


def sampling_task() -> InferenceTask:
    return make_task(
        temperature=1.5,
        top_p=0.9,
        stop=["END", "\n\n"],
        seed=7,
        tools_json=json.dumps(TOOLS),
        extra_json=json.dumps(SAMPLING_EXTRA),
    )


async def test_openai_only_fields_are_dropped_and_the_rest_mapped(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    await backend.complete(sampling_task())
    body = upstream.requests[-1]
    assert body["stop_sequences"] == ["END", "\n\n"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    dropped = {"seed", "logit_bias", "presence_penalty", "parallel_tool_calls", "user"}
    # The SDK's API version (2026-10-21) refuses sampling parameters even at their defaults.
    dropped |= {"temperature", "top_p", "top_k"}
    assert not dropped & set(body)
    assert upstream.headers[-1]["anthropic-version"] >= SAMPLING_REMOVED_IN


async def test_a_pinned_older_api_version_gets_the_sampling_params(
    upstream: FakeAnthropicUpstream,
) -> None:
    pinned = deployment(upstream.base_url).model_copy(update={"api_version": "2023-06-01"})
    adapter = AnthropicBackend(deployment=pinned)
    try:
        await adapter.complete(sampling_task())
    finally:
        await adapter.aclose()
    body = upstream.requests[-1]
    assert body["temperature"] == 1.0, "OpenAI's 0..2 range is clamped to Anthropic's 0..1"
    assert (body["top_p"], body["top_k"]) == (0.9, 5)
    assert upstream.headers[-1]["anthropic-version"] == "2023-06-01"


async def test_the_fake_refuses_sampling_params_like_the_current_api(
    upstream: FakeAnthropicUpstream,
) -> None:
    """Guards the fake itself, so the test above proves something about the real API."""
    client = anthropic.AsyncAnthropic(api_key="k", base_url=upstream.base_url, max_retries=0)
    try:
        with pytest.raises(anthropic.BadRequestError, match="temperature"):
            await client.messages.create(
                model="claude-test",
                max_tokens=4,
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"temperature": 0.5},
            )
    finally:
        await client.close()


async def test_max_tokens_defaults_when_the_caller_leaves_it_out(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    await backend.complete(make_task(max_tokens=None))
    assert upstream.requests[-1]["max_tokens"] == DEFAULT_MAX_TOKENS
    assert "temperature" not in upstream.requests[-1]


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "valid JSON object"),
        (
            {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}},
            '{"type":"object"}',
        ),
    ],
    ids=["json_object", "json_schema"],
)
async def test_json_mode_becomes_a_system_instruction(
    backend: AnthropicBackend,
    upstream: FakeAnthropicUpstream,
    response_format: dict[str, Any],
    expected: str,
) -> None:
    messages = [
        ChatMessage(role="system", content="You list planets."),
        ChatMessage(role="user", content="planets?"),
    ]
    await backend.complete(
        make_task(messages=messages, response_format_json=json.dumps(response_format))
    )
    system = upstream.requests[-1]["system"]
    assert system.startswith("You list planets.\n\n") and expected in system


async def test_the_key_comes_from_the_deployments_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-test-123")
    async with FakeAnthropicUpstream(api_key="sk-ant-test-123") as server:
        adapter = AnthropicBackend(deployment=deployment(server.base_url, key_env=KEY_ENV))
        try:
            await adapter.complete(make_task())
        finally:
            await adapter.aclose()
        headers = server.headers[-1]
        # Older SDKs send `x-api-key`, newer ones `Authorization: Bearer`; the API takes both.
        assert (
            headers.get("x-api-key") == "sk-ant-test-123"
            or headers.get("authorization") == "Bearer sk-ant-test-123"
        )
        assert headers.get("anthropic-version")
        assert headers.get("x-stainless-retry-count") == "0"


async def test_a_wrong_key_is_an_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-wrong")
    async with FakeAnthropicUpstream(api_key="sk-ant-right") as server:
        adapter = AnthropicBackend(deployment=deployment(server.base_url, key_env=KEY_ENV))
        try:
            with pytest.raises(BackendError) as caught:
                await adapter.complete(make_task())
        finally:
            await adapter.aclose()
    assert (caught.value.error_class, caught.value.status_code) == ("auth", 401)


BAD_MESSAGES = [
    pytest.param(
        [
            ChatMessage(
                role="user",
                content_parts_json=json.dumps([{"type": "input_audio", "input_audio": {}}]),
            )
        ],
        {},
        id="audio-part",
    ),
    pytest.param(
        [
            ChatMessage(
                role="user",
                content_parts_json=json.dumps(
                    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]
                ),
            )
        ],
        {},
        id="bad-base64",
    ),
    pytest.param(
        [
            ChatMessage(
                role="user",
                content_parts_json=json.dumps(
                    [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}]
                ),
            )
        ],
        {},
        id="image-type",
    ),
    pytest.param([ChatMessage(role="tool", content="42")], {}, id="tool-without-call-id"),
    pytest.param([ChatMessage(role="function", content="42")], {}, id="unknown-role"),
    pytest.param(
        [ChatMessage(role="assistant", tool_calls_json="[{")], {}, id="malformed-tool-calls"
    ),
    pytest.param(None, {"tools_json": "[not json"}, id="malformed-tools"),
    pytest.param(
        None, {"tools_json": json.dumps([{"type": "web_search"}])}, id="non-function-tool"
    ),
    pytest.param(
        None,
        {"tools_json": json.dumps(TOOLS), "tool_choice_json": json.dumps("sometimes")},
        id="tool-choice",
    ),
    pytest.param(None, {"extra_json": "[1]"}, id="extra-not-object"),
]


@pytest.mark.parametrize(("messages", "params"), BAD_MESSAGES)
async def test_requests_anthropic_cannot_take_are_bad_requests_before_any_call(
    backend: AnthropicBackend,
    upstream: FakeAnthropicUpstream,
    messages: list[ChatMessage] | None,
    params: dict[str, Any],
) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task(messages=messages, **params))
    assert (caught.value.error_class, caught.value.retriable) == ("bad_request", False)
    assert upstream.requests == []


# -- the response ---------------------------------------------------------------------------


async def test_complete_maps_text_finish_reason_and_usage(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    completion = await backend.complete(make_task("hello there"))
    assert completion.text == "echo: hello there"
    assert completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens) == (2, 3)
    assert completion.provider_model == "claude-test"
    assert completion.tool_calls_json is None
    assert upstream.requests[-1].get("stream") is not True


@pytest.mark.parametrize(
    ("params", "text", "finish_reason"),
    [
        ({"max_tokens": 2}, "echo: one", "length"),
        ({"stop": ["three"]}, "echo: one two", "stop"),
    ],
    ids=["max_tokens", "stop_sequence"],
)
async def test_stop_reasons_map_to_finish_reasons(
    backend: AnthropicBackend, params: dict[str, Any], text: str, finish_reason: str
) -> None:
    completion = await backend.complete(make_task("one two three four", **params))
    assert (completion.text, completion.finish_reason) == (text, finish_reason)


async def test_a_forced_tool_comes_back_as_openai_tool_calls(backend: AnthropicBackend) -> None:
    task = make_task(
        "find it", tools_json=json.dumps(TOOLS), tool_choice_json=json.dumps("required")
    )
    completion = await backend.complete(task)
    assert completion.finish_reason == "tool_calls" and completion.text is None
    (call,) = json.loads(completion.tool_calls_json or "null")
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert call["id"].startswith("toolu_")
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"text": "find it"}


RECORDED_MESSAGES = [
    pytest.param(
        "message_text.json",
        ("Hi! My name is Claude.", "stop", 2095, 503, "claude-sonnet-4-20250514"),
        None,
        id="text",
    ),
    pytest.param(
        "message_tool_use.json",
        (
            "I'll check the current weather in San Francisco for you.",
            "tool_calls",
            384,
            92,
            "claude-sonnet-4-20250514",
        ),
        [
            {
                "id": "toolu_01A09q90qw90lq917835lq9",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": json.dumps({"location": "San Francisco, CA", "unit": "celsius"}),
                },
            }
        ],
        id="tool_use",
    ),
    pytest.param(
        "message_cached_max_tokens.json",
        (
            "The first three planets are Mercury, Venus and",
            "length",
            21 + 188 + 1800,  # cache writes and reads count as prompt tokens, as in OpenAI
            10,
            "claude-3-5-haiku-20241022",
        ),
        None,
        id="cached-max_tokens",
    ),
    pytest.param(
        "message_refusal.json",
        ("", "content_filter", 17, 3, "claude-sonnet-4-20250514"),
        None,
        id="refusal",
    ),
]


@pytest.mark.parametrize(("fixture", "expected", "tool_calls"), RECORDED_MESSAGES)
async def test_recorded_messages_map_to_completions(
    backend: AnthropicBackend,
    upstream: FakeAnthropicUpstream,
    fixture: str,
    expected: tuple[str, str, int, int, str],
    tool_calls: list[dict[str, Any]] | None,
) -> None:
    upstream.script(Behaviour.recorded(fixture))
    completion = await backend.complete(make_task())
    got = (
        completion.text,
        completion.finish_reason,
        completion.prompt_tokens,
        completion.completion_tokens,
        completion.provider_model,
    )
    assert got == expected
    assert json.loads(completion.tool_calls_json or "null") == tool_calls


# -- streaming ----------------------------------------------------------------------------------


async def test_stream_deltas_concatenate_to_the_text_then_usage(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    deltas = await collect(backend.stream(make_task("a b c d")))
    *pieces, last = deltas
    assert len(pieces) >= 2 and all(d.finish_reason is None for d in pieces)
    assert "".join(d.text for d in deltas) == "echo: a b c d"
    assert last.text == "" and last.finish_reason == "stop"
    assert (last.prompt_tokens, last.completion_tokens, last.provider_model) == (
        4,
        5,
        "claude-test",
    )
    assert upstream.requests[-1]["stream"] is True


async def test_a_streamed_forced_tool_finishes_with_tool_calls(
    backend: AnthropicBackend,
) -> None:
    task = make_task("x", tools_json=json.dumps(TOOLS), tool_choice_json=json.dumps("required"))
    deltas = await collect(backend.stream(task))
    assert [d.text for d in deltas] == [""]
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("fixture", "text", "finish_reason", "usage", "model"),
    [
        ("stream_text.sse", "Hello!", "stop", (25, 15), "claude-sonnet-4-20250514"),
        (
            "stream_tool_use.sse",
            "Okay, let's check the weather for San Francisco, CA:",
            "tool_calls",
            (472, 89),
            "claude-sonnet-4-20250514",
        ),
    ],
    ids=["text", "tool_use"],
)
async def test_recorded_streams_map_to_deltas(
    backend: AnthropicBackend,
    upstream: FakeAnthropicUpstream,
    fixture: str,
    text: str,
    finish_reason: str,
    usage: tuple[int, int],
    model: str,
) -> None:
    upstream.script(Behaviour.recorded(fixture))
    *pieces, last = await collect(backend.stream(make_task()))
    assert "".join(d.text for d in pieces) == text
    assert last.finish_reason == finish_reason
    assert (last.prompt_tokens, last.completion_tokens, last.provider_model) == (*usage, model)


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour.overloaded_mid_stream(3), Behaviour.recorded("stream_error_overloaded.sse")],
    ids=["synthetic", "recorded"],
)
async def test_an_error_event_inside_a_stream_is_a_server_error(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream, behaviour: Behaviour
) -> None:
    upstream.script(behaviour)
    with pytest.raises(BackendError) as caught:
        await collect(backend.stream(make_task("a b c d")))
    error = caught.value
    assert (error.error_class, error.retriable, error.status_code) == ("server_error", True, 529)


# -- failures -------------------------------------------------------------------------------------

FAILURES = [
    pytest.param(Behaviour.error(429, retry_after="2"), "rate_limited", True, 2.0, id="429"),
    pytest.param(
        Behaviour.error(429, "monthly limit", error_code="enforced_spend_limit_reached"),
        "rate_limited",
        False,
        None,
        id="429-spend-limit",
    ),
    pytest.param(Behaviour.error(529, retry_after="1"), "server_error", True, 1.0, id="529"),
    pytest.param(Behaviour.error(500), "server_error", True, None, id="500"),
    pytest.param(Behaviour.error(503), "server_error", True, None, id="503"),
    pytest.param(
        Behaviour.error(400, "prompt is too long: 208127 tokens > 200000 maximum"),
        "context_too_long",
        False,
        None,
        id="400-prompt-too-long",
    ),
    pytest.param(
        Behaviour.error(
            400,
            "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000, "
            "decrease input length or `max_tokens` and try again",
        ),
        "context_too_long",
        False,
        None,
        id="400-exceed-context-limit",
    ),
    pytest.param(
        Behaviour.error(400, "Output blocked by content filtering policy"),
        "content_policy",
        False,
        None,
        id="400-content-filtering",
    ),
    pytest.param(
        Behaviour.error(400, "temperature: too high"), "bad_request", False, None, id="400"
    ),
    pytest.param(Behaviour.error(413), "bad_request", False, None, id="413"),
    pytest.param(Behaviour.error(401), "auth", False, None, id="401"),
    pytest.param(Behaviour.error(402), "auth", False, None, id="402-billing"),
    pytest.param(Behaviour.error(403), "auth", False, None, id="403"),
    pytest.param(Behaviour.error(404), "unknown", False, None, id="404"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("behaviour", "error_class", "retriable", "retry_after_s"), FAILURES)
async def test_http_errors_map_to_error_classes(
    backend: AnthropicBackend,
    upstream: FakeAnthropicUpstream,
    behaviour: Behaviour,
    error_class: str,
    retriable: bool,
    retry_after_s: float | None,
    stream: bool,
) -> None:
    upstream.script(behaviour)
    with pytest.raises(BackendError) as caught:
        if stream:
            await collect(backend.stream(make_task()))
        else:
            await backend.complete(make_task())
    error = caught.value
    assert (error.error_class, error.retriable) == (error_class, retriable)
    assert error.status_code == behaviour.status
    assert error.retry_after_s == retry_after_s
    assert len(upstream.requests) == 1, "the SDK must not retry: that is the router's job"


RECORDED_ERRORS = [
    ("error_invalid_request.json", 400, "bad_request"),
    ("error_prompt_too_long.json", 400, "context_too_long"),
    ("error_authentication.json", 401, "auth"),
    ("error_permission.json", 403, "auth"),
    ("error_not_found.json", 404, "unknown"),
    ("error_request_too_large.json", 413, "bad_request"),
    ("error_rate_limit.json", 429, "rate_limited"),
    ("error_spend_limit.json", 429, "rate_limited"),
    ("error_api.json", 500, "server_error"),
    ("error_overloaded.json", 529, "server_error"),
]


@pytest.mark.parametrize(("fixture", "status", "error_class"), RECORDED_ERRORS)
async def test_recorded_error_bodies_map_to_error_classes(
    backend: AnthropicBackend,
    upstream: FakeAnthropicUpstream,
    fixture: str,
    status: int,
    error_class: str,
) -> None:
    upstream.script(Behaviour.recorded(fixture, status=status))
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task())
    assert (caught.value.error_class, caught.value.status_code) == (error_class, status)
    message = load_json(fixture)["error"]["message"]
    assert message in str(caught.value), "the provider's message is kept for the event"


async def test_retry_after_as_an_http_date(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream
) -> None:
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 30, UTC)
    upstream.script(
        Behaviour.recorded(
            "error_rate_limit.json", status=429, retry_after=format_datetime(later, usegmt=True)
        )
    )
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task())
    assert caught.value.retry_after_s is not None and 20 < caught.value.retry_after_s <= 30


async def test_a_slow_upstream_times_out(upstream: FakeAnthropicUpstream) -> None:
    adapter = AnthropicBackend(deployment=deployment(upstream.base_url, timeout_s=0.2))
    upstream.script(Behaviour.slow(1.0))
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.complete(make_task())
    finally:
        await adapter.aclose()
    assert (caught.value.error_class, caught.value.retriable) == ("timeout", True)


async def test_a_stalled_stream_times_out(upstream: FakeAnthropicUpstream) -> None:
    adapter = AnthropicBackend(deployment=deployment(upstream.base_url, timeout_s=0.2))
    upstream.script(Behaviour.slow_stream(1.0))
    try:
        with pytest.raises(BackendError) as caught:
            await collect(adapter.stream(make_task("a b c")))
    finally:
        await adapter.aclose()
    assert (caught.value.error_class, caught.value.retriable) == ("timeout", True)


async def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = AnthropicBackend(deployment=deployment(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.complete(make_task())
    finally:
        await adapter.aclose()
    assert (caught.value.error_class, caught.value.retriable) == ("connection", True)


@pytest.mark.parametrize(("after_events", "stream"), [(0, False), (0, True), (4, True)])
async def test_a_dropped_connection_is_a_connection_error(
    backend: AnthropicBackend, upstream: FakeAnthropicUpstream, after_events: int, stream: bool
) -> None:
    upstream.script(Behaviour.drop(after_events))
    with pytest.raises(BackendError) as caught:
        if stream:
            await collect(backend.stream(make_task("a b c d")))
        else:
            await backend.complete(make_task())
    assert (caught.value.error_class, caught.value.retriable) == ("connection", True)


async def test_build_backend_picks_the_anthropic_adapter() -> None:
    adapter = build_backend(deployment("http://127.0.0.1:1"))
    assert isinstance(adapter, AnthropicBackend)
    await adapter.aclose()
