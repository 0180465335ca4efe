"""Rate limits and budgets: each rule alone, their all-or-nothing combination, and properties."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.processors.limits import (
    BudgetCrossing,
    Limiter,
    format_duration,
    period_end_ms,
)
from sluicegate.settings import LimitRule, LimitsSettings

pytestmark = pytest.mark.unit

T0 = int(datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp() * 1000)


class JsonTable(MutableMapping[str, Any]):
    """Stands in for a changelog-backed table: values go through JSON, so only assignments stick
    (an in-place mutation of a value read back would be lost, as it would be in production)."""

    def __init__(self) -> None:
        self.raw: dict[str, str] = {}
        self.writes = 0

    def __getitem__(self, key: str) -> Any:
        return json.loads(self.raw[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self.raw[key] = json.dumps(value)
        self.writes += 1

    def __delitem__(self, key: str) -> None:
        del self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


def limiter(**kwargs: Any) -> tuple[Limiter, JsonTable]:
    state = JsonTable()
    return Limiter(LimitsSettings(**kwargs), state), state


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


# --- requests per minute ------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_of_capacity_then_refuses() -> None:
    lim, _ = limiter(key=LimitRule(requests_per_minute=10))
    for _ in range(10):
        assert lim.check("t1", "k1", None, 0, T0).allowed
    refused = lim.check("t1", "k1", None, 0, T0)
    assert not refused.allowed
    assert refused.code == "rate_limit_exceeded"
    assert refused.message == "key k1: 10 requests/min"
    assert refused.retry_after_s == 6.0  # one request refills every 60/10 s


def test_token_bucket_refills_continuously() -> None:
    lim, _ = limiter(tenant=LimitRule(requests_per_minute=60))
    for _ in range(60):
        assert lim.check("t1", None, None, 0, T0).allowed
    assert not lim.check("t1", None, None, 0, T0 + 999).allowed
    assert lim.check("t1", None, None, 0, T0 + 1000).allowed
    assert not lim.check("t1", None, None, 0, T0 + 1000).allowed
    assert lim.check("t1", None, None, 0, T0 + 500).retry_after_s == 1.0  # clock went back
    after_a_minute = [lim.check("t1", None, None, 0, T0 + 61_000).allowed for _ in range(61)]
    assert after_a_minute.count(True) == 60


def test_retry_after_is_time_until_one_request_refills() -> None:
    lim, _ = limiter(tenant=LimitRule(requests_per_minute=3))
    for _ in range(3):
        lim.check("t1", None, None, 0, T0)
    assert lim.check("t1", None, None, 0, T0 + 5_000).retry_after_s == 15.0


def test_unlimited_subjects_keep_no_state_and_get_no_headers() -> None:
    lim, state = limiter()
    decision = lim.check("t1", "k1", "u1", 100, T0)
    assert decision.allowed and decision.headers == {} and decision.code is None
    assert len(state) == 0


# --- tokens per minute --------------------------------------------------------------------------


def test_tokens_window_charges_estimates_and_refuses_over_the_limit() -> None:
    lim, _ = limiter(key=LimitRule(tokens_per_minute=1000))
    assert lim.check("t1", "k1", None, 600, T0).allowed
    assert lim.check("t1", "k1", None, 400, T0 + 10_000).allowed
    refused = lim.check("t1", "k1", None, 1, T0 + 20_000)
    assert (refused.allowed, refused.code) == (False, "tokens_limit_exceeded")
    assert refused.message == "key k1: 1000 tokens/min"
    # One token frees when the first charge (second T0) leaves the window: 61 s after T0.
    assert refused.retry_after_s == 41.0
    assert lim.check("t1", "k1", None, 500, T0 + 61_000 - 1).allowed is False
    assert lim.check("t1", "k1", None, 600, T0 + 61_000).allowed


def test_retry_after_waits_for_enough_capacity_not_just_any() -> None:
    lim, _ = limiter(tenant=LimitRule(tokens_per_minute=100))
    lim.check("t1", None, None, 30, T0)
    lim.check("t1", None, None, 30, T0 + 5_000)
    lim.check("t1", None, None, 40, T0 + 10_000)
    # 50 needed: the first two charges (60) must leave; the second leaves at T0 + 66 s.
    assert lim.check("t1", None, None, 50, T0 + 20_000).retry_after_s == 46.0


def test_a_request_larger_than_the_limit_is_refused_without_retry_after() -> None:
    lim, state = limiter(tenant=LimitRule(tokens_per_minute=100))
    refused = lim.check("t1", None, None, 101, T0)
    assert (refused.allowed, refused.code, refused.retry_after_s) == (
        False,
        "tokens_limit_exceeded",
        None,
    )
    assert "101" in refused.message and "100 tokens/min" in refused.message
    assert len(state) == 0


def test_settle_charges_the_difference_to_the_admission_bucket() -> None:
    lim, _ = limiter(key=LimitRule(tokens_per_minute=1000))
    assert lim.check("t1", "k1", None, 900, T0).allowed
    assert not lim.check("t1", "k1", None, 200, T0 + 1_000).allowed
    lim.settle("t1", "k1", None, 900, 300, admitted_at_ms=T0, now_ms=T0 + 2_000)  # refund 600
    assert lim.check("t1", "k1", None, 700, T0 + 2_000).allowed
    assert lim.check("t1", "k1", None, 1, T0 + 3_000).headers["x-ratelimit-remaining-tokens"] == "0"


def test_settle_overrun_charges_more_and_expires_with_the_estimate() -> None:
    lim, _ = limiter(key=LimitRule(tokens_per_minute=1000))
    lim.check("t1", "k1", None, 100, T0)
    lim.settle("t1", "k1", None, 100, 1200, admitted_at_ms=T0, now_ms=T0 + 30_000)
    refused = lim.check("t1", "k1", None, 1, T0 + 30_000)
    assert not refused.allowed and refused.retry_after_s == 31.0
    assert lim.check("t1", "k1", None, 1000, T0 + 61_000).allowed


def test_settle_after_the_window_passed_changes_nothing() -> None:
    lim, state = limiter(key=LimitRule(tokens_per_minute=1000))
    lim.check("t1", "k1", None, 100, T0)
    before = dict(state.raw)
    lim.settle("t1", "k1", None, 100, 5000, admitted_at_ms=T0, now_ms=T0 + 120_000)
    assert state.raw == before
    assert lim.check("t1", "k1", None, 1000, T0 + 120_000).allowed


def test_a_refund_never_frees_capacity_others_used() -> None:
    lim, _ = limiter(tenant=LimitRule(tokens_per_minute=100))
    lim.check("t1", None, None, 10, T0)
    lim.check("t1", None, None, 90, T0 + 5_000)
    lim.settle("t1", None, None, 10, 0, admitted_at_ms=T0, now_ms=T0 + 6_000)
    lim.settle("t1", None, None, 10, 0, admitted_at_ms=T0, now_ms=T0 + 6_000)  # a duplicate
    assert lim.check("t1", None, None, 10, T0 + 6_000).allowed
    assert not lim.check("t1", None, None, 1, T0 + 6_000).allowed


# --- all or nothing -----------------------------------------------------------------------------


def test_a_refusal_consumes_nothing_from_any_subject() -> None:
    lim, state = limiter(
        tenant=LimitRule(requests_per_minute=100, tokens_per_minute=10_000),
        key=LimitRule(requests_per_minute=1),
        user=LimitRule(tokens_per_minute=500),
    )
    assert lim.check("t1", "k1", "u1", 100, T0).allowed
    before = dict(state.raw)
    writes = state.writes
    assert lim.check("t1", "k1", "u1", 100, T0).code == "rate_limit_exceeded"
    assert lim.check("t1", "k2", "u1", 1000, T0).code == "tokens_limit_exceeded"
    assert state.raw == before and state.writes == writes
    # Another key of the same tenant still has the tenant's full remaining allowance.
    allowed = lim.check("t1", "k2", "u2", 100, T0)
    assert allowed.allowed
    assert state["rpm:tenant:t1"]["level"] == 98 * 60_000


def test_the_worst_refusal_gives_code_and_retry_after() -> None:
    lim, _ = limiter(tenant=LimitRule(requests_per_minute=1), key=LimitRule(usd_per_day=1.0))
    lim.record_spend("t1", "k1", 1.0, T0)
    refused = lim.check("t1", "k1", None, 0, T0)
    assert refused.code == "budget_exceeded"
    assert refused.retry_after_s == 12 * 3600  # noon → midnight UTC


def test_users_are_scoped_to_their_tenant() -> None:
    lim, _ = limiter(user=LimitRule(requests_per_minute=1))
    assert lim.check("t1", None, "alice", 0, T0).allowed
    assert not lim.check("t1", None, "alice", 0, T0).allowed
    assert lim.check("t2", None, "alice", 0, T0).allowed
    assert lim.check("t1", None, "alice", 0, T0).message == "user alice: 1 requests/min"


def test_overrides_by_id_replace_the_default_rule() -> None:
    lim, _ = limiter(
        key=LimitRule(requests_per_minute=1),
        keys={"vip": LimitRule(requests_per_minute=3)},
        tenants={"small": LimitRule(requests_per_minute=1)},
    )
    assert [lim.check("t1", "vip", None, 0, T0).allowed for _ in range(4)] == [True] * 3 + [False]
    assert [lim.check("small", None, None, 0, T0).allowed for _ in range(2)] == [True, False]


# --- budgets ------------------------------------------------------------------------------------


def test_alerts_fire_once_per_threshold_per_period() -> None:
    lim, _ = limiter(tenant=LimitRule(usd_per_day=10.0))
    assert lim.record_spend("t1", None, 4.99, T0) == []
    [half] = lim.record_spend("t1", None, 0.01, T0)
    assert half == BudgetCrossing("tenant", "t1", "day", "2026-11-24", 0.5, 10.0, 5.0)
    assert lim.record_spend("t1", None, 1.0, T0) == []
    crossed = lim.record_spend("t1", None, 6.0, T0)  # 12.0: crosses 0.8 and 1.0 at once
    assert [(c.threshold, c.spent_usd) for c in crossed] == [(0.8, 12.0), (1.0, 12.0)]
    assert lim.record_spend("t1", None, 5.0, T0) == []


def test_many_small_entries_reach_the_threshold_exactly() -> None:
    lim, _ = limiter(key=LimitRule(usd_per_day=1.0))
    crossed = [c for _ in range(10) for c in lim.record_spend("t1", "k1", 0.1, T0)]
    assert [c.threshold for c in crossed] == [0.5, 0.8, 1.0]
    assert not lim.check("t1", "k1", None, 0, T0).allowed


def test_day_and_month_budgets_of_tenant_and_key_alert_separately() -> None:
    lim, _ = limiter(
        tenant=LimitRule(usd_per_month=100.0),
        key=LimitRule(usd_per_day=2.0, usd_per_month=50.0),
        budget_alert_thresholds=[1.0, 0.5],
    )
    crossed = lim.record_spend("t1", "k1", 50.0, T0)
    assert {(c.subject_kind, c.period, c.period_start, c.threshold) for c in crossed} == {
        ("tenant", "month", "2026-11-01", 0.5),
        ("key", "day", "2026-11-24", 0.5),
        ("key", "day", "2026-11-24", 1.0),
        ("key", "month", "2026-11-01", 0.5),
        ("key", "month", "2026-11-01", 1.0),
    }


def test_hard_stop_at_the_budget_and_admission_again_next_period() -> None:
    lim, _ = limiter(tenant=LimitRule(usd_per_day=1.0))
    lim.record_spend("t1", None, 0.999, T0)
    assert lim.check("t1", None, None, 0, T0).allowed
    lim.record_spend("t1", None, 0.001, T0)
    refused = lim.check("t1", None, None, 0, T0 + 1)
    assert (refused.allowed, refused.code) == (False, "budget_exceeded")
    assert refused.message == "tenant t1: $1.00/day budget spent ($1.00 this day, UTC)"
    midnight = ms(2026, 11, 25)
    assert refused.retry_after_s == (midnight - T0 - 1) / 1000
    assert not lim.check("t1", None, None, 0, midnight - 1).allowed
    assert lim.check("t1", None, None, 0, midnight).allowed


def test_period_rollover_resets_spend_and_alerts() -> None:
    lim, _ = limiter(key=LimitRule(usd_per_day=1.0, usd_per_month=100.0))
    assert len(lim.record_spend("t1", "k1", 1.0, T0)) == 3
    next_day = ms(2026, 11, 25, 0, 1)
    crossed = lim.record_spend("t1", "k1", 0.5, next_day)
    assert [(c.period, c.period_start, c.threshold) for c in crossed] == [
        ("day", "2026-11-25", 0.5)
    ]
    spend = lim.spend("t1", "k1", next_day)["key"]
    assert spend["day"]["spent_usd"] == 0.5 and spend["month"]["spent_usd"] == 1.5


def test_month_budget_rolls_over_at_the_first_including_new_year() -> None:
    lim, _ = limiter(tenant=LimitRule(usd_per_month=10.0))
    lim.record_spend("t1", None, 10.0, ms(2026, 12, 31, 23, 59))
    refused = lim.check("t1", None, None, 0, ms(2026, 12, 31, 23, 59))
    assert refused.code == "budget_exceeded" and refused.retry_after_s == 60.0
    assert period_end_ms("month", ms(2026, 12, 15)) == ms(2027, 1, 1)
    assert period_end_ms("month", ms(2027, 2, 1)) == ms(2027, 3, 1)
    assert lim.check("t1", None, None, 0, ms(2027, 1, 1)).allowed


def test_a_late_entry_for_a_closed_period_is_not_counted() -> None:
    lim, _ = limiter(tenant=LimitRule(usd_per_day=1.0))
    lim.record_spend("t1", None, 0.2, ms(2026, 11, 25, 0, 5))
    assert lim.record_spend("t1", None, 5.0, ms(2026, 11, 24, 23, 59)) == []
    assert lim.check("t1", None, None, 0, ms(2026, 11, 25, 0, 6)).allowed
    assert lim.spend("t1", None, ms(2026, 11, 25, 0, 6))["tenant"]["day"]["spent_usd"] == 0.2


def test_user_budgets_apply_when_configured_and_users_cost_no_state_otherwise() -> None:
    lim, state = limiter()
    lim.record_spend("t1", "k1", 1.0, T0, user="u1")
    assert not any(key.startswith("usd:day:user") for key in state)
    lim, _ = limiter(user=LimitRule(usd_per_day=1.0))
    [crossed] = lim.record_spend("t1", None, 0.6, T0, user="u1")
    assert (crossed.subject_kind, crossed.subject_id) == ("user", "u1")
    lim.record_spend("t1", None, 0.4, T0, user="u1")
    assert lim.check("t1", None, "u1", 0, T0).message.startswith("user u1: $1.00/day")
    assert lim.check("t1", None, "u2", 0, T0).allowed


def test_spend_reports_every_subject_with_budgets() -> None:
    lim, _ = limiter(tenant=LimitRule(usd_per_day=10.0))
    lim.record_spend("t1", "k1", 2.5, T0)
    report = lim.spend("t1", "k1", T0)
    assert report["tenant"]["id"] == "t1"
    assert report["tenant"]["day"] == {
        "period_start": "2026-11-24",
        "spent_usd": 2.5,
        "budget_usd": 10.0,
        "remaining_usd": 7.5,
        "exhausted": False,
        "resets_at_ms": ms(2026, 11, 25),
    }
    assert report["key"]["month"]["spent_usd"] == 2.5
    assert report["key"]["month"]["budget_usd"] is None
    assert report["user"] is None
    json.dumps(report)


# --- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("millis", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (20, "20ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (8640, "8.64s"),
        (360_000, "6m0s"),
        (90_250, "1m30.25s"),
        (3_600_000, "1h0m0s"),
    ],
)
def test_durations_are_formatted_like_openai(millis: int, text: str) -> None:
    assert format_duration(millis) == text


def test_headers_on_an_allowed_request_describe_the_most_constraining_subject() -> None:
    lim, _ = limiter(
        tenant=LimitRule(requests_per_minute=100, tokens_per_minute=1000),
        key=LimitRule(requests_per_minute=10, tokens_per_minute=50_000),
    )
    decision = lim.check("t1", "k1", None, 400, T0)
    assert decision.allowed
    assert decision.headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "1m1s",
    }


def test_headers_on_a_refusal_show_nothing_remaining() -> None:
    lim, _ = limiter(tenant=LimitRule(requests_per_minute=2))
    lim.check("t1", None, None, 0, T0)
    lim.check("t1", None, None, 0, T0)
    refused = lim.check("t1", None, None, 0, T0 + 20)
    assert refused.headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "59.98s",
    }


def test_state_is_json_and_survives_a_new_limiter() -> None:
    """A restarted process builds a new Limiter over the restored table and carries on."""
    settings_ = LimitsSettings(tenant=LimitRule(requests_per_minute=2, tokens_per_minute=10))
    state = JsonTable()
    assert Limiter(settings_, state).check("t1", None, None, 5, T0).allowed
    assert Limiter(settings_, state).check("t1", None, None, 5, T0).allowed
    assert not Limiter(settings_, state).check("t1", None, None, 0, T0).allowed
    assert set(state) == {"rpm:tenant:t1", "tpm:tenant:t1"}


# --- properties ---------------------------------------------------------------------------------

# Mostly bursts, sometimes a pause of about a minute: the edges of the window are where a
# sliding window goes wrong.
gap = st.one_of(
    st.integers(min_value=0, max_value=5_000), st.integers(min_value=55_000, max_value=62_000)
)
request_gaps = st.lists(gap, min_size=1, max_size=120)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=20), gaps=request_gaps)
def test_token_bucket_never_admits_more_than_capacity_plus_refill(
    capacity: int, gaps: list[int]
) -> None:
    lim, _ = limiter(tenant=LimitRule(requests_per_minute=capacity))
    now, admitted, decisions = T0, [], []
    for gap in gaps:
        now += gap
        decisions.append(lim.check("t1", None, None, 0, now).allowed)
        if decisions[-1]:
            admitted.append(now)
    # In any window [a, b] between admitted times, at most capacity + rate·(b - a) requests,
    # with rate = capacity / 60 000 per ms; multiplied out to stay in exact integers.
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            count = j - i + 1
            assert count * 60_000 <= capacity * 60_000 + capacity * (admitted[j] - start)
    assert all(decisions[:capacity])  # a fresh bucket is full: the first burst always passes


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=60),
    requests=st.lists(
        st.tuples(
            gap,  # since the previous request
            st.integers(min_value=1, max_value=20),  # estimated tokens
            st.integers(min_value=0, max_value=20),  # actual tokens (capped at the estimate)
            st.integers(min_value=0, max_value=90_000),  # settle delay
        ),
        min_size=1,
        max_size=100,
    ),
)
def test_tokens_in_any_minute_never_exceed_the_limit(
    limit: int, requests: list[tuple[int, int, int, int]]
) -> None:
    lim, _ = limiter(key=LimitRule(tokens_per_minute=limit))
    settles: list[tuple[int, int, int, int, int]] = []  # (at, seq, estimate, actual, admitted)
    admitted: list[tuple[int, int]] = []  # (time, actual tokens)
    now = T0
    for seq, (gap, estimate, actual, delay) in enumerate(requests):
        now += gap
        while settles and settles[0][0] <= now:
            at, _, est, real, admitted_at = heapq.heappop(settles)
            lim.settle("t1", "k1", None, est, real, admitted_at_ms=admitted_at, now_ms=at)
        actual = min(actual, estimate)
        if lim.check("t1", "k1", None, estimate, now).allowed:
            admitted.append((now, actual))
            heapq.heappush(settles, (now + delay, seq, estimate, actual, now))
    for start, _ in admitted:
        in_window = sum(tokens for at, tokens in admitted if start <= at <= start + 60_000)
        assert in_window <= limit


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(min_value=1, max_value=30), gaps=request_gaps)
def test_one_token_requests_in_any_minute_never_exceed_the_limit(
    limit: int, gaps: list[int]
) -> None:
    lim, _ = limiter(tenant=LimitRule(tokens_per_minute=limit))
    now, admitted, decisions = T0, [], []
    for gap in gaps:
        now += gap
        decisions.append(lim.check("t1", None, None, 1, now).allowed)
        if decisions[-1]:
            admitted.append(now)
            lim.settle("t1", None, None, 1, 1, admitted_at_ms=now, now_ms=now)
    for start in admitted:
        assert sum(1 for at in admitted if start <= at <= start + 60_000) <= limit
    assert all(decisions[:limit])  # not needlessly strict: a quiet tenant gets its whole minute


def test_holds_stop_concurrent_requests_within_one_request_of_the_budget() -> None:
    lim, _ = limiter(tenant=LimitRule(usd_per_day=1.0))
    admitted = [lim.check("t1", None, None, 0, T0, reserve_usd=0.4).allowed for _ in range(5)]
    # 0 + 0.4 + 0.8 held are under $1: three pass; then 1.2 is held and the rest wait.
    assert admitted == [True, True, True, False, False]
    refused = lim.check("t1", None, None, 0, T0, reserve_usd=0.4)
    assert refused.code == "budget_exceeded" and refused.retry_after_s == 1.0
    assert refused.message == (
        "tenant t1: $1.00/day budget spent or held by requests in flight ($0.00 spent, $1.20 held)"
    )
    # Without holds nothing in flight counts: every request passes until costs land.
    unheld, _ = limiter(tenant=LimitRule(usd_per_day=1.0))
    assert all(unheld.check("t1", None, None, 0, T0).allowed for _ in range(5))


def test_a_release_frees_the_hold_and_the_spend_takes_its_place() -> None:
    lim, state = limiter(tenant=LimitRule(usd_per_day=1.0), key=LimitRule(usd_per_month=5.0))
    for _ in range(3):
        assert lim.check("t1", "k1", None, 0, T0, reserve_usd=0.4).allowed
    assert not lim.check("t1", "k1", None, 0, T0 + 10, reserve_usd=0.4).allowed
    # The first request is costed at $0.10: its hold goes, its spend stays.
    lim.release("t1", "k1", None, 0.4, T0, T0 + 20)
    lim.record_spend("t1", "k1", 0.1, T0 + 20)
    assert lim.check("t1", "k1", None, 0, T0 + 30, reserve_usd=0.4).allowed
    assert state["hold:key:k1"] == state["hold:tenant:t1"]  # both budgets hold it
    # A release for an unbudgeted user touches nothing; releasing twice never goes below zero.
    for _ in range(10):
        lim.release("t1", "k1", "u1", 0.4, T0, T0 + 40)
    assert "hold:user:t1/u1" not in state and state["hold:tenant:t1"] == {"buckets": []}


def test_a_hold_nothing_settles_expires_after_its_ttl() -> None:
    lim, _ = limiter(tenant=LimitRule(usd_per_day=1.0), hold_ttl_s=120)
    assert lim.check("t1", None, None, 0, T0, reserve_usd=2.0).allowed  # one request may overshoot
    assert not lim.check("t1", None, None, 0, T0 + 119_000, reserve_usd=0.1).allowed
    assert lim.check("t1", None, None, 0, T0 + 122_000, reserve_usd=0.1).allowed


def test_requests_without_a_budget_hold_nothing() -> None:
    lim, state = limiter(key=LimitRule(requests_per_minute=10))
    assert lim.check("t1", "k1", None, 0, T0, reserve_usd=3.0).allowed
    assert not [key for key in state if key.startswith("hold:")]


class Registry:
    """Limits bound to keys and tenants where they are managed (processors/identity.py)."""

    def key_rule(self, key_id: str) -> LimitRule | None:
        return LimitRule(requests_per_minute=1) if key_id == "k-bound" else None

    def tenant_rule(self, tenant_id: str) -> LimitRule | None:
        return LimitRule(usd_per_day=0.5) if tenant_id == "t-bound" else None


def test_limits_bound_to_a_key_or_tenant_come_before_the_settings() -> None:
    lim = Limiter(
        LimitsSettings(key=LimitRule(requests_per_minute=5)), JsonTable(), overrides=Registry()
    )
    assert lim.check("t1", "k-bound", None, 0, T0).allowed
    refused = lim.check("t1", "k-bound", None, 0, T0)
    assert refused.code == "rate_limit_exceeded" and "1 requests/min" in refused.message
    # A key without limits of its own gets the settings' default for keys.
    assert all(lim.check("t1", "k-other", None, 0, T0).allowed for _ in range(5))
    assert not lim.check("t1", "k-other", None, 0, T0).allowed
    lim.record_spend("t-bound", None, 0.5, T0)
    assert lim.check("t-bound", None, None, 0, T0).code == "budget_exceeded"
    assert lim.check("t1", None, None, 0, T0).allowed
