"""The Bedrock Converse adapter against the fake bedrock-runtime (a real HTTP server on loopback
that boto3 signs for and parses, event-stream framing included): the OpenAI -> Converse request
mapping, the answer -> Completion mapping, streaming, the translation of every failure into an
error class, and that no call blocks the event loop. A live test against AWS closes the file."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.inference_bedrock import BedrockConverseBackend
from sluicegate.connectors.ports import Delta
from sluicegate.errors import BackendError
from sluicegate.schemas.models import ChatMessage, InferenceTask, SamplingParams
from sluicegate.settings import Deployment
from tests.fakes.bedrock_upstream import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    Behaviour,
    FakeBedrockUpstream,
    load_json,
)

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
# The AWS environment as it was before this module replaced it, for the live test.
REAL_ENV = dict(os.environ)
LIVE_MODEL_ENV = "SLUICEGATE_LIVE_BEDROCK_MODEL"
_AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)


@pytest.fixture(scope="module", autouse=True)
def _aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy credentials for the fake, and nothing of the machine's own AWS setup: no profile
    files, no instance metadata lookups, no retry settings."""
    nowhere = tmp_path_factory.mktemp("aws") / "missing"
    with pytest.MonkeyPatch.context() as patch:
        for name in _AWS_VARIABLES:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        patch.setenv("AWS_CONFIG_FILE", str(nowhere))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


def make_task(
    content: str = "hello there",
    *,
    messages: list[ChatMessage] | None = None,
    provider_model: str = MODEL,
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
        deployment="bedrock",
        provider_model=provider_model,
        pool="default",
        messages=messages or [ChatMessage(role="user", content=content)],
        params=SamplingParams(**{"max_tokens": 16, **params}),
    )


def deployment(
    endpoint_url: str | None, *, timeout_s: float = 10.0, region: str | None = REGION
) -> Deployment:
    return Deployment(
        name="bedrock",
        backend="bedrock",
        provider_model=MODEL,
        base_url=endpoint_url,
        region=region,
        timeout_s=timeout_s,
    )


async def collect(deltas: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in deltas]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def upstream(_aws_env: None) -> AsyncIterator[FakeBedrockUpstream]:
    async with FakeBedrockUpstream() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def backend(upstream: FakeBedrockUpstream) -> AsyncIterator[BedrockConverseBackend]:
    adapter = BedrockConverseBackend(deployment=deployment(upstream.endpoint_url))
    yield adapter
    await adapter.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def make_backend(
    upstream: FakeBedrockUpstream,
) -> AsyncIterator[Any]:
    """Backends of other deployments (timeouts, regions), closed after the test."""
    made: list[BedrockConverseBackend] = []

    def make(**kwargs: Any) -> BedrockConverseBackend:
        kwargs.setdefault("endpoint_url", upstream.endpoint_url)
        adapter = BedrockConverseBackend(
            deployment=deployment(kwargs.pop("endpoint_url"), **kwargs)
        )
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.aclose()


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeBedrockUpstream) -> None:
    upstream.reset()


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def function_tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": f"the {name} tool"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


# -- the request ----------------------------------------------------------------------------


async def test_system_messages_are_lifted_and_same_role_turns_merged(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
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
    assert body["system"] == [{"text": "Be brief."}, {"text": "Answer in English."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "first"}, {"text": "second"}]},
        {"role": "assistant", "content": [{"text": "ok"}]},
        {"role": "user", "content": [{"text": "third"}]},
    ]
    assert body["inferenceConfig"] == {"maxTokens": 16}
    assert "modelId" not in body, "the model id travels in the path"
    assert upstream.operations[-1] == ("converse", MODEL)


async def test_the_request_is_signed_for_bedrock_in_the_deployments_region(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    await backend.complete(make_task())
    authorization = upstream.headers[-1]["authorization"]
    assert authorization.startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"
    ) and authorization.split(",")[0].endswith(f"/{REGION}/bedrock/aws4_request")
    assert "sluicegate" in upstream.headers[-1]["user-agent"]


async def test_an_inference_profile_arn_reaches_the_path_whole(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-v1:0"
    completion = await backend.complete(make_task(provider_model=arn))
    assert upstream.operations[-1] == ("converse", arn)
    assert completion.provider_model == arn


async def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
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
    tools = [function_tool("get_weather", {"type": "object"}), function_tool("get_time")]
    await backend.complete(make_task(messages=messages, tools_json=json.dumps(tools)))
    assistant, results = upstream.requests[-1]["messages"][1:]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"text": "Checking."},
            {
                "toolUse": {
                    "toolUseId": "call_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                }
            },
            {"toolUse": {"toolUseId": "call_2", "name": "get_time", "input": {}}},
        ],
    }
    # The results of parallel calls share one user turn, ahead of the user's own text.
    assert results == {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": "call_1", "content": [{"text": "18C, sunny"}]}},
            {"toolResult": {"toolUseId": "call_2", "content": [{"text": "14:05"}]}},
            {"text": "thanks, and tomorrow?"},
        ],
    }


async def test_image_data_urls_become_image_bytes(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        {"type": "image_url", "image_url": f"data:image/jpeg;base64,{PNG_1PX}"},
    ]
    user = ChatMessage(role="user", content=None, content_parts_json=json.dumps(parts))
    await backend.complete(make_task(messages=[user]))
    text, png, jpeg = upstream.requests[-1]["messages"][0]["content"]
    assert text == {"text": "what is this?"}
    # On the wire a blob is base64 again: the adapter handed boto3 the decoded bytes.
    assert png == {"image": {"format": "png", "source": {"bytes": PNG_1PX}}}
    assert jpeg["image"]["format"] == "jpeg"
    assert base64.b64decode(png["image"]["source"]["bytes"]).startswith(b"\x89PNG")


async def test_a_tool_result_with_an_image_keeps_its_blocks(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
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
            tool_calls_json=json.dumps([tool_call("tooluse_9", "plot", "{}")]),
        ),
        ChatMessage(role="tool", tool_call_id="tooluse_9", content_parts_json=json.dumps(parts)),
    ]
    task = make_task(messages=messages, tools_json=json.dumps([function_tool("plot")]))
    await backend.complete(task)
    assistant, result = upstream.requests[-1]["messages"][1:]
    assert assistant["content"] == [
        {"toolUse": {"toolUseId": "tooluse_9", "name": "plot", "input": {}}}
    ]
    assert result["content"] == [
        {
            "toolResult": {
                "toolUseId": "tooluse_9",
                "content": [
                    {"text": "the chart"},
                    {"image": {"format": "png", "source": {"bytes": PNG_1PX}}},
                ],
            }
        }
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"auto": {}}),
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "lookup"}}, {"tool": {"name": "lookup"}}),
    ],
    ids=["default", "auto", "required", "named"],
)
async def test_tools_and_tool_choice_are_mapped(
    backend: BedrockConverseBackend,
    upstream: FakeBedrockUpstream,
    choice: Any,
    expected: dict[str, Any],
) -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tools = [function_tool("search", schema), function_tool("lookup")]
    params: dict[str, Any] = {"tools_json": json.dumps(tools)}
    if choice is not None:
        params["tool_choice_json"] = json.dumps(choice)
    await backend.complete(make_task(**params))
    config = upstream.requests[-1]["toolConfig"]
    assert config["tools"] == [
        {
            "toolSpec": {
                "name": "search",
                "description": "the search tool",
                "inputSchema": {"json": schema},
            }
        },
        {
            "toolSpec": {
                "name": "lookup",
                "description": "the lookup tool",
                "inputSchema": {"json": {"type": "object", "properties": {}}},
            }
        },
    ]
    assert config["toolChoice"] == expected


async def test_tool_choice_none_leaves_the_tools_out_unless_the_history_needs_them(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    tools = json.dumps([function_tool("plot")])
    await backend.complete(make_task(tools_json=tools, tool_choice_json='"none"'))
    assert "toolConfig" not in upstream.requests[-1]
    messages = [
        ChatMessage(role="user", content="plot it"),
        ChatMessage(role="assistant", tool_calls_json=json.dumps([tool_call("t1", "plot", "")])),
        ChatMessage(role="tool", content="done", tool_call_id="t1"),
    ]
    await backend.complete(
        make_task(messages=messages, tools_json=tools, tool_choice_json='"none"')
    )
    assert upstream.requests[-1]["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "plot",
                    "description": "the plot tool",
                    "inputSchema": {"json": {"type": "object", "properties": {}}},
                }
            }
        ]
    }


async def test_sampling_params_are_mapped_and_openai_only_fields_dropped(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    extra = {
        "logit_bias": {"50256": -100},
        "n": 1,
        "presence_penalty": 0.5,
        "parallel_tool_calls": False,
        "user": "u-1",
        "additionalModelRequestFields": {"top_k": 40},
        "requestMetadata": {"tenant": "t"},
    }
    task = make_task(
        "a b c",
        temperature=1.5,
        top_p=0.9,
        stop=["END", "STOP"],
        seed=7,
        max_tokens=64,
        extra_json=json.dumps(extra),
    )
    await backend.complete(task)
    body = upstream.requests[-1]
    assert body["inferenceConfig"] == {
        "maxTokens": 64,
        "temperature": 1.0,  # OpenAI's 0..2 clamped to Converse's 0..1
        "topP": 0.9,
        "stopSequences": ["END", "STOP"],
    }
    assert body["additionalModelRequestFields"] == {"top_k": 40}
    assert body["requestMetadata"] == {"tenant": "t"}
    assert set(body) == {
        "messages",
        "inferenceConfig",
        "additionalModelRequestFields",
        "requestMetadata",
    }


async def test_max_tokens_is_left_to_the_model_when_unset(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    await backend.complete(make_task(max_tokens=None))
    assert "inferenceConfig" not in upstream.requests[-1]


async def test_json_mode_becomes_a_system_instruction(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="hi"),
    ]
    await backend.complete(
        make_task(messages=messages, response_format_json=json.dumps(response_format))
    )
    system = upstream.requests[-1]["system"]
    assert system[0] == {"text": "Be brief."}
    assert "valid JSON object" in system[1]["text"]
    assert json.dumps(schema, separators=(",", ":")) in system[1]["text"]


BAD_REQUESTS = [
    pytest.param(
        [ChatMessage(role="function", content="x")], {}, "role 'function'", id="unknown-role"
    ),
    pytest.param(
        [
            ChatMessage(
                role="user",
                content_parts_json=json.dumps(
                    [
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/bmp;base64,{PNG_1PX}"},
                        }
                    ]
                ),
            )
        ],
        {},
        "image/bmp",
        id="image-type",
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
        "not valid base64",
        id="image-base64",
    ),
    pytest.param(
        [
            ChatMessage(
                role="user",
                content_parts_json=json.dumps([{"type": "input_audio", "input_audio": {}}]),
            )
        ],
        {},
        "input_audio",
        id="audio-part",
    ),
    pytest.param([ChatMessage(role="tool", content="x")], {}, "tool_call_id", id="tool-without-id"),
    pytest.param(
        None,
        {"tools_json": json.dumps([{"type": "retrieval"}])},
        "function tools only",
        id="non-function-tool",
    ),
    pytest.param(None, {"tools_json": "{not json"}, "not valid JSON", id="tools-not-json"),
    pytest.param(
        None,
        {"response_format_json": json.dumps({"type": "grammar"})},
        "grammar",
        id="response-format",
    ),
]


async def test_an_image_url_is_unsupported_here_so_routing_can_fall_back(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    url_part = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    messages = [ChatMessage(role="user", content_parts_json=json.dumps(url_part))]
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task(messages=messages))
    assert caught.value.error_class == "unsupported" and not caught.value.retriable
    assert "does not fetch image URLs" in str(caught.value)
    assert upstream.requests == []


@pytest.mark.parametrize(("messages", "params", "fragment"), BAD_REQUESTS)
async def test_requests_converse_cannot_take_are_bad_requests_before_any_call(
    backend: BedrockConverseBackend,
    upstream: FakeBedrockUpstream,
    messages: list[ChatMessage] | None,
    params: dict[str, Any],
    fragment: str,
) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task(messages=messages, **params))
    assert caught.value.error_class == "bad_request" and not caught.value.retriable
    assert fragment in str(caught.value)
    assert upstream.requests == []


async def test_a_request_the_api_refuses_is_a_bad_request(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    # A conversation that starts with the assistant: Converse refuses it (the fake as well).
    messages = [ChatMessage(role="assistant", content="hi"), ChatMessage(role="user", content="x")]
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task(messages=messages))
    assert (caught.value.error_class, caught.value.status_code) == ("bad_request", 400)
    assert "must start with a user message" in str(caught.value)


# -- the response ---------------------------------------------------------------------------


async def test_complete_maps_text_finish_reason_and_usage(
    backend: BedrockConverseBackend,
) -> None:
    messages = [
        ChatMessage(role="system", content="be nice"),
        ChatMessage(role="user", content="hello there"),
    ]
    completion = await backend.complete(make_task(messages=messages))
    assert completion.text == "echo: hello there"
    assert completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens) == (4, 3)
    assert completion.provider_model == MODEL
    assert completion.tool_calls_json is None


@pytest.mark.parametrize(
    ("params", "text", "finish_reason"),
    [
        ({"stop": ["c"]}, "echo: a b", "stop"),
        ({"max_tokens": 2}, "echo: a", "length"),
    ],
    ids=["stop_sequence", "max_tokens"],
)
async def test_stop_reasons_map_to_finish_reasons(
    backend: BedrockConverseBackend, params: dict[str, Any], text: str, finish_reason: str
) -> None:
    completion = await backend.complete(make_task("a b c d", **params))
    assert (completion.text, completion.finish_reason) == (text, finish_reason)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("malformed_model_output", "stop"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_every_stop_reason_has_a_finish_reason(
    backend: BedrockConverseBackend,
    upstream: FakeBedrockUpstream,
    stop_reason: str,
    finish_reason: str,
    stream: bool,
) -> None:
    upstream.script(Behaviour(stop_reason=stop_reason))
    if stream:
        deltas = await collect(backend.stream(make_task()))
        assert deltas[-1].finish_reason == finish_reason
    else:
        completion = await backend.complete(make_task())
        assert completion.finish_reason == finish_reason


async def test_a_forced_tool_comes_back_as_openai_tool_calls(
    backend: BedrockConverseBackend,
) -> None:
    task = make_task(
        "find cats",
        tools_json=json.dumps([function_tool("search")]),
        tool_choice_json='"required"',
    )
    completion = await backend.complete(task)
    assert completion.text is None, "a tools-only turn has no content, as in OpenAI"
    assert completion.finish_reason == "tool_calls"
    [call] = json.loads(completion.tool_calls_json or "[]")
    assert call["type"] == "function" and call["id"].startswith("tooluse_")
    assert call["function"] == {"name": "search", "arguments": json.dumps({"text": "find cats"})}


RECORDED_ANSWERS = [
    ("converse_text.json", "Hello! How can I help you today?", "stop", (12, 11), None),
    (
        "converse_tool_use.json",
        "I'll look up the current weather in Paris for you.",
        "tool_calls",
        (391, 87),
        [
            {
                "id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": json.dumps({"location": "Paris, France", "unit": "celsius"}),
                },
            }
        ],
    ),
    # Cached prompt tokens count as prompt tokens, as in OpenAI's usage: 20 + 2048 + 72.
    (
        "converse_cached_max_tokens.json",
        "The history of the Roman Empire spans",
        "length",
        (2140, 8),
        None,
    ),
    (
        "converse_guardrail_intervened.json",
        "Sorry, the model cannot answer this question.",
        "content_filter",
        (0, 0),
        None,
    ),
    # Reasoning blocks are not part of the answer's text.
    ("converse_reasoning.json", "2 + 2 = 4", "stop", (45, 52), None),
]


@pytest.mark.parametrize(("fixture", "text", "finish", "usage", "calls"), RECORDED_ANSWERS)
async def test_recorded_answers_map_to_completions(
    backend: BedrockConverseBackend,
    upstream: FakeBedrockUpstream,
    fixture: str,
    text: str,
    finish: str,
    usage: tuple[int, int],
    calls: list[dict[str, Any]] | None,
) -> None:
    upstream.script(Behaviour.recorded(fixture))
    completion = await backend.complete(make_task())
    assert (completion.text, completion.finish_reason) == (text, finish)
    assert (completion.prompt_tokens, completion.completion_tokens) == usage
    assert completion.tool_calls_json == (json.dumps(calls) if calls else None)


# -- streaming ------------------------------------------------------------------------------------


async def test_stream_deltas_concatenate_to_the_text_then_usage(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    deltas = await collect(backend.stream(make_task("one two three")))
    *pieces, last = deltas
    assert [d.text for d in pieces] == ["echo:", " one", " two", " three"]
    assert all(d.finish_reason is None for d in pieces)
    assert last == Delta(
        text="",
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=4,
        provider_model=MODEL,
    )
    assert upstream.operations[-1] == ("converse-stream", MODEL)


async def test_a_streamed_forced_tool_finishes_with_tool_calls(
    backend: BedrockConverseBackend,
) -> None:
    task = make_task(
        "find cats",
        tools_json=json.dumps([function_tool("search")]),
        tool_choice_json=json.dumps({"type": "function", "function": {"name": "search"}}),
    )
    deltas = await collect(backend.stream(task))
    assert [d.text for d in deltas] == [""]
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("fixture", "text", "finish_reason", "usage"),
    [
        ("stream_text.json", "Hello! How can I help you today?", "stop", (12, 11)),
        ("stream_tool_use.json", "Let me check the weather.", "tool_calls", (391, 64)),
        (
            "stream_cached_max_tokens.json",
            "The history of the Roman Empire spans",
            "length",
            (2140, 8),
        ),
    ],
)
async def test_recorded_streams_map_to_deltas(
    backend: BedrockConverseBackend,
    upstream: FakeBedrockUpstream,
    fixture: str,
    text: str,
    finish_reason: str,
    usage: tuple[int, int],
) -> None:
    upstream.script(Behaviour.recorded(fixture))
    deltas = await collect(backend.stream(make_task()))
    assert "".join(d.text for d in deltas) == text
    last = deltas[-1]
    assert last.finish_reason == finish_reason
    assert (last.prompt_tokens, last.completion_tokens) == usage


@pytest.mark.parametrize(
    ("code", "message", "error_class", "retriable", "status"),
    [
        ("throttlingException", None, "rate_limited", True, 429),
        ("internalServerException", "boom", "server_error", True, 500),
        ("serviceUnavailableException", "busy", "server_error", True, 503),
        ("modelStreamErrorException", "stream broke", "server_error", True, 424),
        (
            "validationException",
            "Input is too long for requested model.",
            "context_too_long",
            False,
            400,
        ),
        ("validationException", "bad field", "bad_request", False, 400),
    ],
)
async def test_an_exception_inside_a_stream_maps_to_an_error_class(
    backend: BedrockConverseBackend,
    upstream: FakeBedrockUpstream,
    code: str,
    message: str | None,
    error_class: str,
    retriable: bool,
    status: int,
) -> None:
    upstream.script(Behaviour.exception_mid_stream(code, message, after=3))
    received: list[Delta] = []
    with pytest.raises(BackendError) as caught:
        async for delta in backend.stream(make_task("a b c d")):
            received.append(delta)
    error = caught.value
    assert (error.error_class, error.retriable, error.status_code) == (
        error_class,
        retriable,
        status,
    )
    assert [d.text for d in received] == ["echo:", " a"], "the deltas before it were delivered"


async def test_a_stream_ending_without_message_stop_is_a_connection_error(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    upstream.script(Behaviour(truncate_after=3))
    with pytest.raises(BackendError) as caught:
        await collect(backend.stream(make_task("a b c d")))
    assert (caught.value.error_class, caught.value.retriable) == ("connection", True)


async def test_leaving_a_stream_early_releases_it(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    upstream.script(Behaviour.slow_stream(0.05))
    stream = backend.stream(make_task("a b c d e f g h"))
    first = await anext(stream)
    await stream.aclose()
    assert first.text == "echo:"
    # The connection went back to the pool (or was closed): the next call is unaffected.
    assert (await backend.complete(make_task("again"))).text == "echo: again"


# -- failures -------------------------------------------------------------------------------------

FAILURES = [
    pytest.param(
        Behaviour.error(429, "ThrottlingException", retry_after="2"),
        "rate_limited",
        True,
        2.0,
        id="throttling",
    ),
    pytest.param(
        Behaviour.error(400, "ServiceQuotaExceededException"),
        "rate_limited",
        False,
        None,
        id="quota",
    ),
    pytest.param(
        Behaviour.error(503, "ServiceUnavailableException"),
        "server_error",
        True,
        None,
        id="unavailable",
    ),
    pytest.param(
        Behaviour.error(500, "InternalServerException"), "server_error", True, None, id="internal"
    ),
    pytest.param(
        Behaviour.error(429, "ModelNotReadyException"), "server_error", True, None, id="not-ready"
    ),
    pytest.param(
        Behaviour.error(424, "ModelErrorException"), "server_error", True, None, id="model-error"
    ),
    pytest.param(
        Behaviour.error(502, "BadGatewayUnknown"), "server_error", True, None, id="5xx-unknown-code"
    ),
    pytest.param(
        Behaviour.error(408, "ModelTimeoutException"), "timeout", True, None, id="model-timeout"
    ),
    pytest.param(
        Behaviour.error(403, "AccessDeniedException"), "auth", False, None, id="access-denied"
    ),
    pytest.param(
        Behaviour.error(403, "UnrecognizedClientException"), "auth", False, None, id="unrecognized"
    ),
    pytest.param(Behaviour.error(403, "ExpiredTokenException"), "auth", False, None, id="expired"),
    pytest.param(
        Behaviour.error(400, "ValidationException", "Input is too long for requested model."),
        "context_too_long",
        False,
        None,
        id="input-too-long",
    ),
    pytest.param(
        Behaviour.error(400, "ValidationException", "too many input tokens: 300000 > 200000"),
        "context_too_long",
        False,
        None,
        id="too-many-tokens",
    ),
    pytest.param(
        Behaviour.error(
            400, "ValidationException", "This request exceeds the model's context window."
        ),
        "context_too_long",
        False,
        None,
        id="context-window",
    ),
    pytest.param(
        Behaviour.error(400, "ValidationException", "Output blocked by content filtering policy"),
        "content_policy",
        False,
        None,
        id="content-filtering",
    ),
    pytest.param(
        Behaviour.error(400, "ValidationException", "temperature: too high"),
        "bad_request",
        False,
        None,
        id="validation",
    ),
    pytest.param(
        Behaviour.error(404, "ResourceNotFoundException"), "unknown", False, None, id="not-found"
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("behaviour", "error_class", "retriable", "retry_after_s"), FAILURES)
async def test_error_answers_map_to_error_classes(
    backend: BedrockConverseBackend,
    upstream: FakeBedrockUpstream,
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
    assert len(upstream.requests) == 1, "botocore must not retry: that is the router's job"


RECORDED_ERRORS = [
    ("error_throttling.json", "rate_limited"),
    ("error_service_unavailable.json", "server_error"),
    ("error_internal_server.json", "server_error"),
    ("error_model_not_ready.json", "server_error"),
    ("error_model_timeout.json", "timeout"),
    ("error_model_error.json", "server_error"),
    ("error_access_denied.json", "auth"),
    ("error_unrecognized_client.json", "auth"),
    ("error_expired_token.json", "auth"),
    ("error_input_too_long.json", "context_too_long"),
    ("error_prompt_too_long.json", "context_too_long"),
    ("error_validation.json", "bad_request"),
    ("error_on_demand_unsupported.json", "bad_request"),
    ("error_resource_not_found.json", "unknown"),
    ("error_service_quota.json", "rate_limited"),
]


@pytest.mark.parametrize(("fixture", "error_class"), RECORDED_ERRORS)
async def test_recorded_errors_map_to_error_classes(
    backend: BedrockConverseBackend,
    upstream: FakeBedrockUpstream,
    fixture: str,
    error_class: str,
) -> None:
    upstream.script(Behaviour.recorded(fixture))
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task())
    recorded = load_json(fixture)
    assert (caught.value.error_class, caught.value.status_code) == (error_class, recorded["status"])
    assert recorded["body"]["message"] in str(caught.value), "the provider's message is kept"
    assert recorded["type"] in str(caught.value)


async def test_a_slow_upstream_times_out(make_backend: Any, upstream: FakeBedrockUpstream) -> None:
    adapter = make_backend(timeout_s=0.3)
    upstream.script(Behaviour.slow(1.5))
    with pytest.raises(BackendError) as caught:
        await adapter.complete(make_task())
    assert (caught.value.error_class, caught.value.retriable) == ("timeout", True)
    assert len(upstream.requests) == 1, "no retry after a read timeout either"


async def test_a_stalled_stream_times_out(make_backend: Any, upstream: FakeBedrockUpstream) -> None:
    adapter = make_backend(timeout_s=0.3)
    upstream.script(Behaviour.slow_stream(1.5))
    with pytest.raises(BackendError) as caught:
        await collect(adapter.stream(make_task("a b c")))
    assert (caught.value.error_class, caught.value.retriable) == ("timeout", True)


async def test_connection_refused_is_a_connection_error(make_backend: Any) -> None:
    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = make_backend(endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError) as caught:
        await adapter.complete(make_task())
    assert (caught.value.error_class, caught.value.retriable) == ("connection", True)


@pytest.mark.parametrize(("after_events", "stream"), [(0, False), (0, True), (3, True)])
async def test_a_dropped_connection_is_a_connection_error(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream, after_events: int, stream: bool
) -> None:
    upstream.script(Behaviour.drop(after_events))
    with pytest.raises(BackendError) as caught:
        if stream:
            await collect(backend.stream(make_task("a b c d")))
        else:
            await backend.complete(make_task())
    assert (caught.value.error_class, caught.value.retriable) == ("connection", True)
    assert len(upstream.requests) == 1


async def test_missing_credentials_are_an_auth_error_with_a_clear_message(
    make_backend: Any, upstream: FakeBedrockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    adapter = make_backend()
    with pytest.raises(BackendError) as caught:
        await adapter.complete(make_task())
    assert (caught.value.error_class, caught.value.retriable) == ("auth", False)
    assert "no usable AWS credentials" in str(caught.value)
    assert upstream.requests == [], "nothing unsigned is sent"


async def test_wrong_credentials_are_an_auth_error(
    make_backend: Any, upstream: FakeBedrockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOTHERKEY00000000")
    adapter = make_backend()
    with pytest.raises(BackendError) as caught:
        await collect(adapter.stream(make_task()))
    assert (caught.value.error_class, caught.value.status_code) == ("auth", 403)


async def test_a_missing_region_is_an_auth_error_naming_the_fix(make_backend: Any) -> None:
    adapter = make_backend(region=None)
    with pytest.raises(BackendError) as caught:
        await adapter.complete(make_task())
    assert caught.value.error_class == "auth"
    assert "region" in str(caught.value)


# -- the event loop -------------------------------------------------------------------------------


async def _ticks_while(call: Any) -> tuple[int, Any]:
    """Run `call` while a task ticks every 10 ms; the ticks made while it ran."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await call
    finally:
        done.set()
        await task
    return ticks, result


async def test_a_slow_call_never_blocks_the_event_loop(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    upstream.script(Behaviour.slow(0.5))
    ticks, completion = await _ticks_while(backend.complete(make_task()))
    assert completion.text == "echo: hello there"
    assert ticks >= 25, f"the loop stalled while boto3 waited ({ticks} ticks in 0.5 s)"


async def test_a_slow_stream_never_blocks_the_event_loop(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    upstream.script(Behaviour.slow_stream(0.1))
    ticks, deltas = await _ticks_while(collect(backend.stream(make_task("a b c d"))))
    assert "".join(d.text for d in deltas) == "echo: a b c d"
    assert ticks >= 30, f"the loop stalled while the stream was read ({ticks} ticks)"


async def test_concurrent_calls_run_in_parallel(
    backend: BedrockConverseBackend, upstream: FakeBedrockUpstream
) -> None:
    upstream.script(*[Behaviour.slow(0.4)] * 8)
    started = time.monotonic()
    results = await asyncio.gather(*(backend.complete(make_task(f"n{i}")) for i in range(8)))
    assert sorted(r.text for r in results) == sorted(f"echo: n{i}" for i in range(8))
    assert time.monotonic() - started < 1.6, "calls were serialised"


async def test_build_backend_picks_the_bedrock_adapter() -> None:
    adapter = build_backend(deployment("http://127.0.0.1:1"))
    assert isinstance(adapter, BedrockConverseBackend)
    await adapter.aclose()


# -- live -----------------------------------------------------------------------------------------


def _live_ready() -> bool:
    has_credentials = bool(
        (REAL_ENV.get("AWS_ACCESS_KEY_ID") and REAL_ENV.get("AWS_SECRET_ACCESS_KEY"))
        or REAL_ENV.get("AWS_PROFILE")
        or REAL_ENV.get("AWS_BEARER_TOKEN_BEDROCK")
        or REAL_ENV.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        or REAL_ENV.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        or REAL_ENV.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    )
    return has_credentials and bool(REAL_ENV.get(LIVE_MODEL_ENV))


@pytest.mark.slow
@pytest.mark.skipif(
    not _live_ready(), reason=f"needs AWS credentials and {LIVE_MODEL_ENV} (a model id or profile)"
)
async def test_live_bedrock_converse_and_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """One real call of each API, against the account and region of the environment."""
    for name in _AWS_VARIABLES:  # the machine's own AWS setup, not the fake's
        if name in REAL_ENV:
            monkeypatch.setenv(name, REAL_ENV[name])
        else:
            monkeypatch.delenv(name, raising=False)
    model = REAL_ENV[LIVE_MODEL_ENV]
    region = REAL_ENV.get("AWS_REGION") or REAL_ENV.get("AWS_DEFAULT_REGION") or REGION
    adapter = BedrockConverseBackend(
        deployment=Deployment(
            name="live-bedrock",
            backend="bedrock",
            provider_model=model,
            region=region,
            timeout_s=60.0,
        )
    )
    try:
        task = make_task("Reply with the single word: pong", provider_model=model, max_tokens=16)
        completion = await adapter.complete(task)
        assert completion.text and completion.finish_reason in ("stop", "length")
        assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
        deltas = await collect(adapter.stream(task))
        assert "".join(d.text for d in deltas).strip()
        last = deltas[-1]
        assert last.finish_reason in ("stop", "length")
        assert (last.prompt_tokens or 0) > 0 and (last.completion_tokens or 0) > 0
    finally:
        await adapter.aclose()
