"""The drift stage: events in, DriftDetected out, state saved when windows close and on ticks,
and taken back after a restart or a rebalance."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from sluicegate.processors.drift_samples import PromptToEmbed
from sluicegate.processors.drift_stage import DriftStage
from sluicegate.processors.envelope import Emit
from sluicegate.schemas.models import (
    CostEntry,
    DriftDetected,
    EvalCaseResult,
    EvalRunCompleted,
    RequestAdmitted,
)
from sluicegate.settings import DriftSettings
from tests.builders import envelope, request

pytestmark = pytest.mark.unit

W = 2_000  # window, ms
T0 = 1_764_000_000_000  # a window boundary
SETTINGS = DriftSettings(
    window_s=W / 1000, min_samples=30, max_samples=200, lateness_s=1.0, anomaly_metrics=[]
)


class Saved:
    """The table, as the stage sees it: save(tenant, metric, state)."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes = 0

    def __call__(self, tenant_id: str, metric: str, state: dict[str, Any]) -> None:
        self.states[(tenant_id, metric)] = state
        self.writes += 1

    def entries(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(t, m, s) for (t, m), s in self.states.items()]


def cost(at_ms: int, latency_ms: float, tenant: str = "acme") -> CostEntry:
    return CostEntry(
        **envelope(tenant_id=tenant, occurred_at=datetime.fromtimestamp(at_ms / 1000, tz=UTC)),
        model="m",
        deployment="d",
        prompt_tokens=100,
        completion_tokens=20,
        usd=0.001,
        pricing_version="v1",
        latency_ms=round(latency_ms),
    )


def window(index: int, median: float, n: int = 60, tenant: str = "acme") -> list[CostEntry]:
    rng = np.random.default_rng(index)
    xs = rng.lognormal(math.log(median), 0.2, n)
    return [cost(T0 + index * W + i * (W // n), x, tenant) for i, x in enumerate(xs)]


def feed(stage: DriftStage, entries: list[CostEntry]) -> list[Emit]:
    return [emit for entry in entries for emit in stage.on_cost(entry)]


def latency_drifts(emits: list[Emit]) -> list[DriftDetected]:
    events = [e.event for e in emits if e.topic == "drift"]
    return [
        e
        for e in events
        if isinstance(e, DriftDetected) and e.metric == "latency_ms" and e.statistic != "ewma_z"
    ]


def test_a_latency_shift_is_published_when_the_next_window_starts() -> None:
    saved = Saved()
    stage = DriftStage(settings=SETTINGS, save=saved)
    assert feed(stage, window(0, 800)) == [] and saved.writes == 0  # window 0 is open
    assert feed(stage, window(1, 800)) == []
    metrics = {"prompt_tokens", "completion_tokens", "usd", "latency_ms"}
    assert set(saved.states) == {("acme", m) for m in metrics}  # window 0 closed: saved
    emits = feed(stage, window(2, 2400)[:1])  # closes window 1: the same as window 0
    assert latency_drifts(emits) == []
    emits = feed(stage, window(2, 2400)[1:] + window(3, 800)[:1])  # closes the shifted one
    found = latency_drifts(emits)
    assert {e.statistic for e in found} == {"psi", "ks"}
    ks = next(e for e in found if e.statistic == "ks")
    assert (ks.tenant_id, ks.producer) == ("acme", "drift")
    assert ks.window_start_ms == datetime.fromtimestamp((T0 + 2 * W) / 1000, tz=UTC)
    assert ks.reference_start_ms == datetime.fromtimestamp((T0 + W) / 1000, tz=UTC)
    assert {e.key for e in emits if e.topic == "drift"} == {"latency_ms"}


def test_a_tick_closes_windows_after_the_lateness_and_saves_what_changed() -> None:
    saved = Saved()
    stage = DriftStage(settings=SETTINGS, save=saved)
    feed(stage, window(0, 800) + window(1, 800))
    end = T0 + 2 * W
    assert latency_drifts(stage.tick(end)) == []  # within the lateness: still open
    assert saved.states[("acme", "latency_ms")]["current"]["start"] == T0 + W
    saved.writes = 0
    assert stage.tick(end + 500) == [] and saved.writes == 0  # nothing changed since
    feed(stage, window(2, 2400))  # a whole shifted window, then traffic stops
    found = latency_drifts(stage.tick(T0 + 3 * W + 1000))
    assert {e.statistic for e in found} == {"psi", "ks"}
    assert saved.states[("acme", "latency_ms")]["current"] is None


def test_a_restarted_stage_recovers_the_saved_series_and_finds_the_same_shift() -> None:
    saved = Saved()
    first = DriftStage(settings=SETTINGS, save=saved)
    feed(first, window(0, 800) + window(1, 800) + window(2, 2400)[:30])
    first.save()
    again = DriftStage(settings=SETTINGS, save=Saved())
    assert again.recover(saved.entries(), owns=lambda tenant: True) == len(saved.states)
    rest = window(2, 2400)[30:] + window(3, 800)[:1]
    expected = latency_drifts(feed(first, rest))
    found = latency_drifts([emit for e in rest for emit in again.on_cost(e)])
    assert [(e.statistic, e.value) for e in found] == [(e.statistic, e.value) for e in expected]
    assert found


def test_recovery_keeps_live_series_and_drops_tenants_that_moved_away() -> None:
    saved = Saved()
    stage = DriftStage(settings=SETTINGS, save=saved)
    feed(stage, window(0, 800, tenant="kept") + window(0, 800, tenant="moved"))
    stage.on_eval(
        EvalCaseResult(
            **envelope(tenant_id="moved", run_id="r1"),
            dataset="faq",
            case_id="c1",
            metric="exact",
            score=1.0,
            passed=True,
        )
    )
    live = stage.monitor.state_of("kept", "latency_ms")
    stale = {**saved.states, ("kept", "latency_ms"): {"v": 1, "stale": True}}
    entries = [(t, m, s) for (t, m), s in stale.items()] + [
        ("new", "latency_ms", stage.monitor.state_of("kept", "latency_ms") or {})
    ]
    restored = stage.recover(entries, owns=lambda tenant: tenant != "moved")
    assert restored == 1  # "new" only: live series are not rolled back
    assert stage.monitor.state_of("kept", "latency_ms") == live
    assert stage.monitor.state_of("new", "latency_ms") == live
    series = stage.monitor.series()
    assert not any(t == "moved" and m == "latency_ms" for t, m in series)
    assert ("moved", "eval:exact") in series  # evals of any tenant may come to any worker


def test_eval_scores_are_watched_and_run_summaries_ignored() -> None:
    stage = DriftStage(settings=SETTINGS, save=Saved())
    result = EvalCaseResult(
        **envelope(run_id="r1"), dataset="faq", case_id="c1", metric="exact", score=1.0, passed=True
    )
    assert stage.on_eval(result) == []
    assert stage.monitor.state_of("acme", "eval:exact") is not None
    summary = EvalRunCompleted(**envelope(run_id="r1"), dataset="faq", cases=1)
    assert stage.on_eval(summary) == []


def test_prompts_are_sampled_only_when_embeddings_are_watched() -> None:
    live = request()
    admitted = [Emit("admitted", "acme", RequestAdmitted(**envelope(), model="m"))]
    every = SETTINGS.model_copy(update={"embedding_sample_rate": 1.0})
    stage = DriftStage(settings=every, save=Saved())
    assert stage.wants_embeddings and stage.prompt_of(live, admitted) is not None
    for off in (
        every.model_copy(update={"embedding_sample_rate": 0.0}),
        every.model_copy(update={"metrics": ["latency_ms"]}),
        every.model_copy(update={"enabled": False}),
    ):
        quiet = DriftStage(settings=off, save=Saved())
        assert not quiet.wants_embeddings and quiet.prompt_of(live, admitted) is None


def test_embeddings_feed_the_centroid_series() -> None:
    stage = DriftStage(settings=SETTINGS, save=Saved())
    prompt = PromptToEmbed("acme", T0 + 5, "hello")
    assert stage.on_embedding(prompt, np.array([0.6, 0.8], dtype=np.float32)) == []
    state = stage.monitor.state_of("acme", "prompt_embedding")
    assert state is not None and state["vector"] and state["current"]["count"] == 1
