"""Spend: CostEntry in → budgets charged, the token estimate settled, BudgetAlerts out.

It runs on sg.cost, which is keyed by tenant like sg.requests and has as many partitions, so it
shares the admission stage's limits table: the budget a request is checked against is the one
this stage charges (the hard stop lands within one request of the limit).

The cost of a replay, backtest or eval run (a `run_id`) is not live spend: admission held
nothing for it, and it is charged to no budget and raises no alert. It stays on sg.cost, so
analytics shows what the run cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sluicegate.processors.envelope import Emit, child_envelope
from sluicegate.processors.limits import Limiter
from sluicegate.schemas.models import BudgetAlert, CostEntry

PRODUCER = "spend"


class Spend:
    def __init__(
        self, *, limiter: Limiter, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    ) -> None:
        self._limiter = limiter
        self._clock_ms = clock_ms

    def run(self, entry: CostEntry) -> list[Emit]:
        if entry.run_id is not None:
            return []
        if entry.admitted_at_ms and not entry.cache_hit:
            self._limiter.settle(
                entry.tenant_id,
                entry.api_key_id,
                entry.user,
                entry.estimated_tokens,
                entry.prompt_tokens + entry.completion_tokens,
                entry.admitted_at_ms,
                self._clock_ms(),
            )
        if entry.reserved_usd > 0 and entry.admitted_at_ms:
            self._limiter.release(
                entry.tenant_id,
                entry.api_key_id,
                entry.user,
                entry.reserved_usd,
                entry.admitted_at_ms,
                self._clock_ms(),
            )
        if entry.usd <= 0:
            return []
        at_ms = int(entry.occurred_at.timestamp() * 1000)
        crossings = self._limiter.record_spend(
            entry.tenant_id, entry.api_key_id, entry.usd, at_ms, user=entry.user
        )
        return [
            Emit(
                "alerts",
                entry.tenant_id,
                BudgetAlert(
                    **child_envelope(entry, producer=PRODUCER),
                    subject_kind=crossing.subject_kind,
                    subject_id=crossing.subject_id,
                    period=crossing.period,
                    period_start=crossing.period_start,
                    threshold=crossing.threshold,
                    budget_usd=crossing.budget_usd,
                    spent_usd=crossing.spent_usd,
                ),
            )
            for crossing in crossings
        ]
