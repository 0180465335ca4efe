"""One tiny real call per hosted provider, run only when its credentials are in the environment.

They prove what the loopback fakes cannot: that the adapters still match the live APIs. Each
costs a few tokens. Models default to small ones and can be overridden:

    OPENAI_API_KEY                                   [SLUICEGATE_LIVE_OPENAI_MODEL]
    AZURE_OPENAI_API_KEY + AZURE_OPENAI_ENDPOINT     [AZURE_OPENAI_DEPLOYMENT, OPENAI_API_VERSION]
    ANTHROPIC_API_KEY                                [SLUICEGATE_LIVE_ANTHROPIC_MODEL]

    pytest tests/connectors/test_live_providers.py -m slow
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest

from sluicegate.connectors.inference import build_backend
from sluicegate.schemas.models import ChatMessage, InferenceTask, SamplingParams
from sluicegate.settings import Deployment

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


def needs(*variables: str) -> pytest.MarkDecorator:
    missing = [name for name in variables if not os.environ.get(name)]
    return pytest.mark.skipif(bool(missing), reason=f"set {' and '.join(missing)} to run")


def tiny_task(provider_model: str) -> InferenceTask:
    return InferenceTask(
        event_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC),
        tenant_id="live-test",
        request_id=str(uuid.uuid4()),
        trace_id="0" * 32,
        span_id="0" * 16,
        producer="test",
        model="live",
        deployment="live",
        provider_model=provider_model,
        pool="default",
        messages=[
            ChatMessage(role="system", content="You answer with one word."),
            ChatMessage(role="user", content="Reply with the word: pong"),
        ],
        params=SamplingParams(max_tokens=16),
    )


async def call_once(deployment: Deployment) -> None:
    backend = build_backend(deployment)
    try:
        completion = await backend.complete(tiny_task(deployment.provider_model))
    finally:
        await backend.aclose()
    assert completion.text and "pong" in completion.text.lower()
    assert completion.finish_reason in {"stop", "length"}
    assert completion.prompt_tokens > 0 and 0 < completion.completion_tokens <= 16
    assert completion.provider_model


@needs("OPENAI_API_KEY")
async def test_openai_answers() -> None:
    model = os.environ.get("SLUICEGATE_LIVE_OPENAI_MODEL", "gpt-4o-mini")
    await call_once(
        Deployment(
            name="live-openai", backend="openai", provider_model=model, api_key_env="OPENAI_API_KEY"
        )
    )


@needs("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT")
async def test_azure_openai_answers() -> None:
    await call_once(
        Deployment(
            name="live-azure",
            backend="azure",
            provider_model=os.environ.get("AZURE_OPENAI_DEPLOYMENT", "gpt-4o-mini"),
            base_url=os.environ["AZURE_OPENAI_ENDPOINT"],
            api_key_env="AZURE_OPENAI_API_KEY",
            api_version=os.environ.get("OPENAI_API_VERSION"),
        )
    )


@needs("ANTHROPIC_API_KEY")
async def test_anthropic_answers() -> None:
    model = os.environ.get("SLUICEGATE_LIVE_ANTHROPIC_MODEL", "claude-haiku-4-5")
    await call_once(
        Deployment(
            name="live-anthropic",
            backend="anthropic",
            provider_model=model,
            api_key_env="ANTHROPIC_API_KEY",
        )
    )
