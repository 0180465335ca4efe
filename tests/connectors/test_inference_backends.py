"""The inference adapters against real servers: the OpenAI-compatible ones against the fake
upstream (a real HTTP server on loopback), llama.cpp with the real SmolLM2 model.

`backend: openai` has two adapters, the lean aiohttp one (`client: aiohttp`, the default) and the
`openai` SDK one (`client: sdk`); every OpenAI test runs against both (the `client` fixture), and
the parity tests run both on the same answers and compare what they send and return."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.inference_llamacpp import LlamaCppBackend
from sluicegate.connectors.inference_openai import OpenAICompatibleBackend
from sluicegate.connectors.inference_openai_http import OpenAIHttpBackend
from sluicegate.connectors.ports import Completion, Delta, InferenceBackend
from sluicegate.errors import BackendError
from sluicegate.schemas.models import ChatMessage, InferenceTask, SamplingParams
from sluicegate.settings import Deployment
from tests.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream

# The fixtures' servers and the tests share the session's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="session")


def make_task(
    content: str = "hello there",
    *,
    messages: list[ChatMessage] | None = None,
    stream: bool = False,
    **params: object,
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
        deployment="d",
        provider_model="p",
        pool="default",
        messages=messages or [ChatMessage(role="user", content=content)],
        params=SamplingParams(**{"max_tokens": 16, **params}),
        stream=stream,
    )


CLIENTS = {"aiohttp": OpenAIHttpBackend, "sdk": OpenAICompatibleBackend}


def openai_deployment(
    base_url: str, *, timeout_s: float = 10.0, client: str = "aiohttp"
) -> Deployment:
    return Deployment(
        name="d",
        backend="openai",
        provider_model="p",
        base_url=base_url,
        timeout_s=timeout_s,
        client=client,
    )


def openai_backend(base_url: str, client: str, *, timeout_s: float = 10.0) -> InferenceBackend:
    """The adapter `build_backend` gives an `openai` deployment with this `client`."""
    adapter = build_backend(openai_deployment(base_url, timeout_s=timeout_s, client=client))
    assert type(adapter) is CLIENTS[client]
    return adapter


async def collect(deltas: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in deltas]


@pytest_asyncio.fixture(loop_scope="session")
async def upstream() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream() as server:
        yield server


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest) -> str:
    """The `client` of the `openai` deployment under test: each test runs with both."""
    return str(request.param)


@pytest_asyncio.fixture(loop_scope="session")
async def backend(upstream: FakeOpenAIUpstream, client: str) -> AsyncIterator[InferenceBackend]:
    adapter = openai_backend(upstream.base_url, client)
    yield adapter
    await adapter.aclose()


# -- OpenAI-compatible: success ---------------------------------------------------------


async def test_complete_returns_text_finish_reason_usage_and_model(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream
) -> None:
    completion = await backend.complete(make_task("hello there"))
    assert completion.text == "echo: hello there"
    assert completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens) == (2, 3)
    assert completion.provider_model == "p"
    assert completion.tool_calls_json is None
    assert upstream.requests[-1]["stream"] is False


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    backend: InferenceBackend,
) -> None:
    completion = await backend.complete(make_task("one two three four", max_tokens=2))
    assert completion.text == "echo: one"
    assert completion.finish_reason == "length"


# A request with every kind of message and every sampling field the adapters translate.
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
PARTS = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
RICH_MESSAGES = [
    ChatMessage(role="system", content="be brief", name="rules"),
    ChatMessage(role="assistant", content=None, tool_calls_json=json.dumps([CALL])),
    ChatMessage(role="tool", content="42", tool_call_id="call_1"),
    ChatMessage(role="user", content=None, content_parts_json=json.dumps(PARTS)),
]


def rich_task(tools: list[dict[str, Any]], extra: dict[str, Any]) -> InferenceTask:
    return make_task(
        messages=RICH_MESSAGES,
        temperature=0.2,
        top_p=0.9,
        stop=["\n\n"],
        seed=7,
        response_format_json=json.dumps({"type": "json_object"}),
        tools_json=json.dumps(tools),
        tool_choice_json=json.dumps("auto"),
        extra_json=json.dumps(extra),
    )


async def test_the_request_carries_messages_params_and_extra_body(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    extra = {"user": "u-1", "logit_bias": {"50256": -100}, "stream_options": {"x": 1}}
    await backend.complete(rich_task(tools, extra))
    body = upstream.requests[-1]
    assert body["messages"] == [
        {"role": "system", "content": "be brief", "name": "rules"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        {"role": "user", "content": PARTS},
    ]
    assert body["model"] == "p"
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 16)
    assert (body["stop"], body["seed"]) == (["\n\n"], 7)
    assert body["response_format"] == {"type": "json_object"}
    assert (body["tools"], body["tool_choice"]) == (tools, "auto")
    assert (body["user"], body["logit_bias"]) == ("u-1", {"50256": -100})
    assert "stream_options" not in body


async def test_tool_calls_come_back_as_openai_json(backend: InferenceBackend) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    task = make_task(
        "find it", tools_json=json.dumps(tools), tool_choice_json=json.dumps("required")
    )
    completion = await backend.complete(task)
    assert completion.finish_reason == "tool_calls" and completion.text is None
    (call,) = json.loads(completion.tool_calls_json or "null")
    assert call["type"] == "function" and call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"text": "find it"}


async def test_stream_deltas_concatenate_to_the_text_then_usage(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream
) -> None:
    deltas = await collect(backend.stream(make_task("a b c d", stream=True)))
    *pieces, last = deltas
    assert len(pieces) >= 2 and all(d.finish_reason is None for d in pieces)
    assert "".join(d.text for d in deltas) == "echo: a b c d"
    assert last.text == "" and last.finish_reason == "stop"
    assert (last.prompt_tokens, last.completion_tokens, last.provider_model) == (4, 5, "p")
    assert upstream.requests[-1]["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_from_the_server_still_finishes(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream
) -> None:
    upstream.script(Behaviour(omit_usage=True))
    last = (await collect(backend.stream(make_task("x y"))))[-1]
    assert last.finish_reason == "stop"
    assert (last.prompt_tokens, last.completion_tokens) == (0, 0)


async def test_a_thread_served_upstream_answers_too(client: str) -> None:
    server = FakeOpenAIUpstream.start_in_thread()
    adapter = openai_backend(server.base_url, client)
    try:
        server.script(Behaviour.slow_stream(0.01))
        deltas = await collect(adapter.stream(make_task("from a thread")))
        assert "".join(d.text for d in deltas) == "echo: from a thread"
        assert len(server.requests) == 1
    finally:
        await adapter.aclose()
        server.stop()


# -- OpenAI-compatible: failures ----------------------------------------------------------

CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9000 tokens. Please reduce the length of the messages."
)
FAILURES = [
    pytest.param(Behaviour.error(429, retry_after="2"), "rate_limited", True, 2.0, id="429"),
    pytest.param(Behaviour.error(500), "server_error", True, None, id="500"),
    pytest.param(Behaviour.error(503), "server_error", True, None, id="503"),
    pytest.param(
        Behaviour.error(400, CONTEXT_MESSAGE, code="context_length_exceeded"),
        "context_too_long",
        False,
        None,
        id="400-context-length",
    ),
    pytest.param(
        Behaviour.error(400, "request too big for the context size", error_type="exceed"),
        "context_too_long",
        False,
        None,
        id="400-context-size-message",
    ),
    pytest.param(
        Behaviour.error(400, "refused", code="content_policy_violation"),
        "content_policy",
        False,
        None,
        id="400-content-policy",
    ),
    pytest.param(
        Behaviour.error(400, "filtered", code="content_filter"),
        "content_policy",
        False,
        None,
        id="400-content-filter",
    ),
    pytest.param(Behaviour.error(400, "bad temperature"), "bad_request", False, None, id="400"),
    pytest.param(Behaviour.error(422), "bad_request", False, None, id="422"),
    pytest.param(Behaviour.error(401), "auth", False, None, id="401"),
    pytest.param(Behaviour.error(403), "auth", False, None, id="403"),
    pytest.param(Behaviour.error(404), "unknown", False, None, id="404"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("behaviour", "error_class", "retriable", "retry_after_s"), FAILURES)
async def test_http_errors_map_to_error_classes(
    backend: InferenceBackend,
    upstream: FakeOpenAIUpstream,
    behaviour: Behaviour,
    error_class: str,
    retriable: bool,
    retry_after_s: float | None,
    stream: bool,
) -> None:
    upstream.script(behaviour)
    with pytest.raises(BackendError) as caught:
        if stream:
            await collect(backend.stream(make_task(stream=True)))
        else:
            await backend.complete(make_task())
    error = caught.value
    assert (error.error_class, error.retriable) == (error_class, retriable)
    assert error.status_code == behaviour.status
    assert error.retry_after_s == retry_after_s
    assert len(upstream.requests) == 1, "the SDK must not retry: that is the router's job"
    upstream.reset()


async def test_retry_after_as_an_http_date(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream
) -> None:
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 30, UTC)
    upstream.script(Behaviour.error(429, retry_after=format_datetime(later, usegmt=True)))
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task())
    assert caught.value.retry_after_s is not None and 20 < caught.value.retry_after_s <= 30


async def test_a_slow_upstream_times_out(upstream: FakeOpenAIUpstream, client: str) -> None:
    adapter = openai_backend(upstream.base_url, client, timeout_s=0.2)
    upstream.script(Behaviour.slow(1.0))
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.complete(make_task())
    finally:
        await adapter.aclose()
    assert (caught.value.error_class, caught.value.retriable) == ("timeout", True)


async def test_a_stalled_stream_times_out(upstream: FakeOpenAIUpstream, client: str) -> None:
    adapter = openai_backend(upstream.base_url, client, timeout_s=0.2)
    upstream.script(Behaviour.slow_stream(1.0))
    try:
        with pytest.raises(BackendError) as caught:
            await collect(adapter.stream(make_task("a b c")))
    finally:
        await adapter.aclose()
    assert (caught.value.error_class, caught.value.retriable) == ("timeout", True)


async def test_connection_refused_is_a_connection_error(client: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = openai_backend(f"http://127.0.0.1:{port}/v1", client)
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.complete(make_task())
    finally:
        await adapter.aclose()
    assert (caught.value.error_class, caught.value.retriable) == ("connection", True)


@pytest.mark.parametrize("after_chunks", [0, 2])
async def test_a_dropped_connection_is_a_connection_error(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream, after_chunks: int
) -> None:
    upstream.script(Behaviour.drop(after_chunks))
    with pytest.raises(BackendError) as caught:
        await collect(backend.stream(make_task("a b c d")))
    assert (caught.value.error_class, caught.value.retriable) == ("connection", True)


async def test_a_connection_dropped_before_the_answer_is_a_connection_error(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream
) -> None:
    upstream.script(Behaviour.drop(0))
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task())
    assert (caught.value.error_class, caught.value.retriable) == ("connection", True)
    assert len(upstream.requests) == 1, "nothing retries a POST: that is the router's job"
    upstream.reset()


async def read_until_failure(
    deltas: AsyncIterator[Delta],
) -> tuple[list[str], BackendError | None]:
    """The texts a stream yielded before it failed, and the failure."""
    texts: list[str] = []
    try:
        async for delta in deltas:
            texts.append(delta.text)
    except BackendError as exc:
        return texts, exc
    return texts, None


async def test_a_stream_cut_without_a_finish_reason_is_a_connection_error(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream
) -> None:
    upstream.script(Behaviour.cut(3))  # the role chunk, then two words, then a clean end
    texts, error = await read_until_failure(backend.stream(make_task("a b c d")))
    assert texts == ["echo:", " a"]
    assert error is not None and (error.error_class, error.retriable) == ("connection", True)


async def test_an_error_event_midstream_is_a_non_retriable_failure(
    backend: InferenceBackend, upstream: FakeOpenAIUpstream
) -> None:
    """What the SDK makes of an in-band `{"error": ...}` event (an `APIError`): a failure the
    planner does not retry on the same deployment (tests/e2e/test_midstream_failure.py)."""
    upstream.script(Behaviour.error_midstream(2, "the model crashed"))
    texts, error = await read_until_failure(backend.stream(make_task("a b c d")))
    assert texts == ["echo:"]
    assert error is not None and (error.error_class, error.retriable) == ("unknown", False)
    assert "the model crashed" in str(error)


async def test_malformed_json_fields_are_bad_requests(backend: InferenceBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task(tools_json="[not json"))
    assert caught.value.error_class == "bad_request"


@pytest.mark.unit
async def test_build_backend_picks_the_adapter_by_kind_and_client() -> None:
    url = "http://127.0.0.1:1/v1"
    default = build_backend(openai_deployment(url))
    sdk = build_backend(openai_deployment(url, client="sdk"))
    azure = build_backend(
        Deployment(name="a", backend="azure", provider_model="p", base_url=url, client="aiohttp")
    )
    local = build_backend(Deployment(name="l", backend="llamacpp", provider_model="smol"))
    assert Deployment(name="x", backend="openai", provider_model="p").client == "aiohttp"
    assert type(default) is OpenAIHttpBackend
    assert type(sdk) is OpenAICompatibleBackend
    assert type(azure) is OpenAICompatibleBackend, "azure always goes through the SDK"
    assert isinstance(local, LlamaCppBackend)
    for adapter in (default, sdk, azure, local):
        await adapter.aclose()


# -- the two OpenAI adapters side by side ---------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def both(upstream: FakeOpenAIUpstream) -> AsyncIterator[dict[str, InferenceBackend]]:
    adapters = {client: openai_backend(upstream.base_url, client) for client in CLIENTS}
    yield adapters
    for adapter in adapters.values():
        await adapter.aclose()


def same_call_ids(completion: Completion) -> Completion:
    """The fake numbers its answers, so the two adapters' tool calls differ in their ids only."""
    text = completion.tool_calls_json
    if text is None:
        return completion
    return replace(completion, tool_calls_json=re.sub(r"call_chatcmpl-fake-\d+", "call_", text))


LOOKUP = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
ANSWERS = [
    pytest.param({"content": "hello there"}, id="text"),
    pytest.param({"content": "one two three four", "max_tokens": 2}, id="length"),
    pytest.param(
        {
            "content": "find it",
            "tools_json": json.dumps(LOOKUP),
            "tool_choice_json": json.dumps("required"),
        },
        id="tool-call",
    ),
    pytest.param(
        {
            "content": "find that",
            "tools_json": json.dumps(LOOKUP),
            "tool_choice_json": json.dumps({"type": "function", "function": {"name": "lookup"}}),
        },
        id="named-tool-call",
    ),
]


@pytest.mark.parametrize("task_fields", ANSWERS)
async def test_both_adapters_return_equal_completions(
    both: dict[str, InferenceBackend], task_fields: dict[str, Any]
) -> None:
    task = make_task(**task_fields)
    completions = {client: await adapter.complete(task) for client, adapter in both.items()}
    assert same_call_ids(completions["aiohttp"]) == same_call_ids(completions["sdk"])
    if "tools_json" in task_fields:  # equal strings, not just equal JSON: the SDK's key order
        assert completions["sdk"].tool_calls_json is not None
        assert completions["sdk"].tool_calls_json.startswith('[{"id": "call_chatcmpl-fake-')


@pytest.mark.parametrize("task_fields", ANSWERS[:2])
async def test_both_adapters_stream_equal_deltas(
    both: dict[str, InferenceBackend], task_fields: dict[str, Any]
) -> None:
    task = make_task(stream=True, **task_fields)
    streams = {client: await collect(adapter.stream(task)) for client, adapter in both.items()}
    assert streams["aiohttp"] == streams["sdk"]
    assert streams["sdk"][-1].finish_reason is not None


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_both_adapters_send_the_same_body(
    both: dict[str, InferenceBackend], upstream: FakeOpenAIUpstream, stream: bool
) -> None:
    extra = {
        "user": "u-1",
        "logit_bias": {"50256": -100},
        "top_k": 5,  # unknown to the SDK's signature: only extra_body carries it
        "temperature": 0.7,  # extra_body is merged last, so it wins over the sampling params
        "stream": not stream,  # reserved: never taken from the caller
        "stream_options": {"x": 1},
        "sluicegate": {"deployment": "other"},
    }
    task = rich_task(LOOKUP, extra)
    bodies = {}
    for client, adapter in both.items():
        upstream.reset()
        await (collect(adapter.stream(task)) if stream else adapter.complete(task))
        (bodies[client],) = upstream.requests
    assert bodies["aiohttp"] == bodies["sdk"]
    body = bodies["sdk"]
    assert (body["top_k"], body["temperature"], body["user"]) == (5, 0.7, "u-1")
    assert body["stream"] is stream and "sluicegate" not in body
    assert body.get("stream_options") == ({"include_usage": True} if stream else None)


FAILING_WAYS = [
    *(pytest.param(p.values[0], id=f"http-{p.id}") for p in FAILURES),
    pytest.param(Behaviour.drop(0), id="drop-before-answer"),
    pytest.param(Behaviour.drop(2), id="drop-midstream"),
    pytest.param(Behaviour.cut(2), id="cut-midstream"),
    pytest.param(Behaviour.error_midstream(2), id="error-event-midstream"),
]


@pytest.mark.parametrize("behaviour", FAILING_WAYS)
async def test_both_adapters_fail_alike(
    both: dict[str, InferenceBackend], upstream: FakeOpenAIUpstream, behaviour: Behaviour
) -> None:
    """Same class, retriability, status, Retry-After and text before the failure; the same
    wording too when the upstream answered (a transport error names aiohttp's or httpx's
    exception)."""
    seen = {}
    for client, adapter in both.items():
        upstream.script(behaviour)
        texts, error = await read_until_failure(adapter.stream(make_task("a b c d")))
        assert error is not None, client
        seen[client] = (
            texts,
            error.error_class,
            error.retriable,
            error.status_code,
            error.retry_after_s,
            str(error) if error.status_code or error.error_class == "unknown" else None,
        )
    assert seen["aiohttp"] == seen["sdk"]
    upstream.reset()


# -- llama.cpp ----------------------------------------------------------------------------

LOCAL = Deployment(name="local-smollm2", backend="llamacpp", provider_model="smollm2")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def llama() -> AsyncIterator[LlamaCppBackend]:
    adapter = LlamaCppBackend(deployment=LOCAL)
    yield adapter
    await adapter.aclose()


@pytest.mark.slow
async def test_llama_completes_with_token_counts(llama: LlamaCppBackend) -> None:
    completion = await llama.complete(make_task("Say hi to Ada.", max_tokens=16, seed=1))
    assert completion.text and completion.text.strip()
    assert completion.prompt_tokens > 0 and 0 < completion.completion_tokens <= 16
    assert completion.finish_reason in {"stop", "length"}
    assert completion.provider_model == "smollm2"


@pytest.mark.slow
async def test_llama_streams_deltas_then_usage(llama: LlamaCppBackend) -> None:
    deltas = await collect(llama.stream(make_task("Name three colours.", max_tokens=16, seed=1)))
    *pieces, last = deltas
    assert len(pieces) >= 2 and "".join(d.text for d in pieces).strip()
    assert last.finish_reason in {"stop", "length"}
    assert last.prompt_tokens and last.prompt_tokens > 0
    assert last.completion_tokens and 0 < last.completion_tokens <= 16


@pytest.mark.slow
async def test_llama_serves_concurrent_calls_and_early_stream_exits(
    llama: LlamaCppBackend,
) -> None:
    stream = llama.stream(make_task("Count to ten.", max_tokens=64))
    first = await anext(stream)
    await stream.aclose()  # leaves mid-generation; the model must be free again
    assert first.text
    results = await asyncio.gather(
        *(llama.complete(make_task(f"Say {word}.", max_tokens=8)) for word in ("a", "b", "c"))
    )
    assert all(r.completion_tokens > 0 for r in results)


@pytest.mark.slow
async def test_llama_refuses_a_prompt_longer_than_its_context() -> None:
    adapter = LlamaCppBackend(deployment=LOCAL, n_ctx=64)
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.complete(make_task("word " * 2000))
        assert caught.value.error_class == "bad_request"
        assert "context" in str(caught.value)
        with pytest.raises(BackendError) as streamed:
            await collect(adapter.stream(make_task("word " * 2000)))
        assert streamed.value.error_class == "bad_request"
    finally:
        await adapter.aclose()


async def test_llama_without_its_model_file_is_unavailable(tmp_path: Path) -> None:
    adapter = LlamaCppBackend(deployment=LOCAL, model_path=tmp_path / "missing.gguf")
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.complete(make_task())
    finally:
        await adapter.aclose()
    assert caught.value.error_class == "unavailable"
    assert "pip install" in str(caught.value)
