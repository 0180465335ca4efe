"""Admission: the one in-process stage between the journal and inference.

It runs prompt → route → limits → guard → enrich → cache on the tenant's partition with no
repartition,
so the hot path has a single Kafka hop between the bridge's journal write and the inference
worker. Every decision is still an event (RequestAdmitted / RequestRejected, a Span with the
routing reason) for the side topics. Enrichment (a request that names a knowledge base,
processors/enrichment.py) and the semantic cache's embedding pause admission for blocking work
(`AwaitingRetrieval`, `AwaitingEmbedding`) that the agent runs off its event loop.

A `batch` request (processors/priority.py) is routed to the cheapest capable deployment and its
task goes to the batch lane, `inference.<batch.pool>`, instead of the deployment's pool.

A request that names a registered prompt (`extra_body.sluicegate.prompt`,
processors/prompting.py) is rendered first, so every later check sees what the model will.

Replays, backtests and eval runs (a `run_id`) go through the same stages with their side effects
scoped to the run: they are not counted against the live rate limits or budgets (nothing is
charged, nothing held, so spend has nothing to settle), and they neither read nor fill the live
response cache (a backtest measures the model, not the cache).

State (rate-limit counters, budgets, cache entries) sits in mappings the caller provides: the
Faust agent passes its changelog-backed tables, so a restarted worker resumes with the same
counters; tests pass dicts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from sluicegate.processors.audit import guard_fact
from sluicegate.processors.cache import (
    CacheHit,
    CacheKey,
    ResponseCache,
    chunk_from_response,
    response_from_hit,
)
from sluicegate.processors.cost import usd
from sluicegate.processors.enrichment import AwaitingRetrieval, Enricher, Refusal
from sluicegate.processors.envelope import (
    Emit,
    child_envelope,
    new_span_id,
    now,
    sibling_envelope,
    span_emit,
)
from sluicegate.processors.guard import Guard
from sluicegate.processors.health import HealthSnapshot
from sluicegate.processors.limits import LimitDecision, Limiter, RuleOverrides
from sluicegate.processors.prompting import PromptRequestError, PromptStage
from sluicegate.processors.routing import RouteDecision, Router, RoutingError, needs_of
from sluicegate.schemas.models import (
    CostEntry,
    InferenceTask,
    RequestAdmitted,
    RequestReceived,
    RequestRejected,
    ResponseReady,
)
from sluicegate.settings import Settings

PRODUCER = "admission"


@dataclass(frozen=True, slots=True)
class AwaitingEmbedding:
    """Admission paused before the semantic lookup: embed `text` (off the event loop, ~7 ms on
    a CPU) and call `resume` with the vector. Only returned when `defer_embedding` is set."""

    text: str
    resume: Callable[[np.ndarray], list[Emit]]


NO_HEALTH: Mapping[str, HealthSnapshot] = {}
RUN_SCOPED = LimitDecision(allowed=True)  # a run's requests are not counted on live limits
_LIMIT_ERROR_TYPE = {"budget_exceeded": "insufficient_quota"}


class Admission:
    """RequestReceived in → the events that admit and route it, or reject it."""

    def __init__(
        self,
        *,
        settings: Settings,
        limits_state: MutableMapping[str, Any] | None = None,
        health: Callable[[], Mapping[str, HealthSnapshot]] = lambda: NO_HEALTH,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        router: Router | None = None,
        cache: ResponseCache | None = None,
        defer_embedding: bool = False,
        limit_overrides: RuleOverrides | None = None,
        enricher: Enricher | None = None,
        prompts: PromptStage | None = None,
    ) -> None:
        self._settings = settings
        self._prompts = prompts
        self._cache = cache
        self._enricher = enricher  # RAG: requests that name a knowledge base get context
        self._defer_embedding = defer_embedding
        self._router = router or Router.from_settings(settings)
        self._limiter = Limiter(
            settings.limits,
            {} if limits_state is None else limits_state,
            overrides=limit_overrides,
        )
        self._health = health
        self._clock_ms = clock_ms
        self._guard = Guard(settings=settings.guardrails)
        self._checks = ["route", "limits"]
        if self._guard.active:
            self._checks.append("guard")
        if cache is not None:
            self._checks.append("cache")

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    def reconfigure(self, settings: Settings) -> None:
        """A new catalogue (hot reload): routing is rebuilt; counters, budgets and cache stay.

        Called from another thread: the new router is built first and then swapped in with two
        reference assignments, so a request routes either wholly on the old or the new one.
        """
        router = Router.from_settings(settings)
        self._settings, self._router = settings, router

    def run(self, request: RequestReceived) -> list[Emit] | AwaitingEmbedding | AwaitingRetrieval:
        started = now()
        now_ms = self._clock_ms()
        span_id = new_span_id()
        prompt_ref: str | None = None
        prompted_attributes: dict[str, str] = {}
        if self._prompts is not None:
            try:
                prompted = self._prompts.run(request)
            except PromptRequestError as error:
                return self._reject(
                    request,
                    started,
                    span_id,
                    code=error.code,
                    error_type="invalid_request_error",
                    message=error.message,
                    http_status=error.http_status,
                    retry_after_s=None,
                    attributes={},
                )
            if prompted is not None:
                request, prompt_ref = prompted.request, prompted.prompt_ref
                prompted_attributes = prompted.attributes
        live = request.run_id is None
        knowledge_base = None
        if self._enricher is not None:
            knowledge_base = self._enricher.knowledge_base(
                request, self._settings.alias(request.model)
            )
            if isinstance(knowledge_base, Refusal):
                return self._refused(request, started, span_id, knowledge_base)
        # Retrieved context is not known yet: routing (context windows), limits and budgets
        # count its whole token budget, so enrichment never pushes a prompt past a window.
        context_tokens = self._enricher.reserved_tokens if knowledge_base and self._enricher else 0
        try:
            needs = needs_of(request)
            if context_tokens:
                needs = replace(needs, prompt_tokens=needs.prompt_tokens + context_tokens)
            route = self._router.route(request.model, needs, self._health(), now_ms)
        except RoutingError as error:
            return self._reject(
                request,
                started,
                span_id,
                code=error.code,
                error_type=error.error_type,
                message=error.message,
                http_status=error.http_status,
                retry_after_s=error.retry_after_s,
                attributes={"skipped": _skipped(error.skipped)} if error.skipped else {},
            )
        tokens_needed = needs.tokens_needed
        reserve = 0.0
        limit = RUN_SCOPED
        if live:
            reserve = self._max_cost(route, needs.prompt_tokens, needs.completion_tokens)
            limit = self._limiter.check(
                request.tenant_id,
                request.api_key_id,
                request.user,
                tokens_needed,
                now_ms,
                reserve_usd=reserve,
            )
            if not limit.allowed:
                return self._limited(request, started, span_id, limit)
        guarded: dict[str, str] = dict(prompted_attributes)
        extras: list[Emit] = []  # the guard's and cache's spans, the guard's audit fact
        if self._guard.active:
            guard_started = now()
            outcome = self._guard.check(request)
            guarded |= outcome.attributes
            status = "ok" if outcome.rejection is None else "error"
            span = _stage_span(request, span_id, "guard", guard_started, status, outcome.attributes)
            extras.append(span)
            fact = guard_fact(request, outcome.attributes, stage="input", producer=PRODUCER)
            if fact is not None:
                extras.append(fact)
            if outcome.rejection is not None:
                self._release(request, reserve, now_ms)
                return _with(
                    extras,
                    self._reject(
                        request,
                        started,
                        span_id,
                        code=outcome.rejection.code,
                        error_type="invalid_request_error",
                        message=outcome.rejection.message,
                        http_status=400,
                        retry_after_s=None,
                        attributes=guarded,
                    ),
                )
            request = outcome.request  # masked or redacted: what the cache and model see

        def proceed(request: RequestReceived) -> list[Emit] | AwaitingEmbedding:
            """The cache, then the inference task: on the request as the model will see it."""
            cache = self._cache if live else None
            cache_started = now()
            key = cache.key(request, prompt_ref or "") if cache is not None else None

            def looked_up(hit: CacheHit | None) -> None:
                outcome = {"result": f"hit:{hit.tier}" if hit is not None else "miss"}
                extras.append(_stage_span(request, span_id, "cache", cache_started, "ok", outcome))

            def finish(
                vector: np.ndarray | None = None, *, exact_missed: bool = False
            ) -> list[Emit]:
                hit = None
                if cache is not None and key is not None:
                    if vector is not None:
                        key.vector = vector
                    if not exact_missed:
                        hit = cache.lookup_exact(key, now_ms=now_ms)
                    hit = hit or cache.lookup_semantic(key, now_ms=now_ms)
                    looked_up(hit)
                if hit is not None:
                    self._release(request, reserve, now_ms)
                    return _with(
                        extras, self._answer_from_cache(request, started, span_id, hit, guarded)
                    )
                return _with(
                    extras,
                    self._admit(
                        request,
                        started,
                        span_id,
                        route,
                        tokens_needed,
                        reserve,
                        now_ms,
                        limit,
                        key,
                        guarded,
                        prompt_ref,
                    ),
                )

            if cache is None or key is None or not self._defer_embedding:
                return finish()
            # Exact first (microseconds); the semantic tier embeds the question only on a miss.
            exact = cache.lookup_exact(key, now_ms=now_ms)
            if exact is not None:
                looked_up(exact)
                self._release(request, reserve, now_ms)
                return _with(
                    extras, self._answer_from_cache(request, started, span_id, exact, guarded)
                )
            text = cache.text_to_embed_for_lookup(key)
            if text is not None:
                return AwaitingEmbedding(text, lambda vector: finish(vector, exact_missed=True))
            return finish(exact_missed=True)

        if knowledge_base is not None and self._enricher is not None:

            def refuse(refusal: Refusal) -> list[Emit]:
                self._release(request, reserve, now_ms)
                return _with(extras, self._refused(request, started, span_id, refusal))

            return self._enricher.plan(
                request,
                knowledge_base,
                admission_span_id=span_id,
                now_ms=now_ms,
                extras=extras,
                proceed=proceed,
                refuse=refuse,
            )
        return proceed(request)

    def _max_cost(self, route: RouteDecision, prompt_tokens: int, completion_tokens: int) -> float:
        """The most this request can cost: its estimate at the priciest deployment it may
        reach (a fallback can cost more than the first choice)."""
        return max(
            usd(
                self._settings.deployment(name),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
            for name in (route.deployment, *route.fallbacks)
        )

    def _release(self, request: RequestReceived, reserve_usd: float, now_ms: int) -> None:
        """Answered without a model call (refused by the guard, or from the cache)."""
        self._limiter.release(
            request.tenant_id, request.api_key_id, request.user, reserve_usd, now_ms, now_ms
        )

    def _answer_from_cache(
        self,
        request: RequestReceived,
        started: datetime,
        span_id: str,
        hit: CacheHit,
        guarded: dict[str, str],
    ) -> list[Emit]:
        response = response_from_hit(request, hit, producer=PRODUCER)
        response = response.model_copy(update={"span_id": span_id})
        cost = CostEntry(
            **sibling_envelope(response, producer=PRODUCER),
            model=request.model,
            deployment=hit.answer.deployment,
            api_key_id=request.api_key_id,
            prompt_tokens=0,
            completion_tokens=0,
            usd=0.0,
            pricing_version="cache",
            user=request.user,
            feature=request.metadata.get("feature"),
            cache_hit=True,
            usd_saved=hit.answer.usd,
        )
        # A streamed caller's bridge renders chunks, so a streamed hit is one whole chunk first.
        emits = [Emit("stream", request.request_id, chunk_from_response(response))]
        emits = emits if request.stream else []
        attributes = {
            **guarded,
            "cache": hit.tier,
            "similarity": f"{hit.similarity:.4f}",
            "deployment": hit.answer.deployment,
            "usd_saved": f"{hit.answer.usd:.8f}",
        }
        return [
            *emits,
            Emit("responses", request.request_id, response),
            Emit("cost", request.tenant_id, cost),
            self._span(response, started, "ok", attributes),
        ]

    def _admit(
        self,
        request: RequestReceived,
        started: datetime,
        span_id: str,
        route: RouteDecision,
        estimated_tokens: int,
        reserve_usd: float,
        now_ms: int,
        limit: LimitDecision,
        cache_key: CacheKey | None,
        guarded: dict[str, str],
        prompt_ref: str | None = None,
    ) -> list[Emit]:
        deployment = self._settings.deployment(route.deployment)
        pool = self._settings.batch.pool if route.priority == "batch" else deployment.pool
        task = InferenceTask(
            **child_envelope(request, producer=PRODUCER, span_id=span_id),
            model=request.model,
            deployment=deployment.name,
            provider_model=deployment.provider_model,
            pool=pool,
            messages=request.messages,
            params=request.params,
            stream=request.stream,
            attempt=1,
            deadline_ms=request.deadline_ms,
            reply_to=request.reply_to,
            api_key_id=request.api_key_id,
            fallbacks=list(route.fallbacks),
            estimated_tokens=estimated_tokens,
            reserved_usd=reserve_usd,
            admitted_at_ms=now_ms,
            user=request.user,
            feature=request.metadata.get("feature"),
            cache_key=json.dumps(cache_key.to_dict()) if cache_key is not None else None,
            prompt_ref=prompt_ref,
        )
        admitted = RequestAdmitted(
            **sibling_envelope(task, producer=PRODUCER),
            model=request.model,
            checks=self._checks,
            prompt_ref=prompt_ref,
        )
        attributes = {
            **guarded,
            "deployment": deployment.name,
            "strategy": route.strategy,
            "reason": route.reason,
            "fallbacks": ",".join(route.fallbacks),
            "estimated_tokens": str(estimated_tokens),
        }
        if route.priority == "batch":
            attributes |= {"priority": route.priority, "pool": pool}
        if route.skipped:
            attributes["skipped"] = _skipped(route.skipped)
        remaining = limit.headers.get("x-ratelimit-remaining-requests")
        if remaining is not None:
            attributes["ratelimit_remaining_requests"] = remaining
        return [
            Emit(f"inference.{pool}", request.request_id, task),
            Emit("admitted", request.tenant_id, admitted),
            self._span(task, started, "ok", attributes),
        ]

    def _refused(
        self, request: RequestReceived, started: datetime, span_id: str, refusal: Refusal
    ) -> list[Emit]:
        return self._reject(
            request,
            started,
            span_id,
            code=refusal.code,
            error_type=refusal.error_type,
            message=refusal.message,
            http_status=refusal.http_status,
            retry_after_s=None,
            attributes={},
        )

    def _limited(
        self, request: RequestReceived, started: datetime, span_id: str, limit: LimitDecision
    ) -> list[Emit]:
        code = limit.code or "rate_limit_exceeded"
        return self._reject(
            request,
            started,
            span_id,
            code=code,
            error_type=_LIMIT_ERROR_TYPE.get(code, "rate_limit_error"),
            message=limit.message,
            http_status=429,
            retry_after_s=limit.retry_after_s,
            headers=limit.headers,
            attributes={},
        )

    def _reject(
        self,
        request: RequestReceived,
        started: datetime,
        span_id: str,
        *,
        code: str,
        error_type: str,
        message: str,
        http_status: int,
        retry_after_s: float | None,
        attributes: dict[str, str],
        headers: Mapping[str, str] | None = None,
    ) -> list[Emit]:
        rejected = RequestRejected(
            **child_envelope(request, producer=PRODUCER, span_id=span_id),
            stage=PRODUCER,
            error_type=error_type,
            code=code,
            message=message,
            http_status=http_status,
            retry_after_s=retry_after_s,
            headers=dict(headers or {}),
        )
        return [
            Emit("admitted", request.tenant_id, rejected),
            Emit("responses", request.request_id, rejected),
            self._span(rejected, started, "error", {"decision": f"rejected:{code}", **attributes}),
        ]

    @staticmethod
    def _span(
        event: InferenceTask | RequestRejected | ResponseReady,
        started: datetime,
        status: str,
        attributes: dict[str, str],
    ) -> Emit:
        envelope = sibling_envelope(event, producer=PRODUCER)
        return span_emit(
            envelope, name=PRODUCER, started=started, status=status, attributes=attributes
        )


def _with(extras: list[Emit], emits: list[Emit]) -> list[Emit]:
    """The decision's events with the stages' spans and audit fact, before the admission span
    (which stays last)."""
    return [*emits[:-1], *extras, emits[-1]] if extras else emits


def _stage_span(
    request: RequestReceived,
    admission_span_id: str,
    name: str,
    started: datetime,
    status: str,
    attributes: dict[str, str],
) -> Emit:
    """A step of admission (guard, cache) as a span of its own under the admission span, so
    the waterfall shows where admission's time went."""
    envelope = child_envelope(request, producer=PRODUCER)
    envelope["parent_span_id"] = admission_span_id
    return span_emit(envelope, name=name, started=started, status=status, attributes=attributes)


def _skipped(skipped: Mapping[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in skipped.items())
