"""The lag-driven scaling policy (processors/autoscale.py), as plain function calls."""

from __future__ import annotations

import pytest

from sluicegate.processors.autoscale import (
    Observation,
    ScalePolicy,
    ScaleState,
    decide,
    wanted_replicas,
)

pytestmark = pytest.mark.unit

POLICY = ScalePolicy(
    min_replicas=1,
    max_replicas=4,
    target_lag_per_replica=10,
    target_in_flight_per_replica=4,
    upscale_cooldown_s=5,
    downscale_cooldown_s=30,
)


def seen(replicas: int, lag: int | None, in_flight: tuple[int, ...] = (), now: float = 100.0):
    return Observation(replicas=replicas, lag=lag, in_flight=in_flight, now=now)


def test_wanted_covers_the_lag_and_the_work_running_now() -> None:
    assert wanted_replicas(POLICY, 0, ()) == 0
    assert wanted_replicas(POLICY, 10, ()) == 1
    assert wanted_replicas(POLICY, 11, ()) == 2
    assert wanted_replicas(POLICY, 0, (4, 4, 1)) == 3  # 9 running, 4 each
    assert wanted_replicas(POLICY, 25, (1,)) == 3


def test_a_backlog_scales_up_at_once_to_what_it_needs_within_max() -> None:
    decision = decide(POLICY, seen(1, 35), ScaleState())
    assert (decision.replicas, decision.reason, decision.wanted) == (4, "up", 4)
    assert decision.state.last_up == 100.0
    capped = decide(POLICY, seen(1, 1000), ScaleState())
    assert (capped.replicas, capped.wanted) == (4, 100)


def test_upscaling_waits_out_its_cooldown() -> None:
    state = ScaleState(last_up=97.0)
    assert decide(POLICY, seen(2, 35, now=100.0), state).reason == "cooldown"
    assert decide(POLICY, seen(2, 35, now=100.0), state).replicas == 2
    assert decide(POLICY, seen(2, 35, now=102.0), state).replicas == 4


def test_downscaling_waits_after_any_change_and_steps_one_at_a_time() -> None:
    just_up = ScaleState(last_up=90.0)
    assert decide(POLICY, seen(4, 0, now=100.0), just_up).reason == "cooldown"
    later = decide(POLICY, seen(4, 0, now=121.0), just_up)
    assert (later.replicas, later.reason) == (3, "down")
    again = decide(POLICY, seen(3, 0, now=130.0), later.state)
    assert again.reason == "cooldown"  # 9 s after the last step down
    assert decide(POLICY, seen(3, 0, now=152.0), later.state).replicas == 2


def test_replicas_still_running_tasks_are_kept_when_the_backlog_empties() -> None:
    decision = decide(POLICY, seen(3, 0, in_flight=(4, 4, 3), now=1000.0), ScaleState())
    assert (decision.replicas, decision.reason) == (3, "hold")


def test_idle_pools_stay_at_min_and_can_scale_to_zero_if_allowed() -> None:
    assert decide(POLICY, seen(1, 0, now=1000.0), ScaleState()).reason == "hold"
    to_zero = ScalePolicy(min_replicas=0, max_replicas=2, downscale_cooldown_s=0)
    assert decide(to_zero, seen(1, 0), ScaleState()).replicas == 0
    woken = decide(to_zero, seen(0, 1), ScaleState())
    assert (woken.replicas, woken.reason) == (1, "up")


def test_unreadable_lag_holds_the_size() -> None:
    decision = decide(POLICY, seen(3, None), ScaleState())
    assert (decision.replicas, decision.reason) == (3, "unknown-lag")
    assert decide(POLICY, seen(9, None), ScaleState()).replicas == 4  # still bounded


def test_a_size_outside_new_bounds_moves_into_them_without_cooldown() -> None:
    decision = decide(POLICY, seen(6, 0), ScaleState(last_down=99.0))
    assert (decision.replicas, decision.reason) == (4, "bounds")


@pytest.mark.parametrize(
    "fields",
    [
        {"min_replicas": 3, "max_replicas": 2},
        {"min_replicas": 0, "max_replicas": 0},
        {"target_lag_per_replica": 0},
        {"upscale_cooldown_s": -1},
        {"max_downscale_step": 0},
    ],
)
def test_inconsistent_policies_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ScalePolicy(**fields)


def test_the_driver_loop_hands_the_replicas_in_flight_counts_to_the_policy() -> None:
    from sluicegate.serving.ray_autoscale import DriverAutoscaler, in_flight_counts

    seen: list[list[int]] = []

    def policy(ctx):  # the KafkaLagPolicy call shape: (context) -> (replicas, state)
        seen.append(in_flight_counts(ctx.aggregated_metrics))
        return ctx.target_num_replicas + 1, {}

    applied: list[tuple[str, int]] = []
    autoscaler = DriverAutoscaler(
        policies={"gpu": policy},  # type: ignore[dict-item]
        initial={"gpu": 1},
        apply=lambda pool, n: applied.append((pool, n)),
        in_flight=lambda pool: {"gpu-a": 7.0, "gpu-b": 2.0},
    )
    assert autoscaler.tick() == {"gpu": 2}
    assert sorted(seen[0]) == [2, 7] and applied == [("gpu", 2)]
