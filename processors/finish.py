"""Finish: turn a backend's completion (or failure) into the events the rest of the system reads.

InferenceResult feeds routing statistics and cost; ResponseReady is what the bridge returns;
the Span times the inference stage. On failure the attempt is an InferenceFailed; then either
the next attempt (a retry or a fallback, as a new InferenceTask) or, when the planner gives up,
a RequestRejected on sg.responses with an HTTP status, so the caller always gets an answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sluicegate.connectors.ports import Completion
from sluicegate.errors import BackendError
from sluicegate.processors.audit import guard_fact
from sluicegate.processors.cost import cost_entry, usd
from sluicegate.processors.envelope import Emit, child_envelope, now, sibling_envelope, span_emit
from sluicegate.processors.guard_output import (
    OutputBlock,
    OutputContext,
    OutputDecision,
    OutputGuard,
)
from sluicegate.processors.guard_stream import StreamHoldback
from sluicegate.processors.priority import priority_of
from sluicegate.processors.resilience import Fallback, GiveUp, Retry
from sluicegate.schemas.models import (
    CacheFill,
    ChatMessage,
    InferenceFailed,
    InferenceResult,
    InferenceTask,
    ProbeStarted,
    RequestRejected,
    ResponseReady,
    TokenChunk,
    TokenUsage,
)
from sluicegate.settings import Deployment

PRODUCER = "inference"

# An answer a filter cut short is not one to serve again.
NOT_CACHED = frozenset({"content_filter"})
_ERROR_TYPE = {
    "rate_limited": "rate_limit_error",
    "timeout": "timeout",
    "expired": "timeout",
    "context_too_long": "invalid_request_error",
    "content_policy": "invalid_request_error",
    "bad_request": "invalid_request_error",
    "unsupported": "invalid_request_error",
}


@dataclass(frozen=True, slots=True)
class Guarded:
    """The output guard's decision on an answer and when the check began. ``rejected``: its
    block already went out on sg.responses (a held-back stream is ended as soon as it is
    blocked, so the caller is not kept waiting for the rest of a withheld answer)."""

    decision: OutputDecision
    started: datetime
    rejected: bool = False


class Finisher:
    """Pure event construction for the end of the inference stage."""

    def __init__(
        self,
        *,
        deployments: Mapping[str, Deployment] | None = None,
        output_guard: OutputGuard | None = None,
    ) -> None:
        self._deployments = deployments or {}
        self._output_guard = output_guard if output_guard and output_guard.active else None

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
            citations_json=task.citations_json if finish_reason is not None else None,
        )
        return Emit("stream", task.request_id, event)

    def holdback(self, task: InferenceTask) -> StreamHoldback | None:
        """The hold-back a streamed answer to this task needs (guard_stream.py); None: its
        chunks go out as they come."""
        if self._output_guard is None:
            return None
        return StreamHoldback.of(self._output_guard, OutputContext.of(task))

    def check(
        self, task: InferenceTask, message: ChatMessage, finish_reason: str | None
    ) -> Guarded | None:
        """The output guard's decision on a whole answer; None when nothing applies to it."""
        if self._output_guard is None:
            return None
        context = OutputContext.of(task)
        if not self._output_guard.applies_to(context):
            return None
        started = now()
        return Guarded(
            self._output_guard.check(message, context, finish_reason=finish_reason), started
        )

    def withheld(self, task: InferenceTask, decision: OutputDecision) -> Emit:
        """A held-back stream's block, sent at once: the caller's stream ends with this error
        and never receives the text that caused it (the result and its span follow later)."""
        assert decision.block is not None
        rejected = _withheld(child_envelope(task, producer=PRODUCER), decision.block)
        return Emit("responses", task.request_id, rejected)

    def succeeded(
        self,
        task: InferenceTask,
        completion: Completion,
        *,
        started: datetime,
        latency_ms: float,
        ttft_ms: float | None = None,
        checked: Guarded | None = None,
    ) -> list[Emit]:
        """The answer's events. ``checked``: the guard already decided (a held-back stream);
        otherwise the guard runs here on the whole answer."""
        envelope = child_envelope(task, producer=PRODUCER)
        message = ChatMessage(
            role="assistant", content=completion.text, tool_calls_json=completion.tool_calls_json
        )
        guarded = checked or self.check(task, message, completion.finish_reason)
        if guarded is not None:
            # What the log keeps is what the caller may see: the masked answer, never the raw.
            message = guarded.decision.message
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
            citations_json=task.citations_json,  # the sources admission retrieved (RAG)
            prompt_ref=task.prompt_ref,
        )
        attributes = {
            "deployment": task.deployment,
            "prompt_tokens": str(usage.prompt_tokens),
            "completion_tokens": str(usage.completion_tokens),
        }
        emits = [
            Emit("inference.results", task.deployment, result),
            self._span(result, started, "ok", attributes),
        ]
        blocked = False
        if guarded is not None:
            decision = guarded.decision
            blocked = decision.block is not None
            emits.append(self._guard_span(result, decision, guarded.started))
            fact = guard_fact(result, decision.attributes, stage="output", producer=PRODUCER)
            if fact is not None:
                emits.append(fact)
            if decision.block is not None and not guarded.rejected:
                withheld = _withheld(sibling_envelope(result, producer=PRODUCER), decision.block)
                emits.insert(0, Emit("responses", task.request_id, withheld))
        if not blocked:
            emits.insert(0, Emit("responses", task.request_id, response))
        deployment = self._deployments.get(task.deployment)
        if deployment is not None:  # a withheld answer was still paid for
            emits.append(cost_entry(result, task=task, deployment=deployment))
        cacheable = completion.finish_reason not in NOT_CACHED and not blocked
        if task.cache_key is not None and cacheable:
            emits.append(self._cache_fill(task, response, deployment))
        return emits

    @staticmethod
    def _guard_span(result: InferenceResult, decision: OutputDecision, started: datetime) -> Emit:
        """The output guard as a stage of its own in the waterfall, under the inference span."""
        return span_emit(
            child_envelope(result, producer=PRODUCER),
            name="output_guard",
            started=started,
            status="error" if decision.block is not None else "ok",
            attributes=decision.attributes,
        )

    @staticmethod
    def _cache_fill(
        task: InferenceTask, response: ResponseReady, deployment: Deployment | None
    ) -> Emit:
        """Back to the tenant's partition, where admission keeps the cache: the key admission
        derived at the miss travels with the task, so nothing is embedded twice."""
        usage = response.usage
        fill = CacheFill(
            **sibling_envelope(response, producer=PRODUCER),
            cache_key_json=task.cache_key or "",
            content=response.message.content,
            tool_calls_json=response.message.tool_calls_json,
            finish_reason=response.finish_reason,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            deployment=response.deployment,
            provider_model=response.provider_model,
            usd=usd(
                deployment,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
            if deployment is not None
            else 0.0,
            latency_ms=response.latency_ms,
        )
        return Emit("cache", task.tenant_id, fill)

    def failed(
        self, task: InferenceTask, error: BackendError, *, started: datetime, latency_ms: float
    ) -> tuple[InferenceFailed, list[Emit]]:
        """The attempt's failure event and span; what happens next is the planner's decision."""
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
        attributes = {
            "deployment": task.deployment,
            "error_class": error.error_class,
            "attempt": str(task.attempt),
        }
        return failure, [
            Emit("inference.results", task.deployment, failure),
            self._span(failure, started, "error", attributes),
        ]

    def probe_started(self, task: InferenceTask) -> Emit:
        probe = ProbeStarted(
            **child_envelope(task, producer=PRODUCER),
            deployment=task.deployment,
            attempt=task.attempt,
        )
        return Emit("health.outcomes", task.deployment, probe)

    def next_attempt(
        self, task: InferenceTask, failure: InferenceFailed, decision: Retry | Fallback
    ) -> Emit:
        """The next attempt as its own task event, on the pool topic of the deployment it names.

        A new task rather than an in-process loop: every attempt is on the log, a crash between
        attempts loses nothing, and a fallback into another pool reaches that pool's workers.
        """
        envelope = child_envelope(failure, producer=PRODUCER)
        if isinstance(decision, Retry):
            update = {
                "attempt": task.attempt + 1,
                "deployment_attempt": task.deployment_attempt + 1,
                "not_before_ms": decision.not_before_ms,
            }
        else:
            target = self._deployments[decision.deployment]
            # A batch request stays on the batch lane whichever deployment serves it.
            batch = priority_of(task.params.extra_json) == "batch"
            update = {
                "attempt": task.attempt + 1,
                "deployment": target.name,
                "provider_model": target.provider_model,
                "pool": task.pool if batch else target.pool,
                "fallbacks": list(decision.remaining_chain),
                "deployment_attempt": 1,
                "not_before_ms": None,
            }
        following = task.model_copy(update={**envelope, **update})
        return Emit(f"inference.{following.pool}", task.request_id, following)

    def gave_up(self, task: InferenceTask, failure: InferenceFailed, decision: GiveUp) -> Emit:
        error_type = _ERROR_TYPE.get(decision.error_class, "upstream_error")
        rejected = RequestRejected(
            **sibling_envelope(failure, producer=PRODUCER),
            stage=PRODUCER,
            error_type=error_type,
            code=decision.error_class,
            message=decision.message or f"Deployment {task.deployment} failed: {failure.message}",
            http_status=decision.http_status,
            retry_after_s=failure.retry_after_s if decision.http_status == 429 else None,
        )
        return Emit("responses", task.request_id, rejected)

    @staticmethod
    def _span(
        event: InferenceResult | InferenceFailed,
        started: datetime,
        status: str,
        attributes: dict[str, str],
    ) -> Emit:
        envelope = sibling_envelope(event, producer=PRODUCER)
        return span_emit(
            envelope, name=PRODUCER, started=started, status=status, attributes=attributes
        )


def _withheld(envelope: dict[str, Any], block: OutputBlock) -> RequestRejected:
    """The final result of an answer the output guard withholds."""
    return RequestRejected(
        **envelope,
        stage="output_guard",
        error_type=block.error_type,
        code=block.code,
        message=block.message,
        http_status=block.http_status,
    )
