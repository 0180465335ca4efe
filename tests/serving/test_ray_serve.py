"""Ray Serve replicas consuming the inference topics (serving/ray_serve.py), on the real broker
and a real local Ray node, with the OpenAI-compatible fake upstream as the backend.

Tasks are published straight onto `sg.inference.default` (what admission would write) and the
answers counted on sg.responses: a killed replica's tasks are answered exactly once, and a
backlog scales the pool from 1 to 2 replicas through the lag policy (the driver-side
autoscaler), after which removing the
pool drains it and commits everything. Last, the whole path through the bridge with the official
openai client, a Faust worker and a replica running the local CPU model (SmolLM2 on llama.cpp).
One Ray node serves the whole module (starting one costs
~5 s and ~1 GB).
"""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.settings import Deployment, KafkaSettings, ModelAlias, Settings, WorkerSettings
from sluicegate.streams.topics import ensure_topics
from tests.builders import task
from tests.topics_io import drop_topics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(150),
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="ray is not installed: pip install 'sluicegate[ray]'",
    ),
]

UPSTREAM_DELAY_S = 0.4  # each answer takes this long, so tasks are in flight when it matters


@pytest.fixture(scope="module")
def ray_node() -> Iterator[None]:
    from sluicegate.serving.ray_serve import RayServeSettings, connect, shutdown

    connect(RayServeSettings(num_cpus=2, object_store_mb=128))
    yield
    shutdown()


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator:
    from tests.fakes.openai_upstream import FakeOpenAIUpstream

    server = FakeOpenAIUpstream.start_in_thread(delay_s=UPSTREAM_DELAY_S)
    yield server
    server.stop()


@pytest.fixture
def pool_settings(kafka_bootstrap: str, slow_upstream, tmp_path: Path) -> Iterator[Settings]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"ray{run}."),
        worker=WorkerSettings(
            app_id=f"sluicegate-ray-{run}",
            inference_concurrency=4,
            data_dir=tmp_path,
            metrics_port=None,
            inference_metrics_port=None,
        ),
        deployments=[
            Deployment(
                name="fake",
                backend="openai",
                provider_model="fake-model",
                base_url=slow_upstream.base_url,
            )
        ],
        models=[ModelAlias(name="gpt-fake", deployments=["fake"])],
    )
    ensure_topics(settings)
    yield settings
    drop_topics(settings)


def publish_tasks(settings: Settings, count: int, *, stream: bool) -> list[str]:
    serde = build_serde(settings)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "acks": "all"})
    ids = []
    for _ in range(count):
        t = task("fake", stream=stream)
        producer.produce(
            settings.topic("inference.default"), key=t.request_id.encode(), value=serde.encode(t)
        )
        ids.append(t.request_id)
    assert producer.flush(10) == 0
    return ids


class Responses:
    """Follows sg.responses from the beginning; counts final results per request id."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic("responses")
        self.counts: Counter[str] = Counter()
        self.seen: dict[str, list[str]] = {}  # request id → where each final result was read
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"test-{uuid.uuid4()}",
                "enable.auto.commit": False,
            }
        )
        partitions = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        self._partitions = list(partitions.partitions)
        self._consumer.assign([TopicPartition(self.topic, p, -2) for p in self._partitions])

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self._consumer.consume(500, timeout=0.1):
                if message.error() is None and message.key():
                    key = message.key().decode()
                    self.counts[key] += 1
                    _kind, at_ms = message.timestamp()
                    self.seen.setdefault(key, []).append(
                        f"p{message.partition()}@{message.offset()} t={at_ms / 1000:.3f}"
                    )

    def wait_for(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not set(ids) <= set(self.counts):
            self.read(0.5)
        missing = set(ids) - set(self.counts)
        assert not missing, f"{len(missing)} of {len(ids)} requests unanswered"

    def to_end(self) -> None:
        """Read up to the current end, so a late duplicate would be counted too."""
        ends = {}
        for p in self._partitions:
            ends[p] = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p))[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            positions = self._consumer.position(
                [TopicPartition(self.topic, p) for p in self._partitions]
            )
            if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions):
                return
            self.read(0.2)

    def close(self) -> None:
        self._consumer.close()


def replica_actors(pool: str) -> list[str]:
    import ray

    from sluicegate.serving.ray_serve import app_name

    prefix = f"SERVE_REPLICA::{app_name(pool)}#"
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    ]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def test_a_replica_killed_mid_stream_leaves_every_request_answered_once(
    ray_node: None, pool_settings: Settings
) -> None:
    import ray

    from sluicegate.serving.ray_serve import (
        PoolServing,
        RayServeSettings,
        deploy,
        remove_pools,
        replica_counts,
    )

    serving = RayServeSettings(
        consumer_session_timeout_ms=6000,
        pools={"default": PoolServing(autoscale=False, replicas=2, num_cpus=0.25)},
    )
    deploy(pool_settings, serving, ["default"])
    responses = Responses(pool_settings)
    try:
        assert replica_counts(["default"]) == {"default": 2}
        ids = publish_tasks(pool_settings, 60, stream=True)
        wait_until(lambda: (responses.read(0.2), len(responses.counts) >= 8)[1], 30, "answers")
        victim = replica_actors("default")[0]
        killed_at = time.time()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

        responses.wait_for(ids, timeout_s=60)
        responses.to_end()
        assert set(responses.counts) == set(ids)
        duplicates = {rid: responses.seen[rid] for rid, n in responses.counts.items() if n != 1}
        assert duplicates == {}, f"killed at t={killed_at:.3f}"
        # Serve replaced the killed replica.
        wait_until(lambda: replica_counts(["default"])["default"] == 2, 30, "a new replica")
        assert victim not in replica_actors("default")
    finally:
        responses.close()
        remove_pools(["default"])


def test_a_backlog_scales_the_pool_up_and_removing_it_drains_and_commits(
    ray_node: None, pool_settings: Settings
) -> None:
    from sluicegate.serving.ray_autoscale import PoolLag
    from sluicegate.serving.ray_serve import (
        PoolServing,
        RayServeSettings,
        deploy,
        driver_autoscaler,
        in_flight_of,
        pool_group,
        remove_pools,
        replica_counts,
    )

    serving = RayServeSettings(
        lag_interval_s=0.5,
        look_back_period_s=1.0,
        pools={
            "default": PoolServing(
                num_cpus=0.25,
                min_replicas=1,
                max_replicas=2,
                target_lag_per_replica=5,
                upscale_cooldown_s=0,
                downscale_cooldown_s=600,  # no scale-down while the test reads
            )
        },
    )
    deploy(pool_settings, serving, ["default"])
    autoscaler = driver_autoscaler(pool_settings, serving, ["default"])
    stop = threading.Event()
    ticking = threading.Thread(target=autoscaler.run, args=(stop, 0.5), daemon=True)
    ticking.start()
    responses = Responses(pool_settings)
    removed = False
    try:
        assert replica_counts(["default"]) == {"default": 1}
        ids = publish_tasks(pool_settings, 80, stream=False)  # ~10 s for one replica alone
        wait_until(lambda: replica_counts(["default"])["default"] == 2, 30, "a second replica")
        # Both replicas post their in-flight counts for the driver-side policy.
        wait_until(
            lambda: len(in_flight_of("default", serving.namespace, 2.0)) == 2,
            15,
            "in-flight reports of both replicas",
        )
        responses.wait_for(ids, timeout_s=60)

        stop.set()
        ticking.join(10)
        remove_pools(["default"])  # both replicas drain: finish, commit, leave the group
        removed = True
        wait_until(lambda: not replica_actors("default"), 30, "replicas gone")
        responses.to_end()
        assert set(responses.counts) == set(ids)
        lag = PoolLag(
            kafka=pool_settings.kafka,
            group=pool_group(pool_settings, "default"),
            topic=pool_settings.topic("inference.default"),
        )
        try:
            lag._collector.refresh()
            assert lag.total() == 0  # every answered task's offset was committed
        finally:
            lag.close()
    finally:
        stop.set()
        autoscaler.close()
        responses.close()
        if not removed:
            remove_pools(["default"])


def test_replicas_with_the_local_cpu_model_answer_through_the_bridge(
    ray_node: None, pool_settings: Settings, tmp_path: Path
) -> None:
    """The whole path with Ray Serve as the inference stage: the official openai client → the
    bridge → the Faust worker → sg.inference.cpu → a Ray replica running SmolLM2 on llama.cpp
    (the embedded default's CPU model) → back, plain and streamed; and, in the same cluster,
    the upstream's pool and the batch lane."""
    import openai

    from sluicegate.serving.ray_serve import PoolServing, RayServeSettings, deploy, remove_pools
    from sluicegate.settings import BridgeSettings
    from tests.conftest import (
        CALLER_TOKEN,
        _spawn,
        _stop,
        _wait_for_group,
        free_port,
        publish_test_keys,
        start_bridge,
    )

    local = Deployment(
        name="local-smollm2",
        backend="llamacpp",
        provider_model="SmolLM2-135M-Instruct.Q4_1",
        pool="cpu",
    )
    settings = pool_settings.model_copy(
        update={
            "deployments": [*pool_settings.deployments, local],
            "models": [
                *pool_settings.models,
                ModelAlias(name="smollm2-135m", deployments=[local.name]),
            ],
            "bridge": BridgeSettings(port=free_port(), request_timeout_s=60),
        }
    )
    ensure_topics(settings)
    publish_test_keys(settings)
    # Several pools in one cluster, each with its own resources: the local model's pool, the
    # upstream's pool and the batch lane (its tasks may name any deployment).
    pools = ["cpu", "default", settings.batch.pool]
    one = PoolServing(autoscale=False, replicas=1, num_cpus=0.25)
    serving = RayServeSettings(pools=dict.fromkeys(pools, one))
    deploy(settings, serving, pools)
    worker = _spawn("worker", settings, tmp_path / "worker.log")
    bridge = None
    try:
        _wait_for_group(settings.worker.app_id, settings, worker, tmp_path / "worker.log")
        bridge = start_bridge(settings, tmp_path / "bridge.log")
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{settings.bridge.port}/v1",
            api_key=CALLER_TOKEN,
            max_retries=0,
            timeout=60,
        )
        reply = client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
        stream = client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text
        other_pool = client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "pool default"}]
        )
        assert other_pool.choices[0].message.content == "echo: pool default"
        batch = client.chat.completions.create(
            model="gpt-fake",
            messages=[{"role": "user", "content": "the batch lane"}],
            extra_headers={"X-Sluicegate-Priority": "batch"},
        )
        assert batch.choices[0].message.content == "echo: the batch lane"
    finally:
        if bridge is not None:
            _stop(bridge)
        _stop(worker)
        remove_pools(pools)


def test_serve_joins_an_existing_cluster_by_its_ray_client_address(
    pool_settings: Settings, tmp_path: Path
) -> None:
    """`sluicegate serve --address ray://…` on a cluster it did not start (a `ray start --head`
    of its own here): the pool's replicas run there and answer; stopping `serve` removes the
    pool and leaves the cluster running."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import tempfile

    from tests.conftest import REPO_ROOT, free_port, settings_env

    gcs_port, client_port = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [  # the `ray` CLI of this interpreter, wherever its scripts directory is
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            f"--ray-client-server-port={client_port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--node-ip-address=127.0.0.1",
        ],
        stdout=(tmp_path / "head.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    try:

        def client_port_open() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", client_port)) == 0

        wait_until(client_port_open, 60, "the head's Ray client server")
        env = {
            **os.environ,
            **settings_env(pool_settings),
            "SLUICEGATE_RAY": json.dumps(
                {"pools": {"default": {"autoscale": False, "replicas": 1, "num_cpus": 0.5}}}
            ),
        }
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sluicegate.cli",
                "serve",
                "--address",
                f"ray://127.0.0.1:{client_port}",
                "--pool",
                "default",
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=(tmp_path / "serve.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        ids = publish_tasks(pool_settings, 5, stream=False)
        responses = Responses(pool_settings)
        try:
            responses.wait_for(ids, timeout_s=90)
        finally:
            responses.close()
        serve.send_signal(signal.SIGTERM)  # its own process, not the group (docs/serving.md)
        assert serve.wait(60) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert head.poll() is None  # the cluster it joined is still up
    finally:
        if serve is not None and serve.poll() is None:
            serve.kill()
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)
