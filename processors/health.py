"""The routing-relevant view of one deployment's health, shared by routing and resilience.

Resilience computes it (breaker state machine + latency EWMA, fed by inference outcomes);
routing reads it to skip open breakers and to rank by latency. A plain frozen value so it can
travel as an event and sit in any table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    deployment: str
    breaker: BreakerState = "closed"
    open_until_ms: int | None = None
    latency_ewma_ms: float | None = None
    ttft_ewma_ms: float | None = None

    def callable_at(self, now_ms: int) -> bool:
        """Closed, or open/half-open with `open_until_ms` passed (the next call is the probe).

        While half-open, `open_until_ms` is the lease of the probe in flight, so nobody else
        calls until it reports back or its lease runs out: one probe, not a stampede.
        """
        if self.breaker == "closed":
            return True
        return self.open_until_ms is not None and now_ms >= self.open_until_ms
