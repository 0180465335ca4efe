"""Rate limits and budgets for the admission stage: a pure core over a plain state mapping.

Admission runs on the tenant's partition of sg.requests, so every counter a request touches (its
tenant's, its key's, its user's) is local to one process. The counters live in the mapping the
caller passes in, in practice a changelog-backed table, so they survive restarts and rebalances.
That shapes three choices here:

* Values are plain JSON-able dicts of ints/strs/lists, and every change assigns a *new* value to
  the key: a changelog-backed table only records assignments, never in-place mutation.
* Time is always passed in (`now_ms`, `at_ms`), so replays and tests are deterministic and the
  process that takes over a partition continues from the same numbers.
* Counters are integers (request credit in 1/60000 of a request, spend in nano-dollars), so sums
  are exact and a limit is never missed or overshot by floating-point drift.

State keys (one entry per subject and limit; entries are rewritten in place, so the number of
keys grows with the subjects seen, not with time):

* ``rpm:<scope>``          token bucket: ``{"level": credit, "ts": epoch ms}``
* ``tpm:<scope>``          sliding window: ``{"buckets": [[second index, tokens], ...]}``
* ``usd:day:<scope>``      ``{"period": "2026-11-24", "nusd": spend, "alerted": [0.5, ...]}``
* ``usd:month:<scope>``    same, with ``"period": "2026-11-01"``
* ``hold:<scope>``         USD held for admitted requests not yet costed (nano-dollars, in
  1 s sub-buckets like tokens/min, expiring after ``hold_ttl_s``)

where ``<scope>`` is ``tenant:<tenant_id>``, ``key:<api_key_id>`` or
``user:<tenant_id>/<user>`` (end-user ids are only unique within a tenant).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal, Protocol

from sluicegate.settings import LimitRule, LimitsSettings

LimitCode = Literal["rate_limit_exceeded", "tokens_limit_exceeded", "budget_exceeded"]
SubjectKind = Literal["tenant", "key", "user"]
Period = Literal["day", "month"]

MINUTE_MS = 60_000
WINDOW_MS = MINUTE_MS
BUCKET_MS = 1_000
"""Granularity of the tokens/min window: finer is more precise, coarser keeps values smaller."""
_WINDOW_BUCKETS = WINDOW_MS // BUCKET_MS
REQUEST_CREDIT = MINUTE_MS
"""Credit one request costs in a token bucket. A bucket of `rpm` refills `rpm` credit per ms, so
with this unit refill is an exact integer and never drifts the way a float of tokens would."""
NANO_USD = 1_000_000_000
"""Spend is kept in nano-dollars: exact sums, and fine enough for one token of a cheap model."""
PERIODS: tuple[Period, ...] = ("day", "month")
HOLD_RETRY_MS = 1_000
"""Retry-After for a budget full only with holds: in-flight requests settle within seconds."""


# --- token bucket (requests per minute) ---------------------------------------------------------


def bucket_refill(state: Mapping[str, Any] | None, capacity: int, now_ms: int) -> dict[str, int]:
    """The bucket as of `now_ms`: a missing bucket is full, so a new subject starts with a burst.

    Time never runs backwards for a bucket (a partition can move to a host with a slower clock):
    an earlier `now_ms` refills nothing and keeps the later timestamp.
    """
    full = capacity * REQUEST_CREDIT
    if not state:
        return {"level": full, "ts": now_ms}
    last = int(state["ts"])
    elapsed = max(0, now_ms - last)
    level = min(full, int(state["level"]) + elapsed * capacity)
    return {"level": level, "ts": max(last, now_ms)}


def bucket_wait_ms(refilled: Mapping[str, int], capacity: int) -> int:
    """Milliseconds until the bucket holds one whole request (0 if it already does)."""
    missing = REQUEST_CREDIT - refilled["level"]
    return 0 if missing <= 0 else math.ceil(missing / capacity)


def bucket_take(refilled: Mapping[str, int]) -> dict[str, int]:
    """The bucket after one request; only call when `bucket_wait_ms` is 0."""
    return {"level": refilled["level"] - REQUEST_CREDIT, "ts": refilled["ts"]}


def bucket_remaining(refilled: Mapping[str, int]) -> int:
    return refilled["level"] // REQUEST_CREDIT


def bucket_reset_ms(refilled: Mapping[str, int], capacity: int) -> int:
    """Milliseconds until the bucket is full again (OpenAI's `x-ratelimit-reset-requests`)."""
    return math.ceil((capacity * REQUEST_CREDIT - refilled["level"]) / capacity)


# --- sliding window (tokens per minute) ---------------------------------------------------------


def _bucket_index(at_ms: int) -> int:
    return at_ms // BUCKET_MS


def _oldest_counted(now_ms: int, window_ms: int = WINDOW_MS) -> int:
    """Index of the oldest sub-bucket still counted at `now_ms`.

    One more sub-bucket than the window holds is counted, so the counted span always covers the
    whole of the last 60 s: the limit then holds for *every* 60 s window, at the price of
    refusing up to one sub-bucket (1 s) early.
    """
    return _bucket_index(now_ms) - window_ms // BUCKET_MS


def _leaves_window_ms(index: int) -> int:
    """When a sub-bucket stops being counted."""
    return (index + _WINDOW_BUCKETS + 1) * BUCKET_MS


def window_trim(
    state: Mapping[str, Any] | None, now_ms: int, window_ms: int = WINDOW_MS
) -> dict[str, list[list[int]]]:
    oldest = _oldest_counted(now_ms, window_ms)
    buckets = [[int(i), int(n)] for i, n in (state or {}).get("buckets", ()) if int(i) >= oldest]
    return {"buckets": sorted(buckets)}


def window_used(trimmed: Mapping[str, Any]) -> int:
    return sum(n for _, n in trimmed["buckets"])


def window_charge(
    state: Mapping[str, Any] | None,
    tokens: int,
    at_ms: int,
    now_ms: int,
    window_ms: int = WINDOW_MS,
) -> dict[str, list[list[int]]]:
    """Add `tokens` (negative to refund) to the sub-bucket of `at_ms`.

    Charging where the estimate was charged makes a correction expire with the charge it
    corrects. A sub-bucket never goes below zero, so a refund cannot free capacity that other
    requests used; a correction for a sub-bucket already out of the window changes nothing.
    """
    trimmed = window_trim(state, now_ms, window_ms)
    index = _bucket_index(at_ms)
    if index < _oldest_counted(now_ms, window_ms) or tokens == 0:
        return trimmed
    by_index = {i: n for i, n in trimmed["buckets"]}
    by_index[index] = max(0, by_index.get(index, 0) + tokens)
    return {"buckets": sorted([i, n] for i, n in by_index.items() if n > 0)}


def window_wait_ms(trimmed: Mapping[str, Any], limit: int, needed: int, now_ms: int) -> int | None:
    """Milliseconds until `needed` more tokens fit; None when they never can (`needed > limit`)."""
    if needed > limit:
        return None
    excess = window_used(trimmed) + needed - limit
    if excess <= 0:
        return 0
    freed = 0
    for index, tokens in trimmed["buckets"]:
        freed += tokens
        if freed >= excess:
            return max(0, _leaves_window_ms(index) - now_ms)
    raise AssertionError("unreachable: freeing every sub-bucket always makes room")


def window_reset_ms(trimmed: Mapping[str, Any], now_ms: int) -> int:
    """Milliseconds until the window is empty (OpenAI's `x-ratelimit-reset-tokens`)."""
    if not trimmed["buckets"]:
        return 0
    return max(0, _leaves_window_ms(trimmed["buckets"][-1][0]) - now_ms)


# --- budgets (USD per UTC day and month) --------------------------------------------------------


def period_start(period: Period, at_ms: int) -> date:
    day = datetime.fromtimestamp(at_ms / 1000, tz=UTC).date()
    return day if period == "day" else day.replace(day=1)


def period_end_ms(period: Period, at_ms: int) -> int:
    """First millisecond of the next period: when a spent budget admits again."""
    start = period_start(period, at_ms)
    if period == "day":
        nxt = date.fromordinal(start.toordinal() + 1)
    else:
        nxt = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=UTC).timestamp() * 1000)


def to_nusd(usd: float) -> int:
    return round(usd * NANO_USD)


def spent_nusd(state: Mapping[str, Any] | None, period: Period, now_ms: int) -> int:
    """Spend of the period containing `now_ms`; a stored earlier period counts as nothing."""
    if not state or state.get("period") != period_start(period, now_ms).isoformat():
        return 0
    return int(state["nusd"])


# --- decisions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """What admission does with one request; a refusal becomes an HTTP 429 with `headers`."""

    allowed: bool
    code: LimitCode | None = None
    message: str = ""
    retry_after_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BudgetCrossing:
    """Spend crossed a share of a budget; carries the fields of a BudgetAlert event."""

    subject_kind: SubjectKind
    subject_id: str
    period: Period
    period_start: str
    threshold: float
    budget_usd: float
    spent_usd: float


@dataclass(frozen=True, slots=True)
class _Subject:
    kind: SubjectKind
    id: str
    scope: str
    rule: LimitRule

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"


@dataclass(frozen=True, slots=True)
class _Refusal:
    code: LimitCode
    message: str
    wait_ms: int | None  # None: waiting does not help


def format_duration(ms: int) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: 20ms, 1s, 6m0s, 1.5s."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, MINUTE_MS)
    seconds, millis = divmod(rest, 1000)
    sec = f"{seconds}" if millis == 0 else f"{seconds}.{millis:03d}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{minutes}m{sec}s"
    return f"{sec}s"


def _usd(value: float) -> str:
    return f"${value:,.2f}"


class RuleOverrides(Protocol):
    """Limits bound to a key or tenant where they are managed (the key registry), ahead of
    the settings' defaults and overrides; None means "no limits of its own"."""

    def key_rule(self, key_id: str) -> LimitRule | None: ...

    def tenant_rule(self, tenant_id: str) -> LimitRule | None: ...


class Limiter:
    """Every limit of one request, checked together and consumed only if all of them pass.

    All-or-nothing matters because the subjects overlap: a key refused by its own limit must not
    eat into its tenant's allowance, or a noisy key would starve its siblings.
    """

    def __init__(
        self,
        settings: LimitsSettings,
        state: MutableMapping[str, Any],
        *,
        overrides: RuleOverrides | None = None,
    ) -> None:
        self._settings = settings
        self._state = state
        self._overrides = overrides
        self._hold_ms = int(settings.hold_ttl_s * 1000)

    def _subjects(self, tenant_id: str, api_key_id: str | None, user: str | None) -> list[_Subject]:
        own = self._overrides
        tenant_rule = (own and own.tenant_rule(tenant_id)) or self._settings.for_tenant(tenant_id)
        subjects = [_Subject("tenant", tenant_id, f"tenant:{tenant_id}", tenant_rule)]
        if api_key_id:
            key_rule = (own and own.key_rule(api_key_id)) or self._settings.for_key(api_key_id)
            subjects.append(_Subject("key", api_key_id, f"key:{api_key_id}", key_rule))
        if user:
            subjects.append(_Subject("user", user, f"user:{tenant_id}/{user}", self._settings.user))
        return subjects

    def check(
        self,
        tenant_id: str,
        api_key_id: str | None,
        user: str | None,
        estimated_tokens: int,
        now_ms: int,
        reserve_usd: float = 0.0,
    ) -> LimitDecision:
        """Admit and consume, or refuse and change nothing.

        `estimated_tokens` (prompt + expected completion) is charged to tokens/min now and
        corrected by `settle` once the real usage is known. `reserve_usd`, the most the request
        can cost, is held against every budget it falls under until `release`: budgets count
        spend plus holds, so concurrent requests cannot all pass a budget that only one fits
        (the hard stop lands within one request of the limit, not one per request in flight).
        """
        estimated_tokens = max(0, estimated_tokens)
        refusals: list[_Refusal] = []
        writes: dict[str, dict[str, Any]] = {}
        buckets: list[tuple[dict[str, int], int]] = []  # (refilled, capacity)
        windows: list[tuple[dict[str, Any], int]] = []  # (trimmed, limit)
        for subject in self._subjects(tenant_id, api_key_id, user):
            rule = subject.rule
            if rule.requests_per_minute is not None:
                rpm = rule.requests_per_minute
                key = f"rpm:{subject.scope}"
                refilled = bucket_refill(self._state.get(key), rpm, now_ms)
                wait = bucket_wait_ms(refilled, rpm)
                if wait:
                    refusals.append(
                        _Refusal(
                            "rate_limit_exceeded", f"{subject.label}: {rpm} requests/min", wait
                        )
                    )
                    buckets.append((refilled, rpm))
                else:
                    writes[key] = bucket_take(refilled)
                    buckets.append((writes[key], rpm))
            if rule.tokens_per_minute is not None:
                tpm = rule.tokens_per_minute
                key = f"tpm:{subject.scope}"
                trimmed = window_trim(self._state.get(key), now_ms)
                wait = window_wait_ms(trimmed, tpm, estimated_tokens, now_ms)
                if wait is None:
                    message = (
                        f"{subject.label}: {tpm} tokens/min; this request alone needs an "
                        f"estimated {estimated_tokens} tokens"
                    )
                    refusals.append(_Refusal("tokens_limit_exceeded", message, None))
                    windows.append((trimmed, tpm))
                elif wait:
                    message = f"{subject.label}: {tpm} tokens/min"
                    refusals.append(_Refusal("tokens_limit_exceeded", message, wait))
                    windows.append((trimmed, tpm))
                else:
                    writes[key] = window_charge(trimmed, estimated_tokens, now_ms, now_ms)
                    windows.append((writes[key], tpm))
            refusals.extend(self._budget_refusals(subject, now_ms))
        headers = _headers(buckets, windows, now_ms)
        if refusals:
            # Retrying helps only once *every* refusing limit has room again: wait for the longest.
            worst = max(refusals, key=lambda r: math.inf if r.wait_ms is None else r.wait_ms)
            return LimitDecision(
                allowed=False,
                code=worst.code,
                message=worst.message,
                retry_after_s=None if worst.wait_ms is None else worst.wait_ms / 1000,
                headers=headers,
            )
        hold = to_nusd(reserve_usd)
        if hold > 0:
            for subject in self._subjects(tenant_id, api_key_id, user):
                if _budgeted(subject.rule):
                    key = f"hold:{subject.scope}"
                    writes[key] = window_charge(
                        self._state.get(key), hold, now_ms, now_ms, self._hold_ms
                    )
        for key, value in writes.items():
            self._state[key] = value
        return LimitDecision(allowed=True, headers=headers)

    def _held_nusd(self, subject: _Subject, now_ms: int) -> int:
        return window_used(
            window_trim(self._state.get(f"hold:{subject.scope}"), now_ms, self._hold_ms)
        )

    def _budget_refusals(self, subject: _Subject, now_ms: int) -> Iterator[_Refusal]:
        held: int | None = None
        for period in PERIODS:
            budget = _budget(subject.rule, period)
            if budget is None:
                continue
            spent = spent_nusd(self._state.get(f"usd:{period}:{subject.scope}"), period, now_ms)
            if spent >= to_nusd(budget):
                message = (
                    f"{subject.label}: {_usd(budget)}/{period} budget spent "
                    f"({_usd(spent / NANO_USD)} this {period}, UTC)"
                )
                yield _Refusal("budget_exceeded", message, period_end_ms(period, now_ms) - now_ms)
                continue
            held = self._held_nusd(subject, now_ms) if held is None else held
            if spent + held >= to_nusd(budget):
                # Requests in flight may leave room when they are costed: retry soon.
                message = (
                    f"{subject.label}: {_usd(budget)}/{period} budget spent or held by requests "
                    f"in flight ({_usd(spent / NANO_USD)} spent, {_usd(held / NANO_USD)} held)"
                )
                yield _Refusal("budget_exceeded", message, HOLD_RETRY_MS)

    def release(
        self,
        tenant_id: str,
        api_key_id: str | None,
        user: str | None,
        reserved_usd: float,
        admitted_at_ms: int,
        now_ms: int,
    ) -> None:
        """Give back what `check` held for a request, now that it is costed (or was answered
        without a model call). A hold never released (the request failed) expires after
        `hold_ttl_s`."""
        hold = to_nusd(reserved_usd)
        if hold <= 0:
            return
        for subject in self._subjects(tenant_id, api_key_id, user):
            if not _budgeted(subject.rule):
                continue
            key = f"hold:{subject.scope}"
            current = self._state.get(key)
            if current is None:
                continue
            updated = window_charge(current, -hold, admitted_at_ms, now_ms, self._hold_ms)
            if updated != current:
                self._state[key] = updated

    def settle(
        self,
        tenant_id: str,
        api_key_id: str | None,
        user: str | None,
        estimated_tokens: int,
        actual_tokens: int,
        admitted_at_ms: int,
        now_ms: int,
    ) -> None:
        """Correct the tokens/min charge of an admitted request to its real usage.

        The difference lands in the sub-bucket the estimate went to (`admitted_at_ms` is the
        `now_ms` that `check` was given), so it leaves the window together with the estimate;
        once that sub-bucket has left the window there is nothing left to correct.
        """
        delta = actual_tokens - max(0, estimated_tokens)
        if delta == 0:
            return
        for subject in self._subjects(tenant_id, api_key_id, user):
            if subject.rule.tokens_per_minute is None:
                continue
            key = f"tpm:{subject.scope}"
            current = self._state.get(key)
            updated = window_charge(current, delta, admitted_at_ms, now_ms)
            if updated != window_trim(current, now_ms):
                self._state[key] = updated

    def record_spend(
        self,
        tenant_id: str,
        api_key_id: str | None,
        usd: float,
        at_ms: int,
        *,
        user: str | None = None,
    ) -> list[BudgetCrossing]:
        """Add a cost to the day and month of `at_ms`; return the thresholds it crossed.

        Tenant and key spend is always tracked (so the budget endpoint can show it even without
        a budget); a user's only when the user rule has that budget, since users are many. Each
        threshold alerts once per period. An entry for a period older than the one stored (a
        late CostEntry after the period rolled over) is not counted: that period no longer
        gates admission, and the analytics store holds the full history.
        """
        crossings: list[BudgetCrossing] = []
        amount = to_nusd(usd)
        for subject in self._subjects(tenant_id, api_key_id, user):
            for period in PERIODS:
                budget = _budget(subject.rule, period)
                if subject.kind == "user" and budget is None:
                    continue
                key = f"usd:{period}:{subject.scope}"
                start = period_start(period, at_ms).isoformat()
                stored = self._state.get(key)
                if stored and stored.get("period", "") > start:
                    continue
                if stored and stored.get("period") == start:
                    spent, alerted = int(stored["nusd"]), [float(t) for t in stored["alerted"]]
                else:
                    spent, alerted = 0, []
                spent += amount
                if budget is not None:
                    for threshold in sorted(self._settings.budget_alert_thresholds):
                        if threshold in alerted or spent < to_nusd(threshold * budget):
                            continue
                        alerted.append(threshold)
                        crossings.append(
                            BudgetCrossing(
                                subject_kind=subject.kind,
                                subject_id=subject.id,
                                period=period,
                                period_start=start,
                                threshold=threshold,
                                budget_usd=budget,
                                spent_usd=spent / NANO_USD,
                            )
                        )
                self._state[key] = {"period": start, "nusd": spent, "alerted": alerted}
        return crossings

    def spend(
        self, tenant_id: str, api_key_id: str | None, now_ms: int, *, user: str | None = None
    ) -> dict[str, Any]:
        """Current spend against budgets, JSON-ready, for the budget endpoint.

        ``{"tenant": {"id", "day": {...}, "month": {...}}, "key": ... | None, "user": ... | None}``
        where each period is ``{"period_start", "spent_usd", "budget_usd", "remaining_usd",
        "exhausted", "resets_at_ms"}`` (budget and remaining are None when unbudgeted).
        """
        out: dict[str, Any] = {"tenant": None, "key": None, "user": None}
        for subject in self._subjects(tenant_id, api_key_id, user):
            periods: dict[str, Any] = {}
            for period in PERIODS:
                budget = _budget(subject.rule, period)
                spent = spent_nusd(self._state.get(f"usd:{period}:{subject.scope}"), period, now_ms)
                periods[period] = {
                    "period_start": period_start(period, now_ms).isoformat(),
                    "spent_usd": spent / NANO_USD,
                    "budget_usd": budget,
                    "remaining_usd": None
                    if budget is None
                    else max(0, to_nusd(budget) - spent) / NANO_USD,
                    "exhausted": budget is not None and spent >= to_nusd(budget),
                    "resets_at_ms": period_end_ms(period, now_ms),
                }
            out[subject.kind] = {"id": subject.id, **periods}
        return out


def _budgeted(rule: LimitRule) -> bool:
    return rule.usd_per_day is not None or rule.usd_per_month is not None


def _budget(rule: LimitRule, period: Period) -> float | None:
    return rule.usd_per_day if period == "day" else rule.usd_per_month


def _headers(
    buckets: list[tuple[dict[str, int], int]],
    windows: list[tuple[dict[str, Any], int]],
    now_ms: int,
) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the subject with the least left of each kind.

    The least remaining is what actually bounds the caller; on a tie the longer reset is the
    more honest one to report.
    """
    headers: dict[str, str] = {}
    if buckets:
        refilled, capacity = min(
            buckets, key=lambda b: (bucket_remaining(b[0]), -bucket_reset_ms(b[0], b[1]))
        )
        headers["x-ratelimit-limit-requests"] = str(capacity)
        headers["x-ratelimit-remaining-requests"] = str(bucket_remaining(refilled))
        headers["x-ratelimit-reset-requests"] = format_duration(bucket_reset_ms(refilled, capacity))
    if windows:
        trimmed, limit = min(
            windows,
            key=lambda w: (max(0, w[1] - window_used(w[0])), -window_reset_ms(w[0], now_ms)),
        )
        headers["x-ratelimit-limit-tokens"] = str(limit)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limit - window_used(trimmed)))
        headers["x-ratelimit-reset-tokens"] = format_duration(window_reset_ms(trimmed, now_ms))
    return headers
