"""Eval runs and replay backtests through the live pipeline.

Both are the same mechanism over a different source (design: "Evals are the same mechanism over
a dataset instead of recorded traffic"): requests with the run's `run_id` go through
`RunDriver` (bounded parallelism, answers collected from sg.responses and sg.cost), the answers
are scored by the dataset's matchers (processors/eval_matchers.py), judges are asked through the
gateway as a second wave of the run's requests, and the results leave as EvalCaseResult events
plus one EvalRunCompleted on sg.evals (keyed by run_id), which the sink stores in ClickHouse.

A replay's cases are recorded requests: the expected answer of each is what was answered then,
so its scorecard says how far the new prompt/model/routing moved the answers, next to the
cost and latency deltas.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluicegate.processors.eval_datasets import CaseInput, EvalCase, EvalDataset
from sluicegate.processors.eval_matchers import (
    DeferredMatcher,
    Embedder,
    Matcher,
    MatchResult,
    build_matchers,
)
from sluicegate.processors.eval_run import (
    CaseAnswer,
    RunSpec,
    case_request,
    case_results,
    judge_request,
    run_completed,
    score_now,
)
from sluicegate.processors.replay import (
    ReplayOverrides,
    ReplaySlice,
    last_user_text,
    replay_request,
)
from sluicegate.schemas.models import (
    CostEntry,
    EvalCaseResult,
    EvalRunCompleted,
    RequestReceived,
    ResponseReady,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.run_driver import CaseOutcome, RunDriver
from sluicegate.serving.topic_read import read_to_end
from sluicegate.settings import Settings

log = logging.getLogger(__name__)
Publish = Callable[[str, Iterable[tuple[str, Any]]], None]  # (topic, [(key, event)])


@dataclass
class RunReport:
    """A finished run: its cases as answered, its results, and its summary event."""

    spec: RunSpec
    answers: list[CaseAnswer]
    results: list[EvalCaseResult]
    completed: EvalRunCompleted
    originals: dict[str, CaseAnswer] = field(default_factory=dict)  # replay: case → recorded


def _answer(case_id: str, outcome: CaseOutcome, original: str | None = None) -> CaseAnswer:
    prompt_ref = None
    model = outcome.request.model
    if isinstance(outcome.answer, ResponseReady):
        prompt_ref = outcome.answer.prompt_ref
    return CaseAnswer(
        case_id=case_id,
        request_id=outcome.request.request_id,
        output=outcome.output,
        error=outcome.error,
        latency_ms=outcome.latency_ms,
        cost_usd=outcome.cost_usd,
        prompt_ref=prompt_ref,
        model=model,
        original_request_id=original,
    )


class EvalRunner:
    def __init__(
        self,
        settings: Settings,
        serde: AvroSerde,
        *,
        publish: Publish,
        embed: Embedder | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._serde = serde
        self._publish = publish
        self._embed = embed
        self._progress = progress
        self._driver = RunDriver(
            settings,
            serde,
            max_in_flight=settings.evals.max_in_flight,
            timeout_s=settings.evals.case_timeout_s,
        )

    def run_dataset(
        self, dataset: EvalDataset, spec: RunSpec, *, baseline_run_id: str | None = None
    ) -> RunReport:
        requests = [case_request(case, spec) for case in dataset.cases]
        outcomes = self._drive(requests)
        answers = [
            _answer(case.id, outcome) for case, outcome in zip(dataset.cases, outcomes, strict=True)
        ]
        matchers = {
            case.id: build_matchers(dataset.matchers_for(case), embed=self._embed)
            for case in dataset.cases
        }
        return self._score(spec, dataset.cases, answers, matchers, baseline_run_id)

    def run_replay(
        self,
        slice_: ReplaySlice,
        overrides: ReplayOverrides,
        spec: RunSpec,
        *,
        matchers: Sequence[dict[str, Any]],
    ) -> RunReport:
        """Replay the recorded requests `slice_` selects with `overrides`, and score each new
        answer against the recorded one."""
        originals = self._recorded(slice_)
        requests = [
            replay_request(original, run_id=spec.run_id, overrides=overrides)
            for original, _answer_then in originals
        ]
        outcomes = self._drive(requests)
        cases, answers, recorded = [], [], {}
        for (original, then), outcome in zip(originals, outcomes, strict=True):
            case_id = original.request_id
            cases.append(
                EvalCase(
                    id=case_id,
                    input=CaseInput(messages=[{"role": "user", "content": _question(original)}]),
                    expected=then.output,
                )
            )
            answers.append(_answer(case_id, outcome, original=original.request_id))
            recorded[case_id] = then
        built = build_matchers(matchers, embed=self._embed)
        report = self._score(spec, cases, answers, dict.fromkeys(recorded, built), None)
        report.originals = recorded
        return report

    def _drive(self, requests: list[RequestReceived]) -> list[CaseOutcome]:
        done = 0

        def finished(_outcome: CaseOutcome) -> None:
            nonlocal done
            done += 1
            if self._progress is not None:
                self._progress(done, len(requests))

        return self._driver.run(requests, on_done=finished)

    def _score(
        self,
        spec: RunSpec,
        cases: Sequence[EvalCase],
        answers: list[CaseAnswer],
        matchers: dict[str, list[Matcher | DeferredMatcher]],
        baseline_run_id: str | None,
    ) -> RunReport:
        scored: dict[str, list[MatchResult]] = {}
        judges: list[tuple[EvalCase, CaseAnswer, DeferredMatcher, RequestReceived]] = []
        for case, answer in zip(cases, answers, strict=True):
            results, deferred = score_now(matchers[case.id], case, answer)
            scored[case.id] = results
            for judge in deferred:
                assert answer.output is not None  # score_now fails cases with no answer
                model = getattr(judge, "model", None) or self._settings.evals.judge_model
                request = judge_request(
                    spec,
                    case.id,
                    judge.name,
                    judge.request_for(answer.output, case),
                    model=model or spec.model,
                )
                judges.append((case, answer, judge, request))
        judge_usd: dict[tuple[str, str], float] = {}
        if judges:
            outcomes = self._driver.run([request for *_, request in judges])
            for (case, _answer_now, judge, _request), outcome in zip(judges, outcomes, strict=True):
                if outcome.output is None:
                    scored[case.id].append(judge.failed(outcome.error or "no answer"))
                else:
                    scored[case.id].append(judge.score(outcome.output))
                judge_usd[(case.id, judge.name)] = outcome.cost_usd
        results: list[EvalCaseResult] = []
        for case, answer in zip(cases, answers, strict=True):
            for result in scored[case.id]:
                usd = judge_usd.get((case.id, result.metric), 0.0)
                results.extend(case_results(spec, answer, [result], judge_usd=usd))
        completed = run_completed(spec, results, answers, baseline_run_id=baseline_run_id)
        self._publish(
            "evals",
            [(spec.run_id, event) for event in (*results, completed)],
        )
        return RunReport(spec, answers, results, completed)

    def _recorded(self, slice_: ReplaySlice) -> list[tuple[RequestReceived, CaseAnswer]]:
        """The requests the slice selects, each with the answer and cost recorded for it
        (requests never answered are left out: there is nothing to compare with)."""
        selected: dict[str, RequestReceived] = {}
        for batch in read_to_end(
            self._settings, self._settings.topic("requests"), since_ms=slice_.since_ms
        ):
            for message in batch:
                event = self._decode(message.value())
                if isinstance(event, RequestReceived) and slice_.selects(event):
                    selected.setdefault(event.request_id, event)
        answers: dict[str, CaseAnswer] = {}
        costs: dict[str, float] = {}
        for name in ("responses", "cost"):
            for batch in read_to_end(
                self._settings, self._settings.topic(name), since_ms=slice_.since_ms
            ):
                for message in batch:
                    event = self._decode(message.value())
                    request_id = getattr(event, "request_id", None)
                    if request_id not in selected or getattr(event, "run_id", None) is not None:
                        continue
                    if isinstance(event, CostEntry):
                        costs[request_id] = costs.get(request_id, 0.0) + event.usd
                    elif isinstance(event, ResponseReady) and request_id not in answers:
                        answers[request_id] = CaseAnswer(
                            case_id=request_id,
                            request_id=request_id,
                            output=event.message.content or event.message.tool_calls_json or "",
                            latency_ms=event.latency_ms,
                            prompt_ref=event.prompt_ref,
                            model=event.model,
                        )
        recorded = []
        for request_id, request in sorted(selected.items(), key=lambda kv: kv[1].occurred_at):
            answer = answers.get(request_id)
            if answer is None:
                continue
            answer.cost_usd = costs.get(request_id, 0.0)
            recorded.append((request, answer))
            if slice_.limit is not None and len(recorded) >= slice_.limit:
                break
        return recorded

    def _decode(self, value: bytes | None) -> Any:
        if value is None:
            return None
        try:
            return self._serde.decode(value)
        except Exception as error:  # a corrupt record is skipped, not the end of the replay
            log.warning("replay: skipped an undecodable record: %s", error)
            return None


def _question(request: RequestReceived) -> str:
    return last_user_text(request) or "(no user message)"
