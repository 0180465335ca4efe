"""The OpenAI adapter in its Azure OpenAI form, against a small fake Azure resource on loopback.

Azure differs from OpenAI on the wire in the URL (`/openai/deployments/<deployment>/...` with an
`api-version` query), the `api-key` header, and extra fields in its answers (content-filter
results, a first stream chunk without choices); the answers served here are the recorded shapes
in tests/fixtures/providers/openai/.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from aiohttp import web

from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.inference_openai import (
    AZURE_DEFAULT_API_VERSION,
    OpenAICompatibleBackend,
)
from sluicegate.connectors.ports import Delta
from sluicegate.errors import BackendError, ConfigurationError
from sluicegate.schemas.models import ChatMessage, InferenceTask, SamplingParams
from sluicegate.settings import Deployment

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers" / "openai"
KEY_ENV = "SLUICEGATE_TEST_AZURE_KEY"
AZURE_DEPLOYMENT = "gpt4o-prod"


@dataclass
class Answer:
    """What the fake Azure resource answers next: a fixture file, with a status and headers."""

    fixture: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


class FakeAzure:
    """`POST /openai/deployments/{deployment}/chat/completions`, answering recorded fixtures."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: list[Answer] = []
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.endpoint = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(
            Received(
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        if "api-version" not in request.query:
            error = {"code": "404", "message": "Resource not found"}
            return web.json_response({"error": error}, status=404)
        answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            name = "azure_chat_completion_stream.sse" if body.get("stream") else None
            answer = Answer(name or "azure_chat_completion.json")
        text = (FIXTURES / answer.fixture).read_text()
        if answer.fixture.endswith(".sse"):
            response = web.StreamResponse(
                status=answer.status,
                headers={"Content-Type": "text/event-stream", **answer.headers},
            )
            await response.prepare(request)
            for frame in text.split("\n\n"):
                if frame.strip():
                    await response.write(f"{frame.strip()}\n\n".encode())
            await response.write_eof()
            return response
        return web.json_response(
            json.loads(text), status=answer.status, headers=answer.headers or None
        )


def make_task(**params: Any) -> InferenceTask:
    return InferenceTask(
        event_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC),
        tenant_id="t",
        request_id="r",
        trace_id="0" * 32,
        span_id="0" * 16,
        producer="test",
        model="gpt-4o",
        deployment="azure-gpt4o",
        provider_model=AZURE_DEPLOYMENT,
        pool="default",
        messages=[ChatMessage(role="user", content="hello")],
        params=SamplingParams(**{"max_tokens": 16, **params}),
    )


def azure_deployment(endpoint: str | None, *, api_version: str | None = None) -> Deployment:
    return Deployment(
        name="azure-gpt4o",
        backend="azure",
        provider_model=AZURE_DEPLOYMENT,
        base_url=endpoint,
        api_key_env=KEY_ENV,
        api_version=api_version,
        timeout_s=10.0,
    )


async def collect(deltas: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in deltas]


@pytest_asyncio.fixture(loop_scope="session")
async def azure(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeAzure]:
    monkeypatch.setenv(KEY_ENV, "azure-key-123")
    server = FakeAzure()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def backend(azure: FakeAzure) -> AsyncIterator[OpenAICompatibleBackend]:
    adapter = OpenAICompatibleBackend(deployment=azure_deployment(azure.endpoint))
    yield adapter
    await adapter.aclose()


async def test_the_request_goes_to_the_deployment_path_with_api_key_and_version(
    backend: OpenAICompatibleBackend, azure: FakeAzure
) -> None:
    completion = await backend.complete(make_task(temperature=0.1))
    (received,) = azure.received
    assert received.path == f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
    assert received.query == {"api-version": AZURE_DEFAULT_API_VERSION}
    assert received.headers["api-key"] == "azure-key-123"
    assert "authorization" not in received.headers
    assert received.body["model"] == AZURE_DEPLOYMENT
    assert received.body["temperature"] == 0.1
    assert completion.text == "Hello from Azure."
    assert (completion.finish_reason, completion.prompt_tokens, completion.completion_tokens) == (
        "stop",
        9,
        4,
    )
    assert completion.provider_model == "gpt-4o-2024-11-20"


async def test_a_pinned_api_version_is_sent(azure: FakeAzure) -> None:
    adapter = OpenAICompatibleBackend(
        deployment=azure_deployment(f"{azure.endpoint}/", api_version="2025-04-01-preview")
    )
    try:
        await adapter.complete(make_task())
    finally:
        await adapter.aclose()
    assert azure.received[-1].query == {"api-version": "2025-04-01-preview"}
    assert azure.received[-1].path == f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"


async def test_a_stream_with_azures_filter_chunk_yields_text_then_usage(
    backend: OpenAICompatibleBackend, azure: FakeAzure
) -> None:
    *pieces, last = await collect(backend.stream(make_task()))
    assert "".join(d.text for d in pieces) == "Hello from Azure."
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("stop", 9, 4)
    assert last.provider_model == "gpt-4o-2024-11-20"
    assert azure.received[-1].body["stream_options"] == {"include_usage": True}


async def test_tool_calls_come_back_as_openai_json(
    backend: OpenAICompatibleBackend, azure: FakeAzure
) -> None:
    azure.answers.append(Answer("chat_completion_tool_calls.json"))
    completion = await backend.complete(make_task())
    assert completion.finish_reason == "tool_calls" and completion.text is None
    (call,) = json.loads(completion.tool_calls_json or "null")
    assert call == {
        "id": "call_abc123",
        "type": "function",
        "function": {
            "name": "get_weather",
            "arguments": '{"location":"San Francisco, CA","unit":"celsius"}',
        },
    }


@pytest.mark.parametrize(
    ("answer", "error_class", "retriable", "retry_after_s"),
    [
        pytest.param(
            Answer("azure_error_content_filter.json", status=400),
            "content_policy",
            False,
            None,
            id="400-content-filter",
        ),
        pytest.param(
            Answer(
                "azure_error_rate_limit.json",
                status=429,
                headers={"retry-after": "6", "retry-after-ms": "6500"},
            ),
            "rate_limited",
            True,
            6.5,
            id="429",
        ),
    ],
)
async def test_azure_errors_map_to_error_classes(
    backend: OpenAICompatibleBackend,
    azure: FakeAzure,
    answer: Answer,
    error_class: str,
    retriable: bool,
    retry_after_s: float | None,
) -> None:
    azure.answers.append(answer)
    with pytest.raises(BackendError) as caught:
        await backend.complete(make_task())
    error = caught.value
    assert (error.error_class, error.retriable, error.status_code) == (
        error_class,
        retriable,
        answer.status,
    )
    assert error.retry_after_s == retry_after_s
    assert len(azure.received) == 1, "the SDK must not retry: that is the router's job"


async def test_an_azure_deployment_without_an_endpoint_fails_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        build_backend(azure_deployment(None))


async def test_build_backend_gives_azure_the_openai_adapter_over_the_azure_client(
    azure: FakeAzure,
) -> None:
    adapter = build_backend(azure_deployment(azure.endpoint))
    assert isinstance(adapter, OpenAICompatibleBackend)
    assert isinstance(adapter._client, openai.AsyncAzureOpenAI)
    await adapter.aclose()
