"""Ray Serve's autoscaler, driven by Kafka consumer lag instead of request queues.

Ray Serve sizes a deployment from the requests its handles and proxies route to it. A pool's
replicas receive no such requests — they pull tasks from `sg.inference.<pool>` — so Ray's
default policy would see an idle deployment and shrink it to its minimum under any backlog. Ray
Serve 2.60 takes a custom policy (`AutoscalingConfig.policy`, a class-callable here), which the
Serve controller calls on every control-loop tick with an `AutoscalingContext`: the current and
target replica counts, and the custom metrics the replicas report from
`record_autoscaling_stats` (our `in_flight`). What the context cannot hold is Kafka's view, so
the policy reads the pool group's lag itself: a `PoolLag` refreshes it on a daemon thread in the
controller process (a tick never waits on the broker), and the pure core in
processors/autoscale.py turns lag + in-flight counts into a replica count.

Two ways to apply it (`ray.autoscaler`): `DriverAutoscaler`, the default, runs the same policy
in the `sluicegate serve` process and redeploys the pool with the new `num_replicas`;
`KafkaLagPolicy` is Ray Serve's custom-policy hook, which in Ray 2.60 was called on every tick
and decided right but whose decisions Ray did not apply in our tests (experimental; see
docs/serving.md).

The policy's keyword arguments are stored in the deployment's config (visible in `serve
status`), so they carry no secret: a SASL password is taken from the controller's own
environment (`SLUICEGATE_KAFKA__SASL_PASSWORD`) through Settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka.admin import AdminClient

from sluicegate.processors.autoscale import Observation, ScalePolicy, ScaleState, decide
from sluicegate.serving.lag_metrics import LAG, LAST_SUCCESS, ConsumerOffsets, LagCollector
from sluicegate.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

IN_FLIGHT = "in_flight"  # the custom metric replicas report


class PoolLag:
    """The total lag of one consumer group on one topic, refreshed every `interval_s`.

    `total()` is None until a first successful read and when the last one is older than
    `stale_after_s`: a broker that cannot be read must hold the pool's size, not empty it.
    """

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        group: str,
        topic: str,
        interval_s: float = 1.0,
        stale_after_s: float | None = None,
        clock: Callable[[], float] = time.time,
        admin: Any | None = None,
    ) -> None:
        if admin is None:
            config = kafka.client_config()
            admin = ConsumerOffsets(
                AdminClient({**config, "client.id": f"{group}-autoscaler"}),
                bootstrap_servers=kafka.bootstrap_servers,
                client_config=config,
            )
        self._group = group
        self._clock = clock
        self._stale_after_s = stale_after_s if stale_after_s is not None else 5 * interval_s + 5
        self._collector = LagCollector(
            admin, [group], topics={group: [topic]}, interval_s=interval_s, timeout_s=interval_s * 3
        )

    def start(self) -> PoolLag:
        self._collector.start()
        return self

    def total(self) -> int | None:
        lag, last_success = 0, None
        for family in self._collector.collect():
            for sample in family.samples:
                if sample.labels.get("group") != self._group:
                    continue
                if family.name == LAG:
                    lag += int(sample.value)
                elif family.name == LAST_SUCCESS:
                    last_success = sample.value
        if last_success is None or self._clock() - last_success > self._stale_after_s:
            return None
        return lag

    def close(self) -> None:
        self._collector.close()


class KafkaLagPolicy:
    """A Ray Serve custom autoscaling policy (class-callable): one instance per deployment,
    created by the Serve controller with `policy_kwargs`, called on every tick."""

    def __init__(
        self,
        *,
        kafka: Mapping[str, Any] | KafkaSettings,
        group: str,
        topic: str,
        policy: Mapping[str, Any],
        lag_interval_s: float = 1.0,
    ) -> None:
        kafka_settings = (
            kafka if isinstance(kafka, KafkaSettings) else KafkaSettings.model_validate(dict(kafka))
        )
        if kafka_settings.sasl_username and kafka_settings.sasl_password is None:
            password = Settings().kafka.sasl_password
            kafka_settings = kafka_settings.model_copy(update={"sasl_password": password})
        self._policy = ScalePolicy(**policy)
        self._group = group
        self._lag = PoolLag(
            kafka=kafka_settings, group=group, topic=topic, interval_s=lag_interval_s
        ).start()

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        seen = Observation(
            replicas=ctx.target_num_replicas,
            lag=self._lag.total(),
            in_flight=in_flight_counts(ctx.aggregated_metrics),
            now=time.time(),
        )
        state = dict(ctx.policy_state or {})
        decision = decide(
            self._policy,
            seen,
            ScaleState(last_up=state.get("last_up"), last_down=state.get("last_down")),
        )
        if decision.replicas != seen.replicas:
            log.info(
                "autoscale %s: %d → %d replicas (%s; lag %s, in flight %s)",
                self._group,
                seen.replicas,
                decision.replicas,
                decision.reason,
                seen.lag,
                list(seen.in_flight),
            )
        return decision.replicas, {
            "last_up": decision.state.last_up,
            "last_down": decision.state.last_down,
            "lag": seen.lag,
        }

    def close(self) -> None:
        self._lag.close()


def in_flight_counts(metrics: Any) -> list[int]:
    """The replicas' `in_flight` from an AutoscalingContext's aggregated metrics (a mapping,
    or a callable returning one: Ray evaluates them lazily)."""
    if callable(metrics):
        metrics = metrics()
    per_replica = (metrics or {}).get(IN_FLIGHT) or {}
    return [round(value) for value in per_replica.values()]


def autoscaling_config(
    *,
    settings: Settings,
    group: str,
    topic: str,
    policy: ScalePolicy,
    lag_interval_s: float,
    look_back_period_s: float,
) -> dict[str, Any]:
    """Ray Serve's `autoscaling_config` of one pool: bounds, and this policy with its kwargs."""
    from dataclasses import asdict

    return {
        "min_replicas": policy.min_replicas,
        "max_replicas": policy.max_replicas,
        "initial_replicas": max(policy.min_replicas, 1),
        "look_back_period_s": look_back_period_s,
        "policy": {
            "policy_function": KafkaLagPolicy,
            "policy_kwargs": {
                "kafka": settings.kafka.model_dump(mode="json", exclude={"sasl_password"}),
                "group": group,
                "topic": topic,
                "policy": asdict(policy),
                "lag_interval_s": lag_interval_s,
            },
        },
    }


class DriverAutoscaler:
    """The same policy run from the `sluicegate serve` process: every `interval_s` it reads
    each pool's lag and applies the decision with `apply(pool, replicas)` (a redeploy with a new
    `num_replicas`, which Ray Serve applies in place). The default mode: in our tests Ray Serve
    2.60 called the class policy on every tick but did not apply its decisions (see
    docs/serving.md). The replicas' in-flight counts come from `in_flight(pool)` (the pool's
    in-flight board, serving/ray_serve.py), as Ray would pass them to the same policy."""

    def __init__(
        self,
        *,
        policies: Mapping[str, KafkaLagPolicy],
        initial: Mapping[str, int],
        apply: Callable[[str, int], None],
        in_flight: Callable[[str], Mapping[str, float]] | None = None,
    ) -> None:
        self._policies = dict(policies)
        self._in_flight = in_flight
        self._sizes = {pool: initial[pool] for pool in self._policies}  # what was last applied
        self._apply = apply
        self._state: dict[str, dict[str, Any]] = {pool: {} for pool in self._policies}

    def tick(self) -> dict[str, int]:
        """One pass: the replica count each pool was set to (or kept at)."""
        sizes = {}
        for pool, policy in self._policies.items():
            replicas = self._sizes[pool]
            context = _Context(target_num_replicas=replicas, policy_state=self._state[pool])
            if self._in_flight is not None:
                context.aggregated_metrics = {IN_FLIGHT: dict(self._in_flight(pool))}
            wanted, self._state[pool] = policy(context)
            if wanted != replicas:
                self._apply(pool, wanted)
                self._sizes[pool] = wanted
            sizes[pool] = wanted
        return sizes

    def run(self, stop: Any, interval_s: float) -> None:
        """Tick until `stop` (a threading.Event) is set; a failed tick is logged and retried."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("autoscale: tick failed")
            stop.wait(interval_s)

    def close(self) -> None:
        for policy in self._policies.values():
            policy.close()


class _Context:
    """The part of Ray's AutoscalingContext the policy reads."""

    def __init__(self, *, target_num_replicas: int, policy_state: dict[str, Any]) -> None:
        self.target_num_replicas = target_num_replicas
        self.policy_state = policy_state
        self.aggregated_metrics: dict[str, Any] = {}
