"""Small builders for test events, so tests state only what matters to them."""

from __future__ import annotations

import uuid
from typing import Any

from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.schemas.models import ChatMessage, InferenceTask, RequestReceived, SamplingParams


def envelope(**overrides: Any) -> dict[str, Any]:
    base = {
        "event_id": new_event_id(),
        "occurred_at": now(),
        "tenant_id": "acme",
        "request_id": str(uuid.uuid4()),
        "trace_id": new_trace_id(),
        "span_id": new_span_id(),
        "producer": "test",
    }
    return {**base, **overrides}


def request(
    model: str = "smollm2-135m",
    *,
    stream: bool = False,
    api_key_id: str | None = None,
    **overrides: Any,
) -> RequestReceived:
    return RequestReceived(
        **envelope(**overrides),
        model=model,
        messages=[ChatMessage(role="user", content="Say hi")],
        params=SamplingParams(temperature=0.0, max_tokens=16),
        stream=stream,
        api_key_id=api_key_id,
    )


def task(
    deployment: str = "local-smollm2",
    *,
    stream: bool = False,
    deadline_ms: int | None = None,
    fallbacks: tuple[str, ...] = (),
) -> InferenceTask:
    return InferenceTask(
        **envelope(),
        model="smollm2-135m",
        deployment=deployment,
        provider_model="p",
        pool="default",
        messages=[ChatMessage(role="user", content="Say hi")],
        params=SamplingParams(max_tokens=16),
        stream=stream,
        deadline_ms=deadline_ms,
        fallbacks=list(fallbacks),
    )
