"""Finish: turn a backend's completion (or failure) into the events the rest of the system reads.

InferenceResult feeds routing statistics and cost; ResponseReady is what the bridge returns;
the Span times the inference stage. On failure the caller still gets an answer: a
RequestRejected on sg.responses with the provider's error class mapped to an HTTP status.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sluicegate.connectors.ports import Completion
from sluicegate.errors import BackendError
from sluicegate.processors.cost import cost_entry
from sluicegate.processors.envelope import Emit, child_envelope, now, sibling_envelope
from sluicegate.schemas.models import (
    ChatMessage,
    InferenceFailed,
    InferenceResult,
    InferenceTask,
    RequestRejected,
    ResponseReady,
    Span,
    TokenChunk,
    TokenUsage,
)
from sluicegate.settings import Deployment

PRODUCER = "inference"

_HTTP_STATUS = {
    "rate_limited": (429, "rate_limit_error"),
    "timeout": (504, "timeout"),
    "context_too_long": (400, "invalid_request_error"),
    "content_policy": (400, "invalid_request_error"),
    "bad_request": (400, "invalid_request_error"),
    "auth": (502, "upstream_error"),
}


class Finisher:
    """Pure event construction for the end of the inference stage."""

    def __init__(self, *, deployments: Mapping[str, Deployment] | None = None) -> None:
        self._deployments = deployments or {}

    def chunk(
        self,
        task: InferenceTask,
        index: int,
        text: str,
        *,
        finish_reason: str | None = None,
        usage: TokenUsage | None = None,
    ) -> Emit:
        event = TokenChunk(
            **child_envelope(task, producer=PRODUCER),
            index=index,
            delta=text,
            finish_reason=finish_reason,
            usage=usage,
            model=task.model,
        )
        return Emit("stream", task.request_id, event)

    def succeeded(
        self,
        task: InferenceTask,
        completion: Completion,
        *,
        started: datetime,
        latency_ms: float,
        ttft_ms: float | None = None,
    ) -> list[Emit]:
        envelope = child_envelope(task, producer=PRODUCER)
        message = ChatMessage(
            role="assistant", content=completion.text, tool_calls_json=completion.tool_calls_json
        )
        usage = TokenUsage(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=completion.prompt_tokens + completion.completion_tokens,
        )
        result = InferenceResult(
            **envelope,
            deployment=task.deployment,
            provider_model=completion.provider_model,
            message=message,
            finish_reason=completion.finish_reason,
            usage=usage,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            attempt=task.attempt,
        )
        response = ResponseReady(
            **sibling_envelope(result, producer=PRODUCER),
            model=task.model,
            deployment=task.deployment,
            provider_model=completion.provider_model,
            message=message,
            finish_reason=completion.finish_reason,
            usage=usage,
            latency_ms=latency_ms,
        )
        attributes = {
            "deployment": task.deployment,
            "prompt_tokens": str(usage.prompt_tokens),
            "completion_tokens": str(usage.completion_tokens),
        }
        emits = [
            Emit("responses", task.request_id, response),
            Emit("inference.results", task.request_id, result),
            self._span(result, started, "ok", attributes),
        ]
        deployment = self._deployments.get(task.deployment)
        if deployment is not None:
            emits.append(
                cost_entry(
                    result, model=task.model, deployment=deployment, api_key_id=task.api_key_id
                )
            )
        return emits

    def failed(
        self, task: InferenceTask, error: BackendError, *, started: datetime, latency_ms: float
    ) -> list[Emit]:
        failure = InferenceFailed(
            **child_envelope(task, producer=PRODUCER),
            deployment=task.deployment,
            error_class=error.error_class,
            message=str(error),
            status_code=error.status_code,
            retriable=error.retriable,
            retry_after_s=error.retry_after_s,
            latency_ms=latency_ms,
            attempt=task.attempt,
        )
        status, error_type = _HTTP_STATUS.get(error.error_class, (502, "upstream_error"))
        rejected = RequestRejected(
            **sibling_envelope(failure, producer=PRODUCER),
            stage=PRODUCER,
            error_type=error_type,
            code=error.error_class,
            message=f"Deployment {task.deployment} failed: {error}",
            http_status=status,
            retry_after_s=error.retry_after_s,
        )
        attributes = {"deployment": task.deployment, "error_class": error.error_class}
        return [
            Emit("responses", task.request_id, rejected),
            Emit("inference.results", task.request_id, failure),
            self._span(failure, started, "error", attributes),
        ]

    @staticmethod
    def _span(
        event: InferenceResult | InferenceFailed,
        started: datetime,
        status: str,
        attributes: dict[str, str],
    ) -> Emit:
        span = Span(
            **sibling_envelope(event, producer=PRODUCER),
            name=PRODUCER,
            start_ms=started,
            end_ms=now(),
            status=status,
            attributes=attributes,
        )
        return Emit("traces", event.trace_id, span)
