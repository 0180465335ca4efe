"""An eval run or a replay as events: the requests it sends and the results it records.

Pure: the shell (serving/eval_runner.py) sends the requests through the live pipeline with the
run's `run_id` and hands the answers back here. Every id derives from the run and the case
(uuid5), so a run retried with the same id journals the same requests and its results replace
each other downstream (the sink is idempotent on event_id).

The LLM judge is called through the gateway itself: its requests are ordinary requests of the
same run tagged `feature=eval-judge`, so its cost is on sg.cost like any other, and is kept
apart from the cost of the answers under test (`judge_usd` vs `cost_usd`).
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sluicegate.processors.envelope import new_event_id, now
from sluicegate.processors.eval_datasets import EvalCase
from sluicegate.processors.eval_matchers import DeferredMatcher, Matcher, MatchResult
from sluicegate.schemas.models import (
    ChatMessage,
    EvalCaseResult,
    EvalRunCompleted,
    RequestReceived,
    SamplingParams,
)

PRODUCER = "evals"
JUDGE_FEATURE = "eval-judge"
_NAMESPACE = uuid.UUID("0b6c2f8e-51d4-4f7a-b3e9-2c8d7a1e6f40")


def new_run_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def _id(run_id: str, *parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join((run_id, *parts))))


def _envelope(
    run_id: str, tenant_id: str, request_id: str, at: datetime, event_id: str | None = None
) -> dict[str, Any]:
    """A run's envelope; `event_id` derived for results (a retried run replaces them)."""
    trace_id = uuid.uuid5(_NAMESPACE, f"trace/{request_id}").hex
    return {
        "event_id": event_id or new_event_id(),
        "occurred_at": at,
        "tenant_id": tenant_id,
        "request_id": request_id,
        "trace_id": trace_id,
        "span_id": trace_id[:16],
        "run_id": run_id,
        "producer": PRODUCER,
    }


def _messages(messages: Iterable[Mapping[str, Any]]) -> list[ChatMessage]:
    converted = []
    for message in messages:
        content = message.get("content")
        parts = None
        if isinstance(content, list):  # multi-part content travels as OpenAI JSON
            parts, content = json.dumps(content), None
        converted.append(
            ChatMessage(role=message["role"], content=content, content_parts_json=parts)
        )
    return converted


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What every request of a run shares."""

    run_id: str
    tenant_id: str
    model: str
    dataset: str
    prompt: str | None = None  # `name@ref` overriding the cases' own prompt reference
    params: Mapping[str, Any] = field(default_factory=dict)  # temperature, max_tokens, seed…
    api_key_id: str | None = None


def case_request(case: EvalCase, spec: RunSpec, *, at: datetime | None = None) -> RequestReceived:
    """The request that asks the gateway `case`'s input within the run."""
    request_id = _id(spec.run_id, "case", case.id)
    options: dict[str, Any] = {}
    messages: list[ChatMessage] = []
    if case.input.messages is not None:
        messages = _messages(case.input.messages)
    if case.input.prompt is not None or spec.prompt is not None:
        options = {"prompt": spec.prompt or case.input.prompt, "variables": case.input.variables}
    params = SamplingParams(
        temperature=spec.params.get("temperature", 0.0),
        top_p=spec.params.get("top_p"),
        max_tokens=spec.params.get("max_tokens"),
        seed=spec.params.get("seed"),
        extra_json=json.dumps({"sluicegate": options}) if options else None,
    )
    return RequestReceived(
        **_envelope(spec.run_id, spec.tenant_id, request_id, at or now()),
        model=spec.model,
        messages=messages,
        params=params,
        stream=False,
        api_key_id=spec.api_key_id,
        metadata={"dataset": spec.dataset, "eval_case": case.id},
    )


def judge_request(
    spec: RunSpec,
    case_id: str,
    metric: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str,
    at: datetime | None = None,
) -> RequestReceived:
    """The judge's call for one (case, metric), as a request of the same run."""
    request_id = _id(spec.run_id, "judge", case_id, metric)
    return RequestReceived(
        **_envelope(spec.run_id, spec.tenant_id, request_id, at or now()),
        model=model,
        messages=_messages(messages),
        params=SamplingParams(temperature=0.0),
        stream=False,
        api_key_id=spec.api_key_id,
        metadata={"feature": JUDGE_FEATURE, "eval_case": case_id, "metric": metric},
    )


@dataclass
class CaseAnswer:
    """What the run got for one case (from the pipeline), and what a replay compares with."""

    case_id: str
    request_id: str
    output: str | None  # None: no answer (error or timeout)
    error: str | None = None
    latency_ms: float | None = None
    cost_usd: float = 0.0
    prompt_ref: str | None = None
    model: str | None = None
    original_request_id: str | None = None


def score_now(
    matchers: Sequence[Matcher | DeferredMatcher], case: EvalCase, answer: CaseAnswer
) -> tuple[list[MatchResult], list[DeferredMatcher]]:
    """The on-the-spot matchers' results, and the judges still to call. A case with no answer
    fails every metric with the reason (it is not dropped from the run)."""
    results: list[MatchResult] = []
    deferred: list[DeferredMatcher] = []
    for matcher in matchers:
        if answer.output is None:
            results.append(MatchResult.failure(matcher.name, answer.error or "no answer"))
        elif isinstance(matcher, Matcher):
            try:
                results.append(matcher.match(answer.output, case))
            except Exception as error:  # one matcher's bug is this case's, not the run's
                results.append(MatchResult.failure(matcher.name, f"{type(error).__name__}"))
        else:
            deferred.append(matcher)
    return results, deferred


def case_results(
    spec: RunSpec,
    answer: CaseAnswer,
    results: Sequence[MatchResult],
    *,
    judge_usd: float = 0.0,
    at: datetime | None = None,
) -> list[EvalCaseResult]:
    at = at or now()
    return [
        EvalCaseResult(
            **_envelope(
                spec.run_id,
                spec.tenant_id,
                answer.request_id,
                at,
                _id(spec.run_id, "result", answer.case_id, result.metric),
            ),
            dataset=spec.dataset,
            case_id=answer.case_id,
            metric=result.metric,
            score=result.score,
            passed=result.passed,
            detail=result.detail or None,
            output=answer.output,
            model=answer.model or spec.model,
            prompt_ref=answer.prompt_ref,
            latency_ms=answer.latency_ms,
            cost_usd=answer.cost_usd,
            judge_usd=judge_usd,
            subject_request_id=answer.request_id,
            original_request_id=answer.original_request_id,
        )
        for result in results
    ]


def run_completed(
    spec: RunSpec,
    results: Sequence[EvalCaseResult],
    answers: Sequence[CaseAnswer],
    *,
    baseline_run_id: str | None = None,
    at: datetime | None = None,
) -> EvalRunCompleted:
    scores: dict[str, list[float]] = defaultdict(list)
    passes: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        scores[result.metric].append(result.score)
        passes[result.metric].append(result.passed)
    prompt_refs = {answer.prompt_ref for answer in answers if answer.prompt_ref}
    completed_id = _id(spec.run_id, "completed")
    return EvalRunCompleted(
        **_envelope(spec.run_id, spec.tenant_id, completed_id, at or now(), completed_id),
        dataset=spec.dataset,
        cases=len(answers),
        scores={metric: sum(values) / len(values) for metric, values in scores.items()},
        baseline_run_id=baseline_run_id,
        model=spec.model,
        prompt_ref=prompt_refs.pop() if len(prompt_refs) == 1 else None,
        pass_rates={m: sum(values) / len(values) for m, values in passes.items()},
        cost_usd=sum(answer.cost_usd for answer in answers),
        judge_usd=sum(result.judge_usd for result in results),
        failed=sum(1 for answer in answers if answer.output is None),
    )
