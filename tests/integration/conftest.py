"""A second, SASL-only broker for the session (infra/kafka/kafka-sasl.sh), beside the PLAINTEXT
one the rest of the suite uses: its own ports, data dir and users, stopped when the session
ends. Tests that ask for it are skipped only when there is no Java to run it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sluicegate.settings import KafkaSettings, Settings
from tests.conftest import REPO_ROOT, free_port

KAFKA_SASL_SH: Path = REPO_ROOT / "infra" / "kafka" / "kafka-sasl.sh"
# The first run may resolve the broker jars with Maven (kafka.sh fetch) before it starts.
START_TIMEOUT_S = 420.0


@dataclass(frozen=True)
class SaslBroker:
    """Where the SASL broker listens and the user sluicegate authenticates as."""

    bootstrap: str
    username: str
    password: str

    def settings(
        self,
        mechanism: str,
        *,
        password: str | None = None,
        topic_prefix: str = "sasl.",
        **groups: Any,
    ) -> Settings:
        """sluicegate's settings for this broker, `groups` overriding other setting groups."""
        kafka = KafkaSettings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=topic_prefix,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,  # type: ignore[arg-type]
            sasl_username=self.username,
            sasl_password=self.password if password is None else password,  # type: ignore[arg-type]
        )
        return Settings(kafka=kafka, **groups)


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@pytest.fixture(scope="session")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    if _java() is None:
        pytest.skip("no Java (java on PATH or JAVA_HOME): the SASL broker cannot run")
    password = secrets.token_urlsafe(12).replace("_", "-")
    port = free_port()
    env = {
        **os.environ,
        "SLUICEGATE_KAFKA_SASL_PORT": str(port),
        "SLUICEGATE_KAFKA_SASL_CONTROLLER_PORT": str(free_port()),
        "SLUICEGATE_KAFKA_SASL_DATA": str(tmp_path_factory.mktemp("kafka-sasl")),
        "SLUICEGATE_KAFKA_SASL_USERS": f"admin:{secrets.token_hex(8)},sluicegate:{password}",
        "SLUICEGATE_KAFKA_SASL_HEAP_OPTS": "-Xmx384m -Xms64m",
    }

    def run(command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA_SASL_SH), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=REPO_ROOT,
        )

    started = run("start", START_TIMEOUT_S)
    if started.returncode != 0:
        run("stop", 60)
        raise RuntimeError(
            f"{KAFKA_SASL_SH} start failed (exit {started.returncode})\n"
            f"--- stdout ---\n{started.stdout}\n--- stderr ---\n{started.stderr}"
        )
    try:
        yield SaslBroker(f"127.0.0.1:{port}", "sluicegate", password)
    finally:
        run("stop", 60)
