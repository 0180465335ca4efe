"""Pytest plugin: a real Kafka broker for the test session (fixture ``kafka_bootstrap``).

The broker is chosen in this order, cheapest and most explicit first:

1. ``KAFKA_BOOTSTRAP_SERVERS`` if set: the caller already runs a broker (CI service,
   a developer's own cluster), so we never start a second one.
2. A Docker engine that answers plus ``testcontainers.kafka``: a throwaway container,
   isolated per session, the usual choice on a developer laptop.
3. ``infra/kafka/kafka.sh start``: a single-node KRaft broker in a local JVM, for
   machines without Docker (this project's CI). It is reused if already running and
   stopped at session end only if this fixture started it.

Enable with ``pytest_plugins = ["tests.broker_fixture"]`` (or the module's import name).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
KAFKA_SH: Path = REPO_ROOT / "infra" / "kafka" / "kafka.sh"

DOCKER_PROBE_TIMEOUT_S: float = 5.0
# First run may resolve the broker jars with Maven before the 120 s readiness wait.
KAFKA_SH_START_TIMEOUT_S: float = 420.0


def _testcontainers_kafka_importable() -> bool:
    try:
        return importlib.util.find_spec("testcontainers.kafka") is not None
    except (ImportError, ValueError):
        return False


def _docker_answers() -> bool:
    """True if a Docker engine responds within a few seconds."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        docker = None
    if docker is not None:
        try:
            client = docker.from_env(timeout=int(DOCKER_PROBE_TIMEOUT_S))
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(
            ["docker", "info"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=DOCKER_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _kafka_sh(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(KAFKA_SH), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO_ROOT,
    )


def _start_local_broker() -> tuple[str, bool]:
    """Start (or reuse) the kafka.sh broker; return (bootstrap, started_by_us)."""
    already_running = _kafka_sh("status", timeout=30).returncode == 0
    proc = _kafka_sh("start", timeout=KAFKA_SH_START_TIMEOUT_S)
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{KAFKA_SH} start failed (exit {proc.returncode})\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return lines[-1], not already_running


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers (``host:port``) of a running Kafka broker for this session."""
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if from_env:
        yield from_env
        return

    if _testcontainers_kafka_importable() and _docker_answers():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        image = os.environ.get("SLUICEGATE_KAFKA_IMAGE")
        container: Any = KafkaContainer(image) if image else KafkaContainer()
        container.start()
        try:
            yield str(container.get_bootstrap_server())
        finally:
            container.stop()
        return

    bootstrap, started = _start_local_broker()
    try:
        yield bootstrap
    finally:
        if started:
            _kafka_sh("stop", timeout=60)
