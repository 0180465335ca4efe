"""The three things the bridge-overhead benchmark puts load on, each behind the same zero-latency
upstream: the upstream itself, sluicegate (worker + bridge on a fresh topic prefix), and the
LiteLLM proxy (in a virtualenv of its own, so its pins never touch the project's packages).

Each `start_*` returns a `Target`; `Target.stop()` stops what it started and removes what it
created (the run's topics and consumer group), bounded in time, and is safe to call twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._procs import Service, ServiceError, free_port, http_status, wait_http
from sluicegate.processors.identity import issue_key
from sluicegate.settings import AuthSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_HOME = Path.home() / ".sluicegate" / "bench"
LITELLM_VENV = BENCH_HOME / "litellm-venv"
CHAT = "/v1/chat/completions"

if TYPE_CHECKING:
    from sluicegate.settings import Settings


@dataclass
class Target:
    name: str
    url: str  # the chat-completions URL
    services: dict[str, Service]  # role -> service, for CPU accounting
    extra_pids: dict[str, list[int]] = field(default_factory=dict)  # e.g. the broker
    version: str | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # what a caller must send (its key)
    settings: Any = None  # sluicegate's: the run's Settings (topics, prefix)

    def roles(self) -> dict[str, list[int]]:
        """Pids per role; `worker2`, `worker3`... count as `worker`."""
        roles: dict[str, list[int]] = {}
        for name, service in self.services.items():
            roles.setdefault(name.rstrip("0123456789"), []).extend(service.pids())
        return {**roles, **self.extra_pids}

    def check(self) -> None:
        for service in self.services.values():
            service.check()

    def stop(self) -> None:
        for service in reversed(self.services.values()):
            service.stop()
        while self.cleanup:
            try:
                self.cleanup.pop()()
            except Exception as exc:  # cleanup must not hide the run's own outcome
                print(f"  cleanup of {self.name}: {exc!r}", file=sys.stderr)


def start_upstream(log_dir: Path) -> Target:
    port = free_port()
    service = Service(
        "upstream",
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_upstream",
            "--port",
            str(port),
            "--delay-ms",
            "0",
        ],
        log_dir / "upstream.log",
        cwd=REPO_ROOT,
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/v1/models", service, timeout_s=30)
    except BaseException:
        service.stop()
        raise
    return Target("upstream", f"{base}{CHAT}", {"upstream": service})


# -- sluicegate ---------------------------------------------------------------------------


def broker_pid() -> list[int]:
    home = Path(os.environ.get("SLUICEGATE_HOME", Path.home() / ".sluicegate"))
    try:
        pid = int((home / "kafka" / "data" / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return []
    return [pid] if Path(f"/proc/{pid}").exists() else []


def ensure_broker(bootstrap: str) -> None:
    """Start the local jar broker unless one answers (the script reuses a running broker)."""
    port = bootstrap.rsplit(":", 1)[-1]
    env = {**os.environ, "SLUICEGATE_KAFKA_PORT": port}
    subprocess.run(
        ["bash", str(REPO_ROOT / "infra" / "kafka" / "kafka.sh"), "start"],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )


def bench_settings(
    *,
    upstream_base: str,
    bootstrap: str,
    run_id: str,
    inference_concurrency: int,
    request_timeout_s: float,
    data_dir: Path,
) -> Settings:
    """sluicegate's settings for one benchmark run: a topic prefix, consumer groups and a port
    of its own, and one alias `bench` on the loopback upstream."""
    from sluicegate.settings import (
        BridgeSettings,
        Deployment,
        KafkaSettings,
        ModelAlias,
        Settings,
        WorkerSettings,
    )

    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench{run_id}."),
        bridge=BridgeSettings(port=free_port(), request_timeout_s=request_timeout_s),
        worker=WorkerSettings(
            app_id=f"sluicegate-bench-{run_id}",
            inference_concurrency=inference_concurrency,
            data_dir=data_dir,
        ),
        deployments=[
            Deployment(
                name="up",
                backend="openai",
                provider_model="fake",
                base_url=upstream_base,
                api_key_env="BENCH_KEY",
            )
        ],
        models=[ModelAlias(name="bench", deployments=["up"], description="bench upstream")],
    )


def start_sluicegate(
    *,
    upstream_base: str,
    bootstrap: str,
    log_dir: Path,
    run_id: str,
    inference_concurrency: int,
    request_timeout_s: float,
    workers: int = 1,
) -> Target:
    ensure_broker(bootstrap)
    data_dir = Path(tempfile.mkdtemp(prefix=f"sgbench-{run_id}-"))
    settings = bench_settings(
        upstream_base=upstream_base,
        bootstrap=bootstrap,
        run_id=run_id,
        inference_concurrency=inference_concurrency,
        request_timeout_s=request_timeout_s,
        data_dir=data_dir,
    )
    env = {**os.environ, "BENCH_KEY": "sk-bench", **settings.to_env()}
    url = f"http://127.0.0.1:{settings.bridge.port}"
    target = Target(
        "sluicegate",
        f"{url}{CHAT}",
        {},
        extra_pids={"kafka": broker_pid()},
        headers={"Authorization": f"Bearer {register_bench_key(settings)}"},
        settings=settings,
    )
    target.cleanup.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
    target.cleanup.append(lambda: delete_kafka_state(settings))
    try:
        cli = [sys.executable, "-m", "sluicegate.cli"]
        for i in range(workers):  # one consumer group; more processes share its partitions
            name = "worker" if i == 0 else f"worker{i + 1}"
            worker = Service(
                name, [*cli, "worker"], log_dir / f"{name}.log", env=env, cwd=REPO_ROOT
            )
            target.services[name] = worker.start()
        faust_workers = list(target.services.values())
        inference = Service(
            "inference", [*cli, "inference"], log_dir / "inference.log", env=env, cwd=REPO_ROOT
        )
        target.services["inference"] = inference.start()
        _wait_for_group(bootstrap, settings.worker.app_id, faust_workers, timeout_s=120)
        _wait_for_group(
            bootstrap, f"{settings.worker.app_id}-inference", [inference], timeout_s=120
        )
        bridge = Service("bridge", [*cli, "bridge"], log_dir / "bridge.log", env=env, cwd=REPO_ROOT)
        target.services = {"bridge": bridge.start(), **target.services}
        wait_http(f"{url}/readyz", bridge, timeout_s=60)
    except BaseException:
        target.stop()
        raise
    return target


def _wait_for_group(
    bootstrap: str, group_id: str, workers: list[Service], *, timeout_s: float
) -> None:
    """Ready once the workers' consumer group is Stable, each member with partitions."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in workers:
            worker.check()
        try:
            group = admin.describe_consumer_groups([group_id])[group_id].result(5)
            assigned = [m for m in group.members if m.assignment.topic_partitions]
            if group.state == ConsumerGroupState.STABLE and len(assigned) >= len(workers):
                return
        except Exception:  # the group does not exist yet
            pass
        time.sleep(0.5)
    tails = "\n".join(w.tail(1500) for w in workers)
    raise ServiceError(f"worker group {group_id} not stable in {timeout_s:g} s:\n{tails}")


def delete_kafka_state(settings: Settings) -> None:
    """Remove the run's topics (its prefix and Faust's app-id topics) and its consumer group."""
    from confluent_kafka.admin import AdminClient

    kafka, worker = settings.kafka, settings.worker
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    names = [
        t
        for t in admin.list_topics(timeout=10).topics
        if t.startswith(kafka.topic_prefix) or t.startswith(f"{worker.app_id}-")
    ]
    for future in admin.delete_topics(names, operation_timeout=30).values() if names else []:
        future.result(30)
    groups = [worker.app_id, f"{worker.app_id}-inference"]
    for future in admin.delete_consumer_groups(groups).values():
        try:
            future.result(10)
        except Exception:  # a group that never committed may not exist
            pass


# -- LiteLLM ------------------------------------------------------------------------------


def ensure_litellm(version: str, log_dir: Path) -> Path:
    """The venv's `litellm`, installing `litellm[proxy]==version` into it when needed."""
    python, litellm = LITELLM_VENV / "bin" / "python", LITELLM_VENV / "bin" / "litellm"
    if litellm.exists() and litellm_version() == version:
        return litellm
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=120)
    print(f"installing litellm[proxy]=={version} into {LITELLM_VENV} ...", flush=True)
    with (log_dir / "litellm-install.log").open("wb") as out:
        subprocess.run(
            [str(python), "-m", "pip", "install", f"litellm[proxy]=={version}"],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1200,
        )
    return litellm


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() if out.returncode == 0 else None


LITELLM_CONFIG = """\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/fake
      api_base: {api_base}
      api_key: sk-bench
litellm_settings:
  drop_params: true
  set_verbose: false
  json_logs: false
  callbacks: []
  success_callback: []
  failure_callback: []
  service_callback: []
  turn_off_message_logging: true
  cache: false
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  disable_spend_logs: true
  disable_error_logs: true
  disable_adding_master_key_hash_to_db: true
  background_health_checks: false
"""


def start_litellm(
    *, upstream_base: str, log_dir: Path, version: str, workers: int, master_key: str
) -> Target:
    litellm = ensure_litellm(version, log_dir)
    config = log_dir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(api_base=upstream_base))
    port = free_port()
    env = {
        "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the model price map
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    service = Service(
        "litellm",
        [
            str(litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
        ],
        log_dir / "litellm.log",
        env=env,
        cwd=log_dir,
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health/liveliness", service, timeout_s=180)
    except BaseException:
        service.stop()
        raise
    return Target("litellm", f"{base}{CHAT}", {"litellm": service}, version=version)


BENCH_TOKEN = issue_key(AuthSettings().key_prefix).token
"""One key per benchmark run: sluicegate's key format, and LiteLLM's master key too (it takes
any `sk-` string), so every target is called with the same Authorization header."""


def new_master_key() -> str:
    return BENCH_TOKEN


def register_bench_key(settings: Any) -> str:
    """Put BENCH_TOKEN on the run's identity topic (nothing on the bridge is open without a
    key) and return it."""
    from sluicegate.cli_identity import key_records, publish_records
    from sluicegate.streams.topics import ensure_topics

    ensure_topics(settings)
    publish_records(settings, key_records(settings, token=BENCH_TOKEN, tenant_id="bench"))
    return BENCH_TOKEN


def probe(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 10.0) -> float | None:
    """Seconds one request took, or None when it failed."""
    start = time.perf_counter()
    status = http_status(
        url,
        method="POST",
        body=body,
        timeout_s=timeout_s,
        headers={"Content-Type": "application/json", **headers},
    )
    return time.perf_counter() - start if status == 200 else None
