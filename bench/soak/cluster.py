"""The soak's own processes: a broker on ports of its own, a fake upstream, the Faust worker,
the inference worker and two bridges — each startable, kill -9-able and restartable.

The broker is `infra/kafka/kafka.sh` with `SLUICEGATE_HOME` pointing into the run's directory and
`SLUICEGATE_KAFKA_PORT` / `SLUICEGATE_KAFKA_CONTROLLER_PORT` set, so its pid file, data and lock
are the run's own and the broker other people use (9092) is never touched. The broker's jars are
linked from `~/.sluicegate` when they are there (else kafka.sh resolves them with Maven once).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._procs import Service, ServiceError, wait_http

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO_ROOT / "infra" / "kafka" / "kafka.sh"


def kafka_version() -> str:
    pom = (REPO_ROOT / "infra" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka\.version>(.*?)</kafka\.version>", pom)
    if found is None:
        raise ServiceError("cannot read kafka.version from infra/kafka/pom.xml")
    return found.group(1)


@dataclass
class Broker:
    """A single-node KRaft broker whose whole state lives under `home`."""

    home: Path
    port: int
    controller_port: int
    log: Path
    starts: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SLUICEGATE_HOME": str(self.home),
            "SLUICEGATE_KAFKA_PORT": str(self.port),
            "SLUICEGATE_KAFKA_CONTROLLER_PORT": str(self.controller_port),
        }

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka" / "data" / "kafka.pid"

    def link_jars(self) -> None:
        version = kafka_version()
        shared = Path.home() / ".sluicegate" / "kafka" / version / "libs"
        mine = self.home / "kafka" / version / "libs"
        if shared.is_dir() and not mine.exists():
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.symlink_to(shared)

    def _script(self, verb: str, timeout_s: float) -> str:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["bash", str(KAFKA_SH), verb],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        with self.log.open("a") as out:
            out.write(f"--- kafka.sh {verb} ({time.strftime('%H:%M:%S')}) rc={done.returncode}\n")
            out.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise ServiceError(f"kafka.sh {verb} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def start(self) -> None:
        self.link_jars()
        self._script("start", timeout_s=240)
        self.starts += 1

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill9(self) -> int | None:
        pid = self.pid()
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        return pid

    def stop(self) -> None:
        self._script("stop", timeout_s=60)


@dataclass
class ExternalBroker:
    """A broker the soak did not start (`--bootstrap`): used, never killed or stopped.

    The run keeps to topics and groups of its own (a unique topic prefix and app id) and
    deletes them at the end, so it can share a broker with other work.
    """

    bootstrap: str
    home: Path

    def start(self) -> None:
        return None

    def pid(self) -> int | None:
        return None

    def kill9(self) -> int | None:
        raise ServiceError("the broker of --bootstrap is not the soak's to kill")

    def stop(self) -> None:
        return None


@dataclass
class Role:
    """One restartable process: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    ready_url: str | None = None  # wait for 200 on it
    group: str | None = None  # or wait for this consumer group to be stable
    service: Service | None = None
    starts: int = 0
    gone_members: frozenset[str] = field(default_factory=frozenset)

    def start(self) -> Service:
        self.starts += 1
        log = self.logs / f"{self.name}-{self.starts}.log"
        self.service = Service(self.name, self.argv, log, env=self.env, cwd=REPO_ROOT).start()
        return self.service

    def alive(self) -> bool:
        return self.service is not None and self.service.alive()

    def kill9(self, bootstrap: str) -> int | None:
        """SIGKILL to the whole process group, at once; reaped before returning. The group's
        members of the moment are remembered: the restarted process is ready once a member
        that is not one of them has partitions."""
        if self.service is None or not self.service.alive():
            return None
        if self.group is not None:
            self.gone_members = group_members(bootstrap, self.group)
        pid = self.service.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        assert self.service.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.service.process.wait(10)
        return pid

    def wait_ready(self, bootstrap: str, timeout_s: float = 180.0) -> None:
        assert self.service is not None
        if self.ready_url is not None:
            wait_http(self.ready_url, self.service, timeout_s=timeout_s)
        if self.group is not None:
            wait_group(
                bootstrap,
                self.group,
                self.service,
                timeout_s=timeout_s,
                not_members=self.gone_members,
            )

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(timeout_s=10)


def group_members(bootstrap: str, group_id: str) -> frozenset[str]:
    """The member ids of a consumer group now (empty when the broker does not answer)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        group = admin.describe_consumer_groups([group_id], request_timeout=3)[group_id].result(4)
    except Exception:
        return frozenset()
    return frozenset(m.member_id for m in group.members)


def wait_group(
    bootstrap: str,
    group_id: str,
    service: Service,
    *,
    timeout_s: float,
    not_members: frozenset[str] = frozenset(),
) -> None:
    """Ready once the group is Stable with partitions assigned to a member other than
    `not_members` (a killed predecessor's member lingers until its session times out)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.check()
        try:
            group = admin.describe_consumer_groups([group_id], request_timeout=5)[group_id].result(
                6
            )
            if group.state == ConsumerGroupState.STABLE and any(
                m.assignment.topic_partitions and m.member_id not in not_members
                for m in group.members
            ):
                return
        except Exception:  # the group or the broker is not there yet
            pass
        time.sleep(0.5)
    raise ServiceError(f"{service.name}: group {group_id} not stable in {timeout_s:g} s")


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]
