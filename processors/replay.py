"""Backtests by replay: which recorded requests to replay, and each one as a run's request.

A replay re-publishes recorded RequestReceived events to sg.requests with a new `run_id` and the
run's overrides (model, prompt version, routing strategy or deployment, generation params); the
pipeline then processes them like live traffic, with side effects scoped to the run (admission
neither counts them on live limits and budgets nor touches the live cache; spend charges no
budget for them; drift takes no samples from them).

A replayed request's ids derive from the run and the original (uuid5), so publishing the same
run twice (a retried CLI) gives the same request ids and the run's collector counts each once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sluicegate.processors.envelope import now
from sluicegate.processors.request_options import OPTIONS_KEY, extra_fields, request_options
from sluicegate.processors.routing import STRATEGIES
from sluicegate.schemas.models import RequestReceived

PRODUCER = "replay"
_NAMESPACE = uuid.UUID("7f1d3c5e-2b4a-4c8e-9a61-5d0b8e3f2a17")
_PARAMS = frozenset({"temperature", "top_p", "max_tokens", "seed"})


class ReplayError(ValueError):
    """A replay cannot be set up as asked (a bad override or filter)."""


@dataclass(frozen=True, slots=True)
class ReplaySlice:
    """Which recorded requests to replay: live traffic (no `run_id`) in [since, until)."""

    since_ms: int
    until_ms: int
    tenant_id: str | None = None
    model: str | None = None
    user: str | None = None
    api_key_id: str | None = None
    prompt: str | None = None  # requests that named this prompt (name, any version)
    metadata: Mapping[str, str] = field(default_factory=dict)  # every pair must match
    contains: str | None = None  # case-insensitive text in the last user message
    limit: int | None = None

    def selects(self, request: RequestReceived) -> bool:
        if request.run_id is not None:
            return False  # a replay of a replay compares nothing recorded
        at_ms = int(request.occurred_at.timestamp() * 1000)
        if not self.since_ms <= at_ms < self.until_ms:
            return False
        for wanted, actual in (
            (self.tenant_id, request.tenant_id),
            (self.model, request.model),
            (self.user, request.user),
            (self.api_key_id, request.api_key_id),
        ):
            if wanted is not None and wanted != actual:
                return False
        if any(request.metadata.get(k) != v for k, v in self.metadata.items()):
            return False
        if self.prompt is not None:
            named = request_options(request.params.extra_json).get("prompt")
            if not isinstance(named, str) or named.partition("@")[0] != self.prompt:
                return False
        if self.contains is not None:
            text = last_user_text(request) or ""
            if self.contains.lower() not in text.lower():
                return False
        return True


@dataclass(frozen=True, slots=True)
class ReplayOverrides:
    """What the run changes; None keeps what was recorded."""

    model: str | None = None
    prompt: str | None = None  # `name@ref`: the version (or label) to render instead
    strategy: str | None = None
    deployment: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # temperature, top_p, max_tokens, seed

    def __post_init__(self) -> None:
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise ReplayError(f"unknown routing strategy {self.strategy!r}; known: {STRATEGIES}")
        unknown = set(self.params) - _PARAMS
        if unknown:
            raise ReplayError(f"cannot override {sorted(unknown)}; known: {sorted(_PARAMS)}")

    def describe(self) -> dict[str, Any]:
        described = {
            "model": self.model,
            "prompt": self.prompt,
            "strategy": self.strategy,
            "deployment": self.deployment,
        }
        return {k: v for k, v in described.items() if v is not None} | dict(self.params)


def last_user_text(request: RequestReceived) -> str | None:
    for message in reversed(request.messages):
        if message.role == "user" and message.content is not None:
            return message.content
    return None


def replayed_request_id(run_id: str, original_request_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{run_id}/{original_request_id}"))


def replay_request(
    original: RequestReceived,
    *,
    run_id: str,
    overrides: ReplayOverrides,
    at: datetime | None = None,
) -> RequestReceived:
    """`original` as a request of run `run_id`: same conversation and caller, new ids, the
    overrides applied, no bridge waiting (reply_to null), a deadline as long as the original's."""
    at = at or now()
    request_id = replayed_request_id(run_id, original.request_id)
    trace_id = uuid.uuid5(_NAMESPACE, f"trace/{request_id}").hex
    params = original.params.model_copy(update=dict(overrides.params))
    options_changed = overrides.prompt or overrides.strategy or overrides.deployment
    if options_changed:
        extra = extra_fields(original.params.extra_json)
        own = extra.get(OPTIONS_KEY)
        options = dict(own) if isinstance(own, dict) else {}
        for name in ("prompt", "strategy", "deployment"):
            value = getattr(overrides, name)
            if value is not None:
                options[name] = value
        extra[OPTIONS_KEY] = options
        params = params.model_copy(update={"extra_json": json.dumps(extra)})
    deadline_ms = None
    if original.deadline_ms is not None:
        budget_ms = original.deadline_ms - int(original.occurred_at.timestamp() * 1000)
        deadline_ms = int(at.timestamp() * 1000) + max(budget_ms, 1)
    return original.model_copy(
        update={
            "event_id": str(uuid.uuid4()),
            "occurred_at": at,
            "request_id": request_id,
            "trace_id": trace_id,
            "span_id": trace_id[:16],
            "parent_span_id": None,
            "run_id": run_id,
            "producer": PRODUCER,
            "model": overrides.model or original.model,
            "params": params,
            "reply_to": None,
            "idempotency_key": None,
            "deadline_ms": deadline_ms,
            "metadata": {**original.metadata, "original_request_id": original.request_id},
        }
    )
