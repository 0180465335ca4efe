"""How many replicas a pool should have, from its Kafka consumer lag and its replicas' work.

A pool's replicas consume `sg.inference.<pool>` in one consumer group, so the group's lag is
the work nobody has finished yet: records not fetched, and records fetched but not committed
(offsets are stored only once an answer is acknowledged, so tasks in flight count too). The
policy sizes the pool so that each replica has at most `target_lag_per_replica` of it, and
never below what the replicas are running right now (`in_flight`, per replica, against
`target_in_flight_per_replica`, the worker's concurrency): a pool whose backlog just emptied
still needs the replicas finishing it.

Scaling up is cheap to undo and slow to wait for, so it may happen every `upscale_cooldown_s`;
scaling down drops capacity a new burst may need at once, so it waits `downscale_cooldown_s`
after any change, and steps down by at most `max_downscale_step` replicas at a time (each
leaving replica triggers a rebalance of the group). Lag that could not be read holds the
current size: no reading is not the same as no work.

Pure: time comes in with the observation, state goes out with the decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    min_replicas: int = 1
    max_replicas: int = 4
    target_lag_per_replica: int = 32
    target_in_flight_per_replica: int = 16
    upscale_cooldown_s: float = 10.0
    downscale_cooldown_s: float = 60.0
    max_downscale_step: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.target_lag_per_replica < 1 or self.target_in_flight_per_replica < 1:
            raise ValueError("the per-replica targets must be at least 1")
        if self.upscale_cooldown_s < 0 or self.downscale_cooldown_s < 0:
            raise ValueError("cooldowns cannot be negative")
        if self.max_downscale_step < 1:
            raise ValueError("max_downscale_step must be at least 1")


@dataclass(frozen=True, slots=True)
class Observation:
    """What the controller sees at `now` (seconds, any monotonic-enough clock)."""

    replicas: int  # the pool's current target size
    lag: int | None  # records behind, summed over the pool topic's partitions; None: unreadable
    in_flight: Sequence[int] = ()  # tasks running, one number per replica that reported
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class ScaleState:
    last_up: float | None = None
    last_down: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: Literal["hold", "up", "down", "bounds", "cooldown", "unknown-lag"]
    wanted: int  # what the load alone asks for, before bounds, cooldowns and steps
    state: ScaleState


def wanted_replicas(policy: ScalePolicy, lag: int, in_flight: Sequence[int]) -> int:
    """Replicas the load asks for: enough for the lag, and for the work running now."""
    for_lag = math.ceil(max(lag, 0) / policy.target_lag_per_replica)
    for_running = math.ceil(sum(max(n, 0) for n in in_flight) / policy.target_in_flight_per_replica)
    return max(for_lag, for_running)


def decide(policy: ScalePolicy, seen: Observation, state: ScaleState) -> Decision:
    """The pool's next size, and the state to pass to the next call."""
    current = seen.replicas
    bounded_now = min(max(current, policy.min_replicas), policy.max_replicas)
    if seen.lag is None:
        return Decision(bounded_now, "unknown-lag", current, state)
    wanted = wanted_replicas(policy, seen.lag, seen.in_flight)
    target = min(max(wanted, policy.min_replicas), policy.max_replicas)
    if target == current:
        return Decision(current, "hold", wanted, state)
    if current != bounded_now:  # outside the bounds (they changed): move into them at once
        return Decision(bounded_now, "bounds", wanted, _stamp(state, current, bounded_now, seen))
    if target > current:
        if _within(state.last_up, seen.now, policy.upscale_cooldown_s):
            return Decision(current, "cooldown", wanted, state)
        return Decision(target, "up", wanted, replace(state, last_up=seen.now))
    last_change = max((t for t in (state.last_up, state.last_down) if t is not None), default=None)
    if _within(last_change, seen.now, policy.downscale_cooldown_s):
        return Decision(current, "cooldown", wanted, state)
    stepped = max(target, current - policy.max_downscale_step)
    return Decision(stepped, "down", wanted, replace(state, last_down=seen.now))


def _within(since: float | None, now: float, cooldown_s: float) -> bool:
    return since is not None and now - since < cooldown_s


def _stamp(state: ScaleState, before: int, after: int, seen: Observation) -> ScaleState:
    if after > before:
        return replace(state, last_up=seen.now)
    return replace(state, last_down=seen.now)
