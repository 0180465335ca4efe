"""Ray Serve replicas that consume the inference topics: one Serve application per pool.

Each replica of a pool runs the same `InferenceWorker` as `sluicegate inference`, on a thread
of its own with its own event loop, limited to that pool's topic and in that pool's consumer
group (`<app_id>-<pool>-inference`), so Kafka spreads the topic's partitions over the pool's
replicas and a rebalance in one pool never stops another. Everything the worker guarantees
holds unchanged: offsets stored only once an answer is acknowledged, redelivered tasks skipped
through sg.responses, retries and fallbacks as new tasks.

Ray is only the placement and lifecycle layer: it gives each replica its CPUs or (fractional)
GPUs, restarts a replica whose loop died (`check_health`), and scales the pool with the
lag-driven policy of serving/ray_autoscale.py (the replicas report their in-flight tasks through
`record_autoscaling_stats`). No request reaches a replica through Ray: no route, no HTTP proxy.

Scale-down and redeploys drain: Ray Serve calls the replica's `__del__` during its graceful
shutdown (bounded by `graceful_shutdown_timeout_s`, then the actor is killed). The replica
stops fetching, lets the worker finish its in-flight tasks (up to the worker's own grace),
and closes the consumer, which commits the offsets of every answered task and leaves the group,
so the partitions move to the remaining replicas without waiting for a session timeout. A
replica that is killed instead (node loss, OOM, `ray.kill`) leaves its uncommitted tasks to be
redelivered after `consumer_session_timeout_ms`; they are answered once, by the worker's
redelivery check.

Pools are one Serve application each (`sluicegate-<pool>`), so `--pool` deploys and removes
pools independently. Ray is imported only by the functions that talk to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict
from typing import Any, Literal

from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.inference_vllm import VllmBackend
from sluicegate.connectors.ports import Completion, Delta, InferenceBackend
from sluicegate.errors import ConfigurationError
from sluicegate.processors.autoscale import ScalePolicy
from sluicegate.schemas.models import InferenceTask
from sluicegate.settings import (
    Deployment,
    KafkaSettings,
    PoolServing,
    RayServeSettings,
    Settings,
)

log = logging.getLogger(__name__)

APP_PREFIX = "sluicegate-"


def scale_policy(pool: PoolServing, concurrency: int) -> ScalePolicy:
    return ScalePolicy(
        min_replicas=pool.min_replicas,
        max_replicas=pool.max_replicas,
        target_lag_per_replica=pool.target_lag_per_replica,
        target_in_flight_per_replica=concurrency,
        upscale_cooldown_s=pool.upscale_cooldown_s,
        downscale_cooldown_s=pool.downscale_cooldown_s,
    )


# -- inside a replica ---------------------------------------------------------------------------


class _ReplicaKafkaSettings(KafkaSettings):
    """The worker's Kafka settings with a shorter consumer session: a replica Ray kills outright
    does not leave its group, and its partitions wait a whole session before moving."""

    session_timeout_ms: int = 10_000

    def client_config(self) -> dict[str, str]:
        return {
            **super().client_config(),
            "session.timeout.ms": str(self.session_timeout_ms),
            "heartbeat.interval.ms": str(max(self.session_timeout_ms // 6, 500)),
        }


def pool_group(settings: Settings, pool: str) -> str:
    """The consumer group of a pool's replicas."""
    return f"{settings.worker.app_id}-{pool}-inference"


def replica_settings(settings: Settings, pool: str, serving: RayServeSettings) -> Settings:
    """The settings an InferenceWorker of `pool` runs on: the pool's own group (the worker names
    its group after `app_id`), no fixed /metrics port (replicas share hosts; Ray exports its
    own metrics), and the shorter consumer session."""
    worker = settings.worker.model_copy(
        update={
            "app_id": f"{settings.worker.app_id}-{pool}",
            "inference_metrics_port": None,
            # Replicas are interchangeable and share these settings: one static id would fence
            # every replica but one, and Serve replaces a dead replica with a new one anyway.
            "group_instance_id": None,
        }
    )
    kafka = _ReplicaKafkaSettings(
        **dict(settings.kafka), session_timeout_ms=serving.consumer_session_timeout_ms
    )
    return settings.model_copy(update={"worker": worker, "kafka": kafka})


class InFlight:
    """Backend calls under way in one replica: what it reports to the autoscaler."""

    def __init__(self) -> None:
        self.count = 0


class CountedBackend:
    """An InferenceBackend that counts its calls under way; delegates everything."""

    def __init__(self, inner: InferenceBackend, in_flight: InFlight) -> None:
        self.inner = inner
        self._in_flight = in_flight

    async def complete(self, task: InferenceTask) -> Completion:
        self._in_flight.count += 1
        try:
            return await self.inner.complete(task)
        finally:
            self._in_flight.count -= 1

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        self._in_flight.count += 1
        try:
            async for delta in self.inner.stream(task):
                yield delta
        finally:
            self._in_flight.count -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def pool_backends(
    settings: Settings, pool: str, serving: PoolServing, in_flight: InFlight
) -> dict[str, InferenceBackend]:
    """Backends for the deployments of `pool` (a replica runs no other pool's tasks): the
    pool's vLLM engine when it has one, else the catalogue's adapter."""
    # The batch lane's tasks name any deployment (the cheapest capable one of their alias).
    lane = pool == settings.batch.pool
    deployments = [d for d in settings.deployments if lane or d.pool == pool]
    if not deployments:
        raise ConfigurationError(f"no deployment of the catalogue is in pool {pool!r}")
    return {d.name: CountedBackend(_backend(d, serving), in_flight) for d in deployments}


def _backend(deployment: Deployment, serving: PoolServing) -> InferenceBackend:
    if serving.vllm is not None:
        return VllmBackend(deployment=deployment, engine_settings=serving.vllm)
    return build_backend(deployment)


class InFlightBoard:
    """Where a pool's replicas post their in-flight task counts for the driver-side autoscaler
    (a Ray actor named `board_name(pool)`, created by `deploy_pool`). Ray Serve's own metrics
    path reaches only a policy run inside Serve's controller; the driver reads this instead.
    A replica that stopped reporting (killed, drained) drops out after `max_age_s`."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, float]] = {}

    def report(self, replica: str, count: int) -> None:
        self._seen[replica] = (count, time.time())

    def counts(self, max_age_s: float) -> dict[str, int]:
        now = time.time()
        return {r: count for r, (count, at) in self._seen.items() if now - at <= max_age_s}


def board_name(pool: str) -> str:
    return f"{APP_PREFIX}in-flight-{pool}"


def _board(pool: str, namespace: str, *, create: bool) -> Any:
    import ray

    if create:
        return (
            ray.remote(num_cpus=0)(InFlightBoard)
            # Detached: a named actor dies with its last handle, and the driver keeps none.
            .options(
                name=board_name(pool),
                namespace=namespace,
                get_if_exists=True,
                lifetime="detached",
            )
            .remote()
        )
    return ray.get_actor(board_name(pool), namespace=namespace)


def in_flight_of(pool: str, namespace: str, max_age_s: float) -> dict[str, int]:
    """The pool's replicas' in-flight counts reported within `max_age_s` ({} without a board)."""
    import ray

    try:
        board = _board(pool, namespace, create=False)
    except ValueError:  # no board: the pool is not deployed
        return {}
    return ray.get(board.counts.remote(max_age_s), timeout=5)


class InferenceReplica:
    """One Ray Serve replica of one pool: an InferenceWorker on a thread with its own loop."""

    def __init__(self, settings: Settings, pool: str, serving: RayServeSettings) -> None:
        from sluicegate.connectors.schema_registry import build_serde
        from sluicegate.serving.inference_worker import InferenceWorker

        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s: %(message)s"
        )
        self._pool = pool
        self._drain_s = serving.graceful_shutdown_timeout_s
        self._in_flight = InFlight()
        ours = replica_settings(settings, pool, serving)
        self._worker = InferenceWorker(
            settings=ours,
            serde=build_serde(ours),
            backends=pool_backends(ours, pool, serving.pool(pool), self._in_flight),
            pools=[pool],
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"inference-{pool}", daemon=True)
        self._thread.start()
        self._started.wait(10)
        self._namespace, self._report_s = serving.namespace, serving.lag_interval_s
        reporter = threading.Thread(target=self._report, name=f"in-flight-{pool}", daemon=True)
        reporter.start()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve's custom metrics hook: read by KafkaLagPolicy as `in_flight`."""
        return {"in_flight": float(self._in_flight.count)}

    def check_health(self) -> None:
        """Ray replaces a replica whose loop ended without being asked to."""
        if not self._thread.is_alive() and not self._stopping:
            raise RuntimeError(f"the inference loop of pool {self._pool} ended")

    def in_flight(self) -> int:
        return self._in_flight.count

    def __del__(self) -> None:
        """Ray Serve's shutdown hook: stop fetching, finish in-flight tasks, commit, leave."""
        if getattr(self, "_stopping", True):
            return
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has already ended
                pass
        self._thread.join(self._drain_s)
        log.info("replica of pool %s drained", self._pool)

    def _report(self) -> None:
        """Post the in-flight count to the pool's board every `lag_interval_s` (fire and
        forget: a missing board or a lost post only leaves the driver with lag alone)."""
        import uuid

        me, board, warned = f"{self._pool}-{uuid.uuid4().hex[:8]}", None, False
        while not self._stopping:
            try:
                board = board or _board(self._pool, self._namespace, create=False)
                board.report.remote(me, self._in_flight.count)
            except Exception as error:  # the board is gone (driver restarted): look it up again
                if board is not None or not warned:
                    log.warning("pool %s: in-flight board unreachable: %r", self._pool, error)
                    warned = True
                board = None
            time.sleep(self._report_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:
            log.exception("the inference loop of pool %s failed", self._pool)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        try:
            await self._worker.run(self._stop)
        finally:
            for backend in self._worker.backends.values():
                await backend.aclose()


# -- on the driver ------------------------------------------------------------------------------


def app_name(pool: str) -> str:
    return f"{APP_PREFIX}{pool}"


def deployment_options(
    settings: Settings, serving: RayServeSettings, pool: str, replicas: int | None = None
) -> dict[str, Any]:
    """`serve.deployment(...)` options of a pool: resources, size or autoscaling, drain.
    `replicas` is the size the driver-side autoscaler chose (its first deploy: the minimum)."""
    from sluicegate.serving.ray_autoscale import autoscaling_config

    options_of = serving.pool(pool)
    options: dict[str, Any] = {
        "name": f"pool-{pool}",
        "ray_actor_options": {"num_cpus": options_of.num_cpus, "num_gpus": options_of.num_gpus},
        "graceful_shutdown_timeout_s": serving.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.1,  # no Serve requests to wait for: go to __del__
        "health_check_period_s": serving.health_check_period_s,
    }
    if not options_of.autoscale:
        options["num_replicas"] = options_of.replicas
        return options
    if serving.autoscaler == "driver":
        options["num_replicas"] = max(options_of.min_replicas, 1) if replicas is None else replicas
        return options
    options["autoscaling_config"] = autoscaling_config(
        settings=settings,
        group=pool_group(settings, pool),
        topic=settings.topic(f"inference.{pool}"),
        policy=scale_policy(options_of, settings.worker.inference_concurrency),
        lag_interval_s=serving.lag_interval_s,
        look_back_period_s=serving.look_back_period_s,
    )
    return options


def deploy_pool(
    settings: Settings, serving: RayServeSettings, pool: str, replicas: int | None = None
) -> Any:
    """Deploy (or update in place) the Serve application of one pool; returns its handle."""
    from ray import serve

    options = deployment_options(settings, serving, pool, replicas)
    _board(pool, serving.namespace, create=True)  # before the replicas look it up
    deployment = serve.deployment(InferenceReplica, **options)
    return serve.run(
        deployment.bind(settings, pool, serving), name=app_name(pool), route_prefix=None
    )


def deploy(settings: Settings, serving: RayServeSettings, pools: Iterable[str]) -> dict[str, Any]:
    """Deploy every pool named; unknown pools are refused before anything is deployed."""
    wanted = list(dict.fromkeys(pools))
    unknown = sorted(set(wanted) - {*settings.pools, settings.batch.pool})
    if unknown:
        raise ConfigurationError(f"no deployment of the catalogue is in pool(s) {unknown}")
    return {pool: deploy_pool(settings, serving, pool) for pool in wanted}


def remove_pools(pools: Iterable[str]) -> None:
    """Remove pools' applications; their replicas drain as on scale-down."""
    import ray
    from ray import serve

    for pool in pools:
        serve.delete(app_name(pool))
        for namespace in {
            a["namespace"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"] == board_name(pool)
        }:
            ray.kill(ray.get_actor(board_name(pool), namespace=namespace))


def client_auth_env(address: str | None) -> None:
    """Before `ray` is first imported: a Ray Client (`ray://`) sends the cluster's token
    (~/.ray/auth_token or RAY_AUTH_TOKEN) only in token mode, which Ray reads at import, and
    Ray ≥ 2.59 clusters require it; without it the connection times out unheard."""
    if address and address.startswith("ray://"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def connect(serving: RayServeSettings) -> None:
    """Join the cluster at `serving.address`, else start a local one bound to loopback, and
    start Serve without its HTTP proxy (replicas take no requests through it)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        if serving.address:
            ray.init(address=serving.address, namespace=serving.namespace)
        else:
            ray.init(
                namespace=serving.namespace,
                num_cpus=serving.num_cpus,
                object_store_memory=serving.object_store_mb * 1024 * 1024,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                configure_logging=False,
            )
    serve.start(proxy_location="Disabled", http_options={"host": "127.0.0.1"})


def replica_counts(pools: Iterable[str]) -> Mapping[str, int]:
    """Running replicas per pool, from `serve.status()`."""
    from ray import serve

    status = serve.status()
    counts = {}
    for pool in pools:
        app = status.applications.get(app_name(pool))
        deployment = app.deployments.get(f"pool-{pool}") if app is not None else None
        counts[pool] = deployment.replica_states.get("RUNNING", 0) if deployment else 0
    return counts


def driver_autoscaler(settings: Settings, serving: RayServeSettings, pools: Iterable[str]) -> Any:
    """The driver-side autoscaler of the autoscaled pools (None when there is none to run)."""
    from sluicegate.serving.ray_autoscale import DriverAutoscaler, KafkaLagPolicy

    if serving.autoscaler != "driver":
        return None
    scaled = [pool for pool in pools if serving.pool(pool).autoscale]
    if not scaled:
        return None
    concurrency = settings.worker.inference_concurrency
    policies = {
        pool: KafkaLagPolicy(
            kafka=settings.kafka,
            group=pool_group(settings, pool),
            topic=settings.topic(f"inference.{pool}"),
            policy=asdict(scale_policy(serving.pool(pool), concurrency)),
            lag_interval_s=serving.lag_interval_s,
        )
        for pool in scaled
    }
    return DriverAutoscaler(
        policies=policies,
        initial={pool: max(serving.pool(pool).min_replicas, 1) for pool in scaled},
        apply=lambda pool, n: deploy_pool(settings, serving, pool, replicas=n),
        in_flight=lambda pool: in_flight_of(pool, serving.namespace, 3 * serving.lag_interval_s),
    )


def shutdown(mode: Literal["serve", "all"] = "all") -> None:
    """Stop Serve (every pool drains) and, with `all`, disconnect from Ray."""
    import ray
    from ray import serve

    serve.shutdown()
    if mode == "all":
        ray.shutdown()
