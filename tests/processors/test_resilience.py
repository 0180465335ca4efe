from __future__ import annotations

import json
import random

import pytest

from sluicegate.processors.health import HealthSnapshot
from sluicegate.processors.resilience import (
    AttemptPlanner,
    DeploymentState,
    Fallback,
    GiveUp,
    HealthTracker,
    Retry,
    counts_against_breaker,
    http_status_for,
    may_call,
)
from sluicegate.schemas.models import InferenceFailed
from sluicegate.settings import Deployment, ResilienceSettings
from tests.builders import envelope, task

pytestmark = pytest.mark.unit

SETTINGS = ResilienceSettings(
    max_retries=2,
    backoff_base_s=0.25,
    backoff_max_s=8.0,
    breaker_failures=3,
    breaker_window_s=10.0,
    breaker_cooldown_s=30.0,
    latency_ewma_alpha=0.5,
)
T0 = 1_700_000_000_000
COOLDOWN_MS = 30_000


def tracker() -> HealthTracker:
    return HealthTracker(SETTINGS)


def trip(t: HealthTracker, name: str = "a", at_ms: int = T0) -> None:
    for i in range(SETTINGS.breaker_failures):
        t.observe_failure(name, "server_error", at_ms + i)


# -- breaker ---------------------------------------------------------------------------------


def test_opens_after_threshold_failures_within_the_window() -> None:
    t = tracker()
    first = t.observe_failure("a", "server_error", T0)
    second = t.observe_failure("a", "timeout", T0 + 1_000)
    assert first.snapshot.breaker == second.snapshot.breaker == "closed"
    assert not first.changed and not second.changed
    third = t.observe_failure("a", "connection", T0 + 2_000)
    assert third.changed and third.previous == "closed"
    assert third.snapshot == HealthSnapshot("a", "open", T0 + 2_000 + COOLDOWN_MS)
    assert "3 failures" in third.reason
    assert not may_call(t.snapshot("a", T0 + 2_001), T0 + 2_001)


def test_full_cycle_open_half_open_closed() -> None:
    t = tracker()
    trip(t)
    open_until = t.snapshot("a", T0).open_until_ms
    assert open_until == T0 + 2 + COOLDOWN_MS
    assert not may_call(t.snapshot("a", open_until - 1), open_until - 1)
    assert may_call(t.snapshot("a", open_until), open_until)

    probe = t.probe_dispatched("a", open_until)
    assert probe.changed and (probe.previous, probe.snapshot.breaker) == ("open", "half_open")
    # The probe holds the slot: nobody else may call while it is out.
    assert not may_call(t.snapshot("a", open_until + 100), open_until + 100)

    closed = t.observe_success("a", latency_ms=120.0, ttft_ms=None, at_ms=open_until + 500)
    assert closed.changed and (closed.previous, closed.snapshot.breaker) == ("half_open", "closed")
    assert closed.snapshot.open_until_ms is None
    assert t.state("a").failures_ms == ()


def test_probe_failure_reopens_for_another_cooldown() -> None:
    t = tracker()
    trip(t)
    open_until = T0 + 2 + COOLDOWN_MS
    t.probe_dispatched("a", open_until)
    again = t.observe_failure("a", "timeout", open_until + 700)
    assert again.changed and (again.previous, again.snapshot.breaker) == ("half_open", "open")
    assert again.snapshot.open_until_ms == open_until + 700 + COOLDOWN_MS
    assert not may_call(again.snapshot, open_until + 701)


def test_only_one_probe_goes_out_in_half_open() -> None:
    t = tracker()
    trip(t)
    open_until = T0 + 2 + COOLDOWN_MS
    first = t.probe_dispatched("a", open_until)
    second = t.probe_dispatched("a", open_until + 10)
    assert first.changed and not second.changed
    assert "not a probe" in second.reason
    assert t.state("a").open_until_ms == open_until + COOLDOWN_MS  # the first lease stands


def test_a_lost_probe_frees_the_slot_when_its_lease_runs_out() -> None:
    t = tracker()
    trip(t)
    open_until = T0 + 2 + COOLDOWN_MS
    t.probe_dispatched("a", open_until, lease_ms=5_000)
    assert t.snapshot("a", open_until + 4_999).breaker == "half_open"
    expired = t.snapshot("a", open_until + 5_000)
    assert expired.breaker == "open" and expired.callable_at(open_until + 5_000)
    assert t.probe_dispatched("a", open_until + 5_000).changed


def test_an_unreported_probe_after_the_cooldown_still_decides() -> None:
    t = tracker()
    trip(t)
    after = T0 + 2 + COOLDOWN_MS + 1
    reopened = t.observe_failure("a", "server_error", after)
    assert reopened.changed and reopened.snapshot.open_until_ms == after + COOLDOWN_MS
    closed = t.observe_success("a", 50.0, None, reopened.snapshot.open_until_ms or 0)
    assert closed.snapshot.breaker == "closed"


def test_late_outcomes_during_the_cooldown_do_not_move_it() -> None:
    t = tracker()
    trip(t)
    open_until = T0 + 2 + COOLDOWN_MS
    late_failure = t.observe_failure("a", "server_error", T0 + 5_000)
    late_success = t.observe_success("a", 80.0, None, T0 + 6_000)
    assert not late_failure.changed and not late_success.changed
    assert t.snapshot("a", T0 + 6_000) == HealthSnapshot("a", "open", open_until, 80.0)


def test_old_failures_leave_the_window() -> None:
    t = tracker()
    t.observe_failure("a", "server_error", T0)
    t.observe_failure("a", "server_error", T0 + 1_000)
    # 10 s window: at T0 + 10_500 the first failure has aged out, so only two remain.
    third = t.observe_failure("a", "server_error", T0 + 10_500)
    assert third.snapshot.breaker == "closed" and "2/3" in third.reason
    assert t.state("a").failures_ms == (T0 + 1_000, T0 + 10_500)
    fourth = t.observe_failure("a", "server_error", T0 + 10_600)
    assert fourth.snapshot.breaker == "open"


def test_a_success_cancels_the_oldest_failure() -> None:
    t = tracker()
    t.observe_failure("a", "server_error", T0)
    t.observe_failure("a", "server_error", T0 + 1)
    t.observe_success("a", 10.0, None, T0 + 2)
    assert t.state("a").failures_ms == (T0 + 1,)
    # Failing every other call never trips; failing most calls does.
    for i in range(10):
        t.observe_success("a", 10.0, None, T0 + 10 + 2 * i)
        t.observe_failure("a", "server_error", T0 + 11 + 2 * i)
    assert t.snapshot("a", T0 + 100).breaker == "closed"
    t.observe_failure("a", "server_error", T0 + 101)
    assert t.observe_failure("a", "server_error", T0 + 102).snapshot.breaker == "open"


@pytest.mark.parametrize("error_class", ["bad_request", "context_too_long", "content_policy"])
def test_caller_faults_do_not_count(error_class: str) -> None:
    t = tracker()
    for i in range(10):
        observed = t.observe_failure("a", error_class, T0 + i)
        assert not observed.changed and observed.snapshot.breaker == "closed"
    assert t.state("a") == DeploymentState("a")
    assert not counts_against_breaker(error_class)


@pytest.mark.parametrize(
    "error_class",
    ["server_error", "timeout", "connection", "rate_limited", "unavailable", "unknown", "auth"],
)
def test_deployment_faults_count(error_class: str) -> None:
    t = tracker()
    for i in range(SETTINGS.breaker_failures):
        observed = t.observe_failure("a", error_class, T0 + i)
    assert observed.snapshot.breaker == "open" and counts_against_breaker(error_class)


def test_a_caller_fault_probe_is_inconclusive_and_frees_the_slot() -> None:
    t = tracker()
    trip(t)
    open_until = T0 + 2 + COOLDOWN_MS
    t.probe_dispatched("a", open_until)
    observed = t.observe_failure("a", "bad_request", open_until + 100)
    assert observed.changed and may_call(observed.snapshot, open_until + 100)
    assert t.probe_dispatched("a", open_until + 100).changed


def test_deployments_are_independent() -> None:
    t = tracker()
    trip(t, "a")
    assert t.snapshot("b", T0) == HealthSnapshot("b")


# -- EWMA ------------------------------------------------------------------------------------


def test_latency_and_ttft_ewma() -> None:
    t = tracker()
    first = t.observe_success("a", latency_ms=100.0, ttft_ms=None, at_ms=T0)
    assert first.snapshot.latency_ewma_ms == 100.0 and first.snapshot.ttft_ewma_ms is None
    assert not first.changed
    second = t.observe_success("a", latency_ms=200.0, ttft_ms=40.0, at_ms=T0 + 1)
    assert second.snapshot.latency_ewma_ms == pytest.approx(150.0)
    assert second.snapshot.ttft_ewma_ms == pytest.approx(40.0)
    third = t.observe_success("a", latency_ms=50.0, ttft_ms=20.0, at_ms=T0 + 2)
    assert third.snapshot.latency_ewma_ms == pytest.approx(0.5 * 50 + 0.5 * 150)
    assert third.snapshot.ttft_ewma_ms == pytest.approx(30.0)
    # Failures say nothing about how fast successful calls are.
    t.observe_failure("a", "timeout", T0 + 3)
    assert t.snapshot("a", T0 + 3).latency_ewma_ms == pytest.approx(100.0)


# -- persistence -----------------------------------------------------------------------------


def test_state_round_trips_through_json_mid_cycle() -> None:
    store: dict[str, dict] = {}
    t = HealthTracker(SETTINGS, store)
    t.observe_success("a", 100.0, 30.0, T0)
    trip(t, "a", T0 + 1)
    open_until = T0 + 3 + COOLDOWN_MS
    t.probe_dispatched("a", open_until)
    t.observe_failure("b", "timeout", T0 + 5)

    # A restart: only what the table's changelog holds (JSON) survives.
    restored = HealthTracker(SETTINGS, json.loads(json.dumps(store)))
    for name in ("a", "b"):
        assert restored.state(name) == t.state(name)
        assert DeploymentState.from_dict(t.state(name).to_dict()) == t.state(name)
    assert HealthTracker.from_dict(SETTINGS, t.to_dict()).to_dict() == t.to_dict()
    # ...and carries on exactly where the old one stopped: the probe is still the only one.
    assert not restored.probe_dispatched("a", open_until + 1).changed
    closed = restored.observe_success("a", 200.0, None, open_until + 2)
    assert closed.snapshot == HealthSnapshot("a", "closed", None, 150.0, 30.0)
    restored.observe_failure("b", "timeout", T0 + 6)
    assert restored.observe_failure("b", "timeout", T0 + 7).snapshot.breaker == "open"


def test_the_store_gets_fresh_dicts_so_a_changelog_sees_every_change() -> None:
    store: dict[str, dict] = {}
    t = HealthTracker(SETTINGS, store)
    t.observe_failure("a", "timeout", T0)
    before = store["a"]
    t.observe_failure("a", "timeout", T0 + 1)
    assert store["a"] is not before and before["failures_ms"] == [T0]


def test_from_dict_rejects_an_unknown_breaker_state() -> None:
    with pytest.raises(ValueError, match="breaker"):
        DeploymentState.from_dict({"deployment": "a", "breaker": "ajar"})


# -- planner ---------------------------------------------------------------------------------

CATALOGUE = {
    name: Deployment(name=name, backend="openai", provider_model=name, context_window=window)
    for name, window in [("a", 8_192), ("b", 8_192), ("c", 32_768), ("d", 128_000)]
}
NOW = T0 + 1_000_000


def planner(seed: int = 0) -> AttemptPlanner:
    return AttemptPlanner(SETTINGS, random.Random(seed))


def plan(
    error_class: str = "server_error",
    *,
    retriable: bool = True,
    retry_after_s: float | None = None,
    attempts: int = 1,
    fallbacks: tuple[str, ...] = ("b", "c", "d"),
    health: dict[str, HealthSnapshot] | None = None,
    deadline_ms: int | None = None,
    seed: int = 0,
) -> Retry | Fallback | GiveUp:
    return planner(seed).plan(
        deployment="a",
        error_class=error_class,
        retriable=retriable,
        retry_after_s=retry_after_s,
        deployment_attempts=attempts,
        fallbacks=fallbacks,
        deployments=CATALOGUE,
        health=health or {},
        now_ms=NOW,
        deadline_ms=deadline_ms,
        message="upstream said no",
    )


@pytest.mark.parametrize(
    "error_class", ["rate_limited", "server_error", "timeout", "connection", "unavailable"]
)
def test_retryable_failures_retry_the_same_deployment(error_class: str) -> None:
    decision = plan(error_class)
    assert isinstance(decision, Retry) and decision.deployment == "a"
    assert 0 <= decision.delay_s <= SETTINGS.backoff_base_s
    assert decision.not_before_ms == NOW + round(decision.delay_s * 1000)
    assert error_class in decision.reason and not decision.probe


def test_retry_honours_retry_after() -> None:
    decision = plan("rate_limited", retry_after_s=3.0)
    assert isinstance(decision, Retry) and decision.delay_s == 3.0
    assert decision.not_before_ms == NOW + 3_000 and "Retry-After 3s" in decision.reason


def test_full_jitter_stays_within_its_cap() -> None:
    delays: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for seed in range(500):
        for n in delays:
            delay = planner(seed).backoff_s(n)
            cap = min(SETTINGS.backoff_max_s, SETTINGS.backoff_base_s * 2 ** (n - 1))
            assert 0 <= delay <= cap
            delays[n].append(delay)
    # Full jitter uses the whole range, not a band near the cap.
    for n, seen in delays.items():
        cap = SETTINGS.backoff_base_s * 2 ** (n - 1)
        assert min(seen) < 0.05 * cap and max(seen) > 0.95 * cap
    assert all(planner(s).backoff_s(30) <= SETTINGS.backoff_max_s for s in range(100))


def test_same_seed_same_delay() -> None:
    assert plan(seed=7) == plan(seed=7)


def test_retry_delay_is_never_below_retry_after_for_any_seed() -> None:
    for seed in range(200):
        decision = plan("rate_limited", retry_after_s=0.1, attempts=2, seed=seed)
        assert isinstance(decision, Retry)
        assert 0.1 <= decision.delay_s <= SETTINGS.backoff_base_s * 2


def test_exhausted_retries_fall_back() -> None:
    assert isinstance(plan(attempts=SETTINGS.max_retries), Retry)
    decision = plan(attempts=SETTINGS.max_retries + 1)
    assert isinstance(decision, Fallback)
    assert (decision.deployment, decision.remaining_chain) == ("b", ("c", "d"))
    assert "retries exhausted (2/2)" in decision.reason


def test_not_retriable_verdict_falls_back_instead_of_retrying() -> None:
    decision = plan("unavailable", retriable=False)
    assert isinstance(decision, Fallback) and decision.deployment == "b"


def test_auth_and_unknown_fall_back_without_retry() -> None:
    for error_class in ("auth", "unknown"):
        decision = plan(error_class, retriable=False)
        assert isinstance(decision, Fallback) and decision.deployment == "b"


def test_context_too_long_only_falls_back_to_a_larger_window() -> None:
    decision = plan("context_too_long", retriable=False)
    assert isinstance(decision, Fallback)
    assert (decision.deployment, decision.remaining_chain) == ("c", ("d",))
    assert "b (context 8192 ≤ 8192)" in decision.reason
    none_larger = plan("context_too_long", retriable=False, fallbacks=("b",))
    assert isinstance(none_larger, GiveUp)
    assert (none_larger.error_class, none_larger.http_status) == ("context_too_long", 400)


@pytest.mark.parametrize("error_class", ["content_policy", "bad_request"])
def test_caller_faults_give_up_at_once(error_class: str) -> None:
    decision = plan(error_class, retriable=False)
    assert decision == GiveUp(error_class, 400, "upstream said no", decision.reason)
    assert "request's fault" in decision.reason


def test_open_breakers_are_skipped_in_fallback() -> None:
    health = {"b": HealthSnapshot("b", "open", NOW + 5_000)}
    decision = plan(attempts=3, health=health)
    assert isinstance(decision, Fallback)
    assert (decision.deployment, decision.remaining_chain) == ("c", ("d",))
    assert "b (breaker open)" in decision.reason


def test_a_breaker_past_its_cooldown_takes_the_call_as_its_probe() -> None:
    health = {"b": HealthSnapshot("b", "open", NOW - 1)}
    decision = plan(attempts=3, health=health)
    assert isinstance(decision, Fallback) and decision.deployment == "b" and decision.probe


def test_a_half_open_breaker_with_its_probe_out_is_skipped() -> None:
    health = {"b": HealthSnapshot("b", "half_open", NOW + 10_000)}
    decision = plan(attempts=3, health=health)
    assert isinstance(decision, Fallback) and decision.deployment == "c"


def test_an_open_breaker_on_the_failed_deployment_prevents_the_retry() -> None:
    health = {"a": HealthSnapshot("a", "open", NOW + COOLDOWN_MS)}
    decision = plan(health=health)
    assert isinstance(decision, Fallback) and decision.deployment == "b"
    assert "its breaker is open" in decision.reason


def test_exhausted_chain_gives_up_with_the_mapped_status() -> None:
    for error_class, status in [
        ("rate_limited", 429),
        ("timeout", 504),
        ("server_error", 502),
        ("connection", 502),
        ("auth", 502),
        ("unavailable", 502),
    ]:
        decision = plan(error_class, attempts=3, fallbacks=())
        assert isinstance(decision, GiveUp)
        assert (decision.error_class, decision.http_status) == (error_class, status)
        assert "no fallback left" in decision.reason
    assert http_status_for("something-new") == 502


def test_all_fallbacks_unusable_gives_up() -> None:
    health = {n: HealthSnapshot(n, "open", NOW + 1) for n in ("b", "c", "d")}
    decision = plan(attempts=3, health=health)
    assert isinstance(decision, GiveUp) and decision.http_status == 502
    assert "no usable fallback" in decision.reason


def test_retry_landing_past_the_deadline_gives_up_as_timeout() -> None:
    decision = plan("rate_limited", retry_after_s=5.0, fallbacks=(), deadline_ms=NOW + 4_000)
    assert isinstance(decision, GiveUp)
    assert (decision.error_class, decision.http_status) == ("timeout", 504)
    assert "past the deadline" in decision.reason


def test_retry_landing_past_the_deadline_prefers_an_immediate_fallback() -> None:
    decision = plan("rate_limited", retry_after_s=5.0, deadline_ms=NOW + 4_000)
    assert isinstance(decision, Fallback) and decision.deployment == "b"


def test_a_passed_deadline_gives_up_whatever_the_failure() -> None:
    decision = plan("server_error", deadline_ms=NOW)
    assert isinstance(decision, GiveUp) and (decision.error_class, decision.http_status) == (
        "timeout",
        504,
    )


def test_retry_after_beyond_the_backoff_cap_prefers_a_fallback() -> None:
    decision = plan("rate_limited", retry_after_s=60.0)
    assert isinstance(decision, Fallback) and "exceeds the 8s backoff cap" in decision.reason
    alone = plan("rate_limited", retry_after_s=60.0, fallbacks=())
    assert isinstance(alone, Retry) and alone.delay_s == 60.0


def test_plan_failure_reads_the_task_and_the_event() -> None:
    attempt = task("a", deadline_ms=NOW + 60_000).model_copy(
        update={"fallbacks": ["b", "c"], "deployment_attempt": 3}
    )
    failed = InferenceFailed(
        **envelope(),
        deployment="a",
        error_class="timeout",
        message="slow",
        retriable=True,
        latency_ms=30_000.0,
        attempt=3,
    )
    decision = planner().plan_failure(attempt, failed, deployments=CATALOGUE, health={}, now_ms=NOW)
    assert isinstance(decision, Fallback)
    assert (decision.deployment, decision.remaining_chain) == ("b", ("c",))


def test_an_unsupported_feature_falls_back_without_retrying_or_hurting_health() -> None:
    decision = plan("unsupported", retriable=False)
    assert isinstance(decision, Fallback) and decision.deployment == "b"
    assert not counts_against_breaker("unsupported")
    assert isinstance(plan("unsupported", retriable=False, fallbacks=()), GiveUp)
    assert plan("unsupported", retriable=False, fallbacks=()).http_status == 400
