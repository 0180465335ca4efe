"""The inference stage: call the backend a task names and say what happened, as events.

An async generator of `Emit`s so that streamed TokenChunks leave as they are produced (or, when
the tenant's output rules can block or rewrite, as the output guard releases them: see
processors/guard_stream.py); the agent around it only publishes. Tested with a fake backend, no
broker.

Resilience lives here because this is where a failure is seen with the whole task in hand: the
attempt's InferenceFailed, then the planner's decision (retry after a backoff, fall back along
routing's chain, or give up) — each a new event. A task whose deployment's breaker is open is
not called at all: it fails at once as `circuit_open` and falls back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from sluicegate.connectors.ports import Completion, InferenceBackend
from sluicegate.errors import BackendError
from sluicegate.processors.envelope import Emit, now
from sluicegate.processors.finish import Finisher, Guarded
from sluicegate.processors.guard_output import OutputDecision, OutputGuard
from sluicegate.processors.guard_stream import StreamHoldback
from sluicegate.processors.health import HealthSnapshot
from sluicegate.processors.resilience import (
    AttemptPlanner,
    Decision,
    GiveUp,
    is_probe,
    may_call,
)
from sluicegate.schemas.models import ChatMessage, InferenceTask, TokenUsage
from sluicegate.settings import Deployment, ResilienceSettings

NO_HEALTH: Mapping[str, HealthSnapshot] = {}


class _StreamBroken(BackendError):
    """A stream failed after chunks reached the caller: a retry would repeat them."""


@dataclass(frozen=True, slots=True)
class _Streamed:
    """The end of a stream: the whole completion, the model's time to first token, and the
    guard's decision when the stream was held back (None: the finisher checks the answer)."""

    completion: Completion
    ttft_ms: float | None
    checked: Guarded | None = None


class InferenceStage:
    """InferenceTask in → TokenChunks (when streaming), then the result and response events."""

    def __init__(
        self,
        *,
        backends: Mapping[str, InferenceBackend],
        deployments: Mapping[str, Deployment] | None = None,
        resilience: ResilienceSettings | None = None,
        health: Callable[[], Mapping[str, HealthSnapshot]] = lambda: NO_HEALTH,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        output_guard: OutputGuard | None = None,
    ) -> None:
        resilience = resilience or ResilienceSettings()
        self._backends = backends
        self._deployments = dict(deployments or {})
        self._output_guard = output_guard
        self._finisher = Finisher(deployments=self._deployments, output_guard=output_guard)
        self._planner = AttemptPlanner(resilience, rng or random.Random())
        self._health = health
        self._clock_ms = clock_ms
        self._sleep = sleep
        self._probe_lease_ms = int(resilience.breaker_cooldown_s * 1000)
        # deployment → (the open_until_ms of the cool-down probed, when this claim lapses)
        self._probes: dict[str, tuple[int, int]] = {}

    def reconfigure(
        self, *, backends: Mapping[str, InferenceBackend], deployments: Mapping[str, Deployment]
    ) -> None:
        """A new catalogue: tasks started after this call see the new deployments and backends."""
        self._backends = backends
        self._deployments = dict(deployments)
        self._finisher = Finisher(deployments=self._deployments, output_guard=self._output_guard)

    async def run(self, task: InferenceTask) -> AsyncIterator[Emit]:
        if task.not_before_ms is not None:
            wait_s = (task.not_before_ms - self._clock_ms()) / 1000
            if wait_s > 0:  # a retry's backoff; the deadline check below still applies
                await self._sleep(wait_s)
        started = now()
        t0 = time.perf_counter()
        backend = self._backends.get(task.deployment)
        try:
            if not self._may_call(task.deployment, int(self._clock_ms())):
                raise BackendError(
                    f"the circuit breaker of {task.deployment} is open", error_class="circuit_open"
                )
            if self._claims_probe(task.deployment):
                yield self._finisher.probe_started(task)
            if backend is None:
                raise BackendError(
                    f"no backend serves deployment {task.deployment!r} here",
                    error_class="unavailable",
                )
            if task.deadline_ms is not None and self._clock_ms() > task.deadline_ms:
                raise BackendError(
                    "the request's deadline passed before inference started", error_class="expired"
                )
            streamed: _Streamed | None = None
            if task.stream:
                async for emit_or_end in self._stream(task, backend, t0):
                    if isinstance(emit_or_end, Emit):
                        yield emit_or_end
                    else:
                        streamed = emit_or_end
                assert streamed is not None  # _stream always ends with the completion
            else:
                streamed = _Streamed(await backend.complete(task), None)
        except BackendError as error:
            latency_ms = (time.perf_counter() - t0) * 1000
            for emit in self._after_failure(task, error, started, latency_ms):
                yield emit
            return
        latency_ms = (time.perf_counter() - t0) * 1000
        for emit in self._finisher.succeeded(
            task,
            streamed.completion,
            started=started,
            latency_ms=latency_ms,
            ttft_ms=streamed.ttft_ms,
            checked=streamed.checked,
        ):
            yield emit

    def _may_call(self, deployment: str, now_ms: int) -> bool:
        """The breaker as the health view says — and, while this process's own probe is in
        flight (the view has not shown the half-open lease yet), no second call."""
        snapshot = self._health().get(deployment)
        if not may_call(snapshot, now_ms):
            return False
        claim = self._probes.get(deployment)
        if claim is None or snapshot is None:
            return True
        opened_until, lease_until = claim
        if snapshot.breaker == "open" and snapshot.open_until_ms == opened_until:
            return now_ms >= lease_until  # still the cool-down this process probed
        del self._probes[deployment]  # the view moved on (half-open, closed or reopened)
        return True

    def _claims_probe(self, deployment: str) -> bool:
        """Whether this call is the breaker's half-open probe; if so it is claimed here first.

        Synchronous between the check and the claim, so concurrent tasks of this process see
        the claim; other processes learn of it through ProbeStarted → health → sg.health.
        """
        snapshot = self._health().get(deployment)
        now_ms = int(self._clock_ms())
        if not is_probe(snapshot, now_ms) or snapshot is None or snapshot.breaker != "open":
            return False
        self._probes[deployment] = (snapshot.open_until_ms or 0, now_ms + self._probe_lease_ms)
        return True

    def _after_failure(
        self, task: InferenceTask, error: BackendError, started: datetime, latency_ms: float
    ) -> list[Emit]:
        failure, emits = self._finisher.failed(task, error, started=started, latency_ms=latency_ms)
        decision: Decision
        if isinstance(error, _StreamBroken):
            decision = GiveUp(
                error.error_class, 502, f"The stream from {task.deployment} broke: {error}"
            )
        else:
            decision = self._planner.plan_failure(
                task,
                failure,
                deployments=self._deployments,
                health=self._health(),
                now_ms=int(self._clock_ms()),
            )
        if isinstance(decision, GiveUp):
            emits.append(self._finisher.gave_up(task, failure, decision))
        else:
            emits.append(self._finisher.next_attempt(task, failure, decision))
        return emits

    async def _stream(
        self, task: InferenceTask, backend: InferenceBackend, t0: float
    ) -> AsyncIterator[Emit | _Streamed]:
        """Chunks as they come, or as the hold-back releases them (guard_stream.py); finally the
        whole completion (for the journal) and the TTFT.

        Held back, a block ends the caller's stream at once with the block's RequestRejected;
        the upstream is still read to its end, so the answer's usage (what it cost) is known.
        Chunk indices count released chunks only, so they stay contiguous for the bridge.
        """
        holdback = self._finisher.holdback(task)
        parts: list[str] = []
        index = 0
        ttft_ms: float | None = None
        withheld: OutputDecision | None = None
        finish_reason, prompt_tokens, completion_tokens, provider_model = "stop", 0, 0, ""
        try:
            async for delta in backend.stream(task):
                if delta.text:
                    if ttft_ms is None:
                        ttft_ms = (time.perf_counter() - t0) * 1000
                    parts.append(delta.text)
                    if holdback is None:
                        yield self._finisher.chunk(task, index, delta.text)
                        index += 1
                    elif withheld is None:
                        step = holdback.feed(delta.text)
                        if step.decision is not None:
                            withheld = step.decision
                            yield self._finisher.withheld(task, withheld)
                        elif step.text:
                            yield self._finisher.chunk(task, index, step.text)
                            index += 1
                if delta.finish_reason is not None:
                    finish_reason = delta.finish_reason
                    prompt_tokens = delta.prompt_tokens or 0
                    completion_tokens = delta.completion_tokens or 0
                    provider_model = delta.provider_model or task.provider_model
        except BackendError as error:
            if withheld is None and index == 0:
                raise  # nothing reached the caller: an ordinary failed attempt
            if withheld is None:
                raise _StreamBroken(
                    str(error), error_class=error.error_class, status_code=error.status_code
                ) from error
            # Already withheld, with the caller told: a broken rest changes nothing.
        usage = TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        completion = Completion(
            text="".join(parts),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            provider_model=provider_model or task.provider_model,
        )
        checked: Guarded | None = None
        if holdback is not None:
            checked, last = self._last_release(task, holdback, completion, withheld)
            if checked is not None and checked.rejected:
                if withheld is None:  # blocked only now, by the whole answer or the last window
                    yield self._finisher.withheld(task, checked.decision)
                yield _Streamed(completion, ttft_ms, checked)
                return
            if last:
                yield self._finisher.chunk(task, index, last)
                index += 1
        yield self._finisher.chunk(task, index, "", finish_reason=finish_reason, usage=usage)
        yield _Streamed(completion, ttft_ms, checked)

    def _last_release(
        self,
        task: InferenceTask,
        holdback: StreamHoldback,
        completion: Completion,
        withheld: OutputDecision | None,
    ) -> tuple[Guarded | None, str]:
        """A held-back stream's end: the guard's decision on the whole answer (its journal
        copy), and the text still to release. The whole answer is checked before the last
        window goes out, so a block only the whole shows (invalid JSON, a topic's terms a
        window apart) still withholds it."""
        message = ChatMessage(role="assistant", content=completion.text)
        attributes = {"stream_holdback_checks": str(holdback.checks)}
        if withheld is not None:
            blocked = replace(withheld, message=message)
            return Guarded(_noted(blocked, attributes), now(), rejected=True), ""
        whole = self._finisher.check(task, message, completion.finish_reason)
        if whole is not None and whole.decision.block is not None:
            return replace(whole, decision=_noted(whole.decision, attributes), rejected=True), ""
        last = holdback.finish()
        attributes["stream_holdback_checks"] = str(holdback.checks)
        if last.decision is not None:
            blocked = replace(last.decision, message=message)
            return Guarded(_noted(blocked, attributes), now(), rejected=True), ""
        if whole is None:
            return None, last.text
        return replace(whole, decision=_noted(whole.decision, attributes)), last.text


def _noted(decision: OutputDecision, attributes: dict[str, str]) -> OutputDecision:
    """The decision with how the stream was held back on its span."""
    return replace(decision, attributes={**decision.attributes, **attributes})
