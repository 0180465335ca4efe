"""Shared fixtures: a real broker (tests/broker_fixture.py), and for the integration and
end-to-end tests a whole pipeline — fake upstream, Faust worker and bridge as real processes —
on topics with a prefix of their own, so runs never see each other's records."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluicegate.settings import (
    AnalyticsSettings,
    BridgeSettings,
    Deployment,
    KafkaSettings,
    ModelAlias,
    Settings,
    WorkerSettings,
)

pytest_plugins = ["tests.broker_fixture"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    dumped = settings.model_dump(mode="json")
    return {
        f"SLUICEGATE_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in dumped.items()
        if value is not None
    }


class Blackhole:
    """A TCP server on loopback that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator:
    from tests.fakes.openai_upstream import FakeOpenAIUpstream

    server = FakeOpenAIUpstream.start_in_thread()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture(scope="session")
def settings(
    kafka_bootstrap: str, upstream, blackhole: Blackhole, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{run}."),
        analytics=AnalyticsSettings(dsn=f"chdb://{tmp_path_factory.mktemp('chdb')}/store"),
        bridge=BridgeSettings(port=free_port(), request_timeout_s=60),
        worker=WorkerSettings(
            app_id=f"sluicegate-test-{run}",
            inference_concurrency=8,
            data_dir=tmp_path_factory.mktemp("worker"),
        ),
        deployments=[
            Deployment(
                name="fake",
                backend="openai",
                provider_model="fake-model",
                base_url=upstream.base_url,
                api_key_env="SLUICEGATE_TEST_KEY",
                input_usd_per_mtok=0.15,
                output_usd_per_mtok=0.60,
                pricing_version="test-2026-11",
            ),
            Deployment(
                name="hole",
                backend="openai",
                provider_model="hole",
                pool="slow",
                base_url=blackhole.url,
                timeout_s=30,
            ),
            Deployment(
                name="local-smollm2",
                backend="llamacpp",
                provider_model="SmolLM2-135M-Instruct.Q4_1",
            ),
        ],
        models=[
            ModelAlias(name="gpt-fake", deployments=["fake"], description="fake upstream"),
            ModelAlias(name="blackhole", deployments=["hole"], description="never answers"),
            ModelAlias(
                name="smollm2-135m",
                deployments=["local-smollm2"],
                description="SmolLM2-135M on llama.cpp",
            ),
        ],
    )


@pytest.fixture(scope="session")
def topics(settings: Settings) -> list[str]:
    from sluicegate.streams.topics import ensure_topics

    return ensure_topics(settings)


def _spawn(command: str, settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings), "SLUICEGATE_TEST_KEY": "sk-test"}
    return subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", command],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def _wait_for_group(
    group_id: str, settings: Settings, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Ready once the consumer group is stable with partitions assigned."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log.read_text()[-4000:]}")
        try:
            group = admin.describe_consumer_groups([group_id])[group_id].result(5)
            if group.state == ConsumerGroupState.STABLE and any(
                m.assignment.topic_partitions for m in group.members
            ):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker not ready in 120 s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def worker(
    settings: Settings, topics: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """The Faust worker and the inference worker, both with their partitions assigned."""
    logs = tmp_path_factory.mktemp("logs")
    faust_worker = _spawn("worker", settings, logs / "worker.log")
    inference = _spawn("inference", settings, logs / "inference.log")
    try:
        _wait_for_group(settings.worker.app_id, settings, faust_worker, logs / "worker.log")
        _wait_for_group(
            f"{settings.worker.app_id}-inference", settings, inference, logs / "inference.log"
        )
        yield faust_worker
    finally:
        _stop(inference)
        _stop(faust_worker)


def start_bridge(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """A bridge process for `settings`, returned once /readyz answers 200."""
    import httpx

    process = _spawn("bridge", settings, log)
    url = f"http://127.0.0.1:{settings.bridge.port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bridge exited:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"bridge not ready:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="session")
def bridge_url(
    settings: Settings, worker: subprocess.Popen[bytes], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    process = start_bridge(settings, tmp_path_factory.mktemp("logs") / "bridge.log")
    try:
        yield f"http://127.0.0.1:{settings.bridge.port}"
    finally:
        _stop(process)
