"""Shared fixtures: a real broker (tests/broker_fixture.py), and for the integration and
end-to-end tests a whole pipeline — fake upstream, Faust worker and bridge as real processes —
on topics with a prefix of their own, so runs never see each other's records."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sluicegate.processors.identity import IssuedKey, issue_key, parse_key
from sluicegate.settings import (
    AnalyticsSettings,
    AuthSettings,
    BridgeSettings,
    CacheSettings,
    Deployment,
    KafkaSettings,
    LimitRule,
    LimitsSettings,
    ModelAlias,
    PromptExperiment,
    PromptSettings,
    ResilienceSettings,
    Settings,
    WorkerSettings,
)

pytest_plugins = ["tests.broker_fixture"]

REPO_ROOT = Path(__file__).resolve().parent.parent

BUDGET_TENANT = "budget-tenant"  # a budget of a fraction of a cent per day
BUDGET_USD_PER_DAY = 1e-6


@dataclass(frozen=True)
class CallerKey:
    """An API key the tests call with; `publish_test_keys` puts it on sg.identity."""

    issued: IssuedKey
    tenant: str = "default"
    roles: tuple[str, ...] = ("developer",)
    models: tuple[str, ...] = ()
    limits: dict[str, float] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.issued.token

    @property
    def key_id(self) -> str:
        return self.issued.key_id


def _key(**fields: Any) -> CallerKey:
    return CallerKey(issue_key(AuthSettings().key_prefix), **fields)


# The callers of the end-to-end tests: nothing on the bridge is open without a key.
CALLER = _key()
ADMIN = _key(roles=("admin",))
LIMITED = _key(limits={"requests_per_minute": 3})  # tests/e2e/test_gateway.py
RESTART = _key(limits={"requests_per_minute": 1})  # the worker-restart test
BUDGETED = _key(tenant=BUDGET_TENANT)
GLOBEX = _key(tenant="globex")
FAKE_ONLY = _key(models=("gpt-fake",))
# tests/e2e/test_improve.py: one tenant; a key with a limit (replays must not touch it), one free.
IMPROVE = _key(tenant="improve", limits={"requests_per_minute": 4})
IMPROVE_FREE = _key(tenant="improve")
TEST_KEYS = (CALLER, ADMIN, LIMITED, RESTART, BUDGETED, GLOBEX, FAKE_ONLY, IMPROVE, IMPROVE_FREE)
CALLER_TOKEN, LIMITED_TOKEN, RESTART_TOKEN = CALLER.token, LIMITED.token, RESTART.token


def publish_test_keys(settings: Settings) -> None:
    """Tenants and keys of TEST_KEYS on the identity topic of `settings` (before the bridges and
    workers start, so they read them with the rest of the topic)."""
    from sluicegate.cli_identity import key_records, publish_records

    records: list[Any] = []
    for key in TEST_KEYS:
        records += key_records(
            settings,
            token=key.token,
            tenant_id=key.tenant,
            roles=list(key.roles),
            models=list(key.models),
            limits=key.limits,
        )
    publish_records(settings, records)


# How a stream can die halfway (tests/e2e/test_midstream_failure.py): a deployment and an alias
# `gpt-mid-<way>` (falling back to `fake`) for each.
MIDSTREAM_WAYS = ("drop", "cut", "error")


def api_key_id(token: str) -> str:
    """The key id of a key token (`sk-sg-<key_id>_<secret>`): `api_key_id` on events."""
    parsed = parse_key(token, AuthSettings().key_prefix)
    assert parsed is not None, "not a sluicegate key"
    return parsed[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    return settings.to_env()


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
def upstream2() -> Iterator:
    """A second fake upstream, for the deployments that tests make fail."""
    from tests.fakes.openai_upstream import FakeOpenAIUpstream

    server = FakeOpenAIUpstream.start_in_thread(model="fake-model-2")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture(scope="session")
def settings(
    kafka_bootstrap: str,
    upstream,
    upstream2,
    blackhole: Blackhole,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    run = uuid.uuid4().hex[:8]

    def on_upstream2(name: str, provider_model: str, **fields: object) -> Deployment:
        return Deployment(
            name=name,
            backend="openai",
            provider_model=provider_model,
            base_url=upstream2.base_url,
            api_key_env="SLUICEGATE_TEST_KEY",
            pricing_version="test-2026-11",
            **fields,
        )

    return Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{run}."),
        analytics=AnalyticsSettings(dsn=f"chdb://{tmp_path_factory.mktemp('chdb')}/store"),
        bridge=BridgeSettings(port=free_port(), request_timeout_s=60),
        worker=WorkerSettings(
            app_id=f"sluicegate-test-{run}",
            inference_concurrency=8,
            data_dir=tmp_path_factory.mktemp("worker"),
            metrics_port=free_port(),
            inference_metrics_port=free_port(),
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
            # Resilience and routing tests (tests/e2e/test_gateway.py): each test fails
            # deployments of its own, so one test's open breaker never steers another's traffic.
            on_upstream2(
                "flaky", "flaky-model", priority=-1, input_usd_per_mtok=0.3, output_usd_per_mtok=1.2
            ),
            on_upstream2("solo", "solo-model"),
            on_upstream2("small-ctx", "small-model", context_window=4096),
            Deployment(
                name="big-ctx",
                backend="openai",
                provider_model="big-model",
                base_url=upstream.base_url,
                api_key_env="SLUICEGATE_TEST_KEY",
                context_window=128_000,
                priority=1,
            ),
            on_upstream2("brk", "breaker-model"),
            on_upstream2("brk2", "breaker2-model"),
            on_upstream2("streamy", "stream-model"),
            on_upstream2("cheap", "cheap-model", input_usd_per_mtok=0.01, output_usd_per_mtok=0.02),
            # Streams that die halfway (tests/e2e/test_midstream_failure.py): one deployment per
            # way of dying, so no test's failures open another's breaker.
            *(on_upstream2(f"mid-{way}", f"mid-{way}-model") for way in MIDSTREAM_WAYS),
        ],
        models=[
            ModelAlias(name="gpt-fake", deployments=["fake"], description="fake upstream"),
            ModelAlias(name="blackhole", deployments=["hole"], description="never answers"),
            ModelAlias(
                name="smollm2-135m",
                deployments=["local-smollm2"],
                description="SmolLM2-135M on llama.cpp",
            ),
            ModelAlias(
                name="gpt-chain",
                deployments=["fake", "flaky"],
                description="flaky first (priority -1), then fake",
            ),
            ModelAlias(name="gpt-solo", deployments=["solo"], description="no fallback"),
            ModelAlias(
                name="gpt-ctx",
                deployments=["small-ctx", "big-ctx"],
                description="4k context first, then 128k",
            ),
            ModelAlias(name="gpt-breaker", deployments=["brk", "fake"]),
            ModelAlias(name="gpt-breaker2", deployments=["brk2", "fake"]),
            ModelAlias(name="gpt-stream", deployments=["streamy", "fake"]),
            ModelAlias(name="gpt-cheap", deployments=["fake", "cheap"], strategy="cost"),
            *(
                ModelAlias(name=f"gpt-mid-{way}", deployments=[f"mid-{way}", "fake"])
                for way in MIDSTREAM_WAYS
            ),
        ],
        resilience=ResilienceSettings(
            backoff_base_s=0.05,
            backoff_max_s=0.2,
            breaker_failures=3,
            breaker_window_s=30,
            breaker_cooldown_s=2,
        ),
        # Keys carry their own limits (TEST_KEYS); the budget tenant's comes from settings.
        limits=LimitsSettings(tenants={BUDGET_TENANT: LimitRule(usd_per_day=BUDGET_USD_PER_DAY)}),
        # Tests count upstream requests: an answer from the cache would not reach it. The cache's
        # own end-to-end test builds settings of its own.
        cache=CacheSettings(enabled=False),
        # A live A/B test of the `split` prompt in tenant `improve` (tests/e2e/test_improve.py).
        prompts=PromptSettings(
            experiments=[
                PromptExperiment(
                    name="tone",
                    tenant_id="improve",
                    prompt="split",
                    variants={"1": 1.0, "2": 1.0},
                )
            ]
        ),
    )


@pytest.fixture(scope="session")
def topics(settings: Settings) -> Iterator[list[str]]:
    """The run's topics, with the test keys on its identity topic; deleted when the session
    ends (after every process that used them has stopped)."""
    from sluicegate.streams.topics import ensure_topics
    from tests.topics_io import drop_topics

    created = ensure_topics(settings)
    publish_test_keys(settings)
    yield created
    drop_topics(settings)


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
    group_id: str,
    settings: Settings,
    process: subprocess.Popen[bytes],
    log: Path,
    *,
    not_members: frozenset[str] = frozenset(),
) -> None:
    """Ready once the consumer group is stable with partitions assigned (to members other than
    `not_members`, the ids of a stopped process's members)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log.read_text()[-4000:]}")
        try:
            group = admin.describe_consumer_groups([group_id])[group_id].result(5)
            if (
                group.state == ConsumerGroupState.STABLE
                and any(m.assignment.topic_partitions for m in group.members)
                and not any(m.member_id in not_members for m in group.members)
            ):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker not ready in 120 s:\n{log.read_text()[-4000:]}")


def _group_members(group_id: str, settings: Settings) -> frozenset[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    group = admin.describe_consumer_groups([group_id])[group_id].result(10)
    return frozenset(m.member_id for m in group.members)


class Workers:
    """The Faust worker and the inference worker of one settings, as subprocesses."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.restarts = 0
        self.faust_log = logs / "worker.log"
        self.faust = _spawn("worker", settings, self.faust_log)
        self.inference = _spawn("inference", settings, logs / "inference.log")

    def wait_ready(self) -> None:
        _wait_for_group(self.settings.worker.app_id, self.settings, self.faust, self.faust_log)
        _wait_for_group(
            f"{self.settings.worker.app_id}-inference",
            self.settings,
            self.inference,
            self.logs / "inference.log",
        )

    def restart_faust(self) -> subprocess.Popen[bytes]:
        """Stop the Faust worker and start a new one on the same settings (so the same group
        and changelog topics); returns once the new one has its partitions."""
        group = self.settings.worker.app_id
        old_members = _group_members(group, self.settings)
        _stop(self.faust)
        self.restarts += 1
        self.faust_log = self.logs / f"worker-{self.restarts}.log"
        self.faust = _spawn("worker", self.settings, self.faust_log)
        _wait_for_group(group, self.settings, self.faust, self.faust_log, not_members=old_members)
        return self.faust

    def stop(self) -> None:
        _stop(self.inference)
        _stop(self.faust)


@pytest.fixture(scope="session")
def workers(
    settings: Settings, topics: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    """The Faust worker and the inference worker, both with their partitions assigned."""
    running = Workers(settings, tmp_path_factory.mktemp("logs"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def worker(workers: Workers) -> subprocess.Popen[bytes]:
    """The Faust worker process as first started (see `workers` to restart it)."""
    return workers.faust


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
