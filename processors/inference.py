"""The inference stage: call the backend a task names and say what happened, as events.

An async generator of `Emit`s so that streamed TokenChunks leave as they are produced; the
agent around it only publishes. Tested with a fake backend, no broker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping

from sluicegate.connectors.ports import Completion, InferenceBackend
from sluicegate.errors import BackendError
from sluicegate.processors.envelope import Emit, now
from sluicegate.processors.finish import Finisher
from sluicegate.schemas.models import InferenceTask, TokenUsage
from sluicegate.settings import Deployment


class InferenceStage:
    """InferenceTask in → TokenChunks (when streaming), then the result and response events."""

    def __init__(
        self,
        *,
        backends: Mapping[str, InferenceBackend],
        deployments: Mapping[str, Deployment] | None = None,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self._backends = backends
        self._finisher = Finisher(deployments=deployments)
        self._clock_ms = clock_ms

    async def run(self, task: InferenceTask) -> AsyncIterator[Emit]:
        started = now()
        t0 = time.perf_counter()
        backend = self._backends.get(task.deployment)
        try:
            if backend is None:
                raise BackendError(
                    f"no backend serves deployment {task.deployment!r} here",
                    error_class="unavailable",
                )
            if task.deadline_ms is not None and self._clock_ms() > task.deadline_ms:
                raise BackendError(
                    "the request's deadline passed before inference started", error_class="timeout"
                )
            if task.stream:
                completion, ttft_ms = None, None
                async for emit_or_completion in self._stream(task, backend, t0):
                    if isinstance(emit_or_completion, Emit):
                        yield emit_or_completion
                    else:
                        completion, ttft_ms = emit_or_completion
                assert completion is not None  # _stream always ends with the completion
            else:
                completion, ttft_ms = await backend.complete(task), None
        except BackendError as error:
            latency_ms = (time.perf_counter() - t0) * 1000
            for emit in self._finisher.failed(task, error, started=started, latency_ms=latency_ms):
                yield emit
            return
        latency_ms = (time.perf_counter() - t0) * 1000
        for emit in self._finisher.succeeded(
            task, completion, started=started, latency_ms=latency_ms, ttft_ms=ttft_ms
        ):
            yield emit

    async def _stream(
        self, task: InferenceTask, backend: InferenceBackend, t0: float
    ) -> AsyncIterator[Emit | tuple[Completion, float | None]]:
        """Chunks as they come; finally the whole completion (for the journal) and the TTFT."""
        parts: list[str] = []
        index = 0
        ttft_ms: float | None = None
        finish_reason, prompt_tokens, completion_tokens, provider_model = "stop", 0, 0, ""
        async for delta in backend.stream(task):
            if delta.text:
                if ttft_ms is None:
                    ttft_ms = (time.perf_counter() - t0) * 1000
                parts.append(delta.text)
                yield self._finisher.chunk(task, index, delta.text)
                index += 1
            if delta.finish_reason is not None:
                finish_reason = delta.finish_reason
                prompt_tokens = delta.prompt_tokens or 0
                completion_tokens = delta.completion_tokens or 0
                provider_model = delta.provider_model or task.provider_model
        usage = TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        yield self._finisher.chunk(task, index, "", finish_reason=finish_reason, usage=usage)
        completion = Completion(
            text="".join(parts),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            provider_model=provider_model or task.provider_model,
        )
        yield completion, ttft_ms
