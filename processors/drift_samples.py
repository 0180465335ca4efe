"""What drift detection watches: samples taken from the pipeline's events.

A *metric* is one series per tenant; `settings.drift.metrics` enables them by family
(`metric_family`):

* ``prompt_tokens``, ``completion_tokens``, ``latency_ms``, ``usd`` - scalars from CostEntry
  (`samples_from_cost`) or ResponseReady (`samples_from_response`, no cost); feed one of the
  two, not both, or every request counts twice.
* ``eval:<metric>`` - eval scores from EvalCaseResult (`samples_from_eval`), family ``eval``.
* ``prompt_embedding`` - the embedding of a request's last user message (`embedding_sample`),
  for a deterministic share of admitted requests (`prompt_to_embed`).

Replays and backtests (events with a `run_id`) are not live traffic and give no samples, except
eval scores, which always belong to a run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from sluicegate.processors.drift_stats import DriftInputError
from sluicegate.processors.envelope import Emit
from sluicegate.schemas.models import (
    CostEntry,
    EvalCaseResult,
    Event,
    RequestAdmitted,
    RequestReceived,
    ResponseReady,
)

EVAL_PREFIX = "eval:"
VECTOR_METRICS = frozenset({"prompt_embedding"})
MAX_PROMPT_CHARS = 2000
"""Longer prompts are cut before embedding: all-MiniLM-L6-v2 reads 256 tokens (~1000 chars of
English) anyway, and the cut keeps one huge prompt from holding the embedding thread."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftSample:
    """One observation of one metric: a scalar `value` or, for vector metrics, a `vector`."""

    tenant_id: str
    metric: str
    at_ms: int
    value: float | None = None
    vector: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.vector is None):
            raise DriftInputError("a sample has a value or a vector, not both", argument="value")
        if self.vector is not None and not self.vector:
            raise DriftInputError("an empty vector", argument="vector")


@dataclass(frozen=True, slots=True)
class PromptToEmbed:
    """A sampled request's prompt, waiting to be embedded into a ``prompt_embedding`` sample."""

    tenant_id: str
    at_ms: int
    text: str


def metric_family(metric: str) -> str:
    """What `settings.drift.metrics` names: the metric itself, or ``eval`` for ``eval:<name>``."""
    return "eval" if metric.startswith(EVAL_PREFIX) else metric


def at_ms(event: Event) -> int:
    """The event's time in epoch milliseconds: the event time windows are aligned on."""
    return int(event.occurred_at.timestamp() * 1000)


def samples_from_cost(entry: CostEntry) -> list[DriftSample]:
    """Tokens, cost and latency of one answered request.

    A cache hit gives its tokens (what the caller sent and received) but no cost or latency: it
    made no model call, and its $0 and near-zero time would read as a cost or latency shift
    whenever the hit rate moves.
    """
    if entry.run_id is not None:
        return []
    at, tenant = at_ms(entry), entry.tenant_id
    samples = [
        DriftSample(tenant_id=tenant, metric="prompt_tokens", at_ms=at, value=entry.prompt_tokens),
        DriftSample(
            tenant_id=tenant, metric="completion_tokens", at_ms=at, value=entry.completion_tokens
        ),
    ]
    if not entry.cache_hit:
        samples.append(DriftSample(tenant_id=tenant, metric="usd", at_ms=at, value=entry.usd))
        if entry.latency_ms is not None:
            samples.append(
                DriftSample(tenant_id=tenant, metric="latency_ms", at_ms=at, value=entry.latency_ms)
            )
    return samples


def samples_from_response(response: ResponseReady) -> list[DriftSample]:
    """Tokens and latency of one answer (no cost: use `samples_from_cost` where it is known)."""
    if response.run_id is not None:
        return []
    at, tenant, usage = at_ms(response), response.tenant_id, response.usage
    samples = [
        DriftSample(tenant_id=tenant, metric="prompt_tokens", at_ms=at, value=usage.prompt_tokens),
        DriftSample(
            tenant_id=tenant, metric="completion_tokens", at_ms=at, value=usage.completion_tokens
        ),
    ]
    if not response.cache_hit:
        samples.append(
            DriftSample(tenant_id=tenant, metric="latency_ms", at_ms=at, value=response.latency_ms)
        )
    return samples


def samples_from_eval(result: EvalCaseResult) -> list[DriftSample]:
    """One eval score, as metric ``eval:<matcher or judge>`` (eval results always have a run)."""
    return [
        DriftSample(
            tenant_id=result.tenant_id,
            metric=f"{EVAL_PREFIX}{result.metric}",
            at_ms=at_ms(result),
            value=result.score,
        )
    ]


def embedding_sample(tenant_id: str, vector: np.ndarray, at_ms: int) -> DriftSample:
    """A ``prompt_embedding`` sample from an embedder's output row."""
    values = tuple(float(v) for v in np.asarray(vector, dtype=np.float64).ravel())
    return DriftSample(tenant_id=tenant_id, metric="prompt_embedding", at_ms=at_ms, vector=values)


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is in the embedding sample: a hash of its id below `rate`, so a
    replay or a redelivery samples exactly the same requests."""
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2.0**64


def last_user_text(request: RequestReceived) -> str | None:
    """The text of the conversation's last user message (the question; what the semantic cache
    embeds too), cut to `MAX_PROMPT_CHARS`; None without one."""
    for message in reversed(request.messages):
        if message.role == "user":
            text = (message.content or "").strip()
            return text[:MAX_PROMPT_CHARS] or None
    return None


def prompt_to_embed(
    request: RequestReceived, emits: list[Emit], rate: float
) -> PromptToEmbed | None:
    """The prompt to embed for ``prompt_embedding``, if admission let the request through (to a
    backend or to a cached answer) and it is in the sample; live traffic only."""
    if request.run_id is not None or not sampled(request.request_id, rate):
        return None
    if not any(isinstance(e.event, RequestAdmitted | ResponseReady) for e in emits):
        return None
    text = last_user_text(request)
    return None if text is None else PromptToEmbed(request.tenant_id, at_ms(request), text)
