"""Processes for the benchmarks: start them in sessions of their own, wait until they answer,
stop them (bounded, the whole process group), and account the CPU they burn.

CPU is read from /proc (utime + stime of every process and thread), so no tool beyond the
kernel is needed; the load generator, a child that exits, is accounted with `getrusage`.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceError(RuntimeError):
    """A service did not start, or died, during the benchmark."""


@dataclass
class Service:
    """One command run in its own session, so stopping it reaches every process it forked."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ServiceError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The leader and every live process of its group."""
        if not self.alive():
            return []
        return [self.pid, *(pid for pid in process_group(self.pid) if pid != self.pid)]

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the group, SIGKILL to the group after `timeout_s`; always reaps the leader."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def process_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat_fields(entry / "stat")
            if stat is not None and int(stat[2]) == pgid:  # field 5 of proc(5): pgrp
                found.append(int(entry.name))
    return found


def _stat_fields(path: Path) -> list[str] | None:
    """Fields of a /proc stat file after the command name (field 3 of proc(5) is index 0)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    stat = _stat_fields(Path(f"/proc/{pid}/stat"))
    if stat is None:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / TICKS  # utime, stime


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of `pid`, keyed `comm[tid]` (`main` for the main thread)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        stat = _stat_fields(task / "stat")
        if stat is not None:
            label = "main" if int(task.name) == pid else comm
            out[f"{label}[{task.name}]"] = (int(stat[11]) + int(stat[12])) / TICKS
    return out


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


class CpuMeter:
    """CPU used per role between `start()` and `stop()`, in percent of one core."""

    def __init__(self, roles: dict[str, Iterable[int]], threads_of: dict[str, int]) -> None:
        self._roles = {role: list(pids) for role, pids in roles.items()}
        self._threads_of = threads_of
        self._begin: dict[str, float] = {}
        self._threads: dict[str, dict[str, float]] = {}
        self._machine = (0, 0)
        self._children = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._machine = machine_jiffies()
        self._children = _children_cpu()
        self._begin = {role: sum(map(cpu_seconds, pids)) for role, pids in self._roles.items()}
        self._threads = {role: thread_cpu(pid) for role, pid in self._threads_of.items()}

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        busy0, total0 = self._machine
        busy1, total1 = machine_jiffies()
        cores = os.cpu_count() or 1
        machine = 100.0 * cores * (busy1 - busy0) / max(1, total1 - total0)
        roles = {
            role: 100.0 * (sum(map(cpu_seconds, pids)) - self._begin[role]) / wall
            for role, pids in self._roles.items()
        }
        roles["loadgen"] = 100.0 * (_children_cpu() - self._children) / wall
        roles["other"] = max(0.0, machine - sum(roles.values()))
        threads = {}
        for role, pid in self._threads_of.items():
            before, after = self._threads[role], thread_cpu(pid)
            used = {k: 100.0 * (v - before.get(k, 0.0)) / wall for k, v in after.items()}
            threads[role] = {
                k: round(v, 1) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.5
            }
        return {
            "wall_s": round(wall, 2),
            "machine_pct": round(machine, 1),
            "roles_pct": {k: round(v, 1) for k, v in roles.items()},
            "threads_pct": threads,
        }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def http_status(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> int:
    """The status of one request, 0 when it did not get an answer."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def wait_http(url: str, service: Service, *, timeout_s: float) -> None:
    """Wait until `url` answers 200, failing early if `service` dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.check()
        if http_status(url, timeout_s=2) == 200:
            return
        time.sleep(0.3)
    raise ServiceError(
        f"{service.name} did not answer 200 on {url} in {timeout_s:g} s:\n{service.tail()}"
    )
