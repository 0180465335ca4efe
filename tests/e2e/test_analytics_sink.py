"""The analytics sink as a real process: requests through the bridge become queryable rows in
chDB; kill -9 and restart lose nothing; a full redelivery double-counts nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from confluent_kafka.admin import AdminClient

from sluicegate.serving.analytics_sink import endpoint_file, query_running_sink
from sluicegate.settings import AnalyticsSettings, Settings
from tests.conftest import CALLER_TOKEN, REPO_ROOT, _spawn, _stop, _wait_for_group, settings_env
from tests.topics_io import produce

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


class Sink:
    """`sluicegate sink` as a child process, restartable."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.logs / f"sink-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.process = _spawn("sink", self.settings, self.log)
        _wait_for_group(
            f"{self.settings.worker.app_id}-analytics", self.settings, self.process, self.log
        )
        deadline = time.monotonic() + 30
        while query_running_sink(self.settings, "SELECT 1") is None:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "query endpoint never answered"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _stop(self.process)
        assert self.process is None or self.process.returncode in (0, -signal.SIGKILL), (
            self.log.read_text()[-3000:]
        )


@pytest.fixture(scope="module")
def sink_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("analytics") / "chdb"
    return settings.model_copy(update={"analytics": AnalyticsSettings(dsn=f"chdb://{path}")})


@pytest.fixture(scope="module")
def sink(
    sink_settings: Settings, topics: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sink]:
    running = Sink(sink_settings, tmp_path_factory.mktemp("sink-logs"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(bridge_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bridge_url}/v1", api_key=CALLER_TOKEN, max_retries=0)


def ask(client: openai.OpenAI, n: int, tag: str) -> dict[str, float]:
    """n completions; request_id → the moment the answer came back."""
    answered = {}
    for i in range(n):
        completion = client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": f"{tag} {i}"}]
        )
        answered[completion.id.removeprefix("chatcmpl-")] = time.monotonic()
    return answered


def sql(settings: Settings, query: str) -> list[list]:
    answer = query_running_sink(settings, query)
    assert answer is not None, "the sink's query endpoint did not answer"
    return answer[1]


def counts(settings: Settings, ids: list[str], final: bool = True) -> dict[str, int]:
    wanted = ", ".join(f"'{i}'" for i in ids)
    f = "FINAL" if final else ""
    return {
        table: sql(settings, f"SELECT count() FROM {table} {f} WHERE request_id IN ({wanted})")[0][
            0
        ]
        for table in ("requests", "responses")
    }


def wait_visible(settings: Settings, answered: dict[str, float], timeout_s: float = 30) -> float:
    """Until every request and its response are queryable; the worst answer→queryable delay."""
    pending = dict(answered)
    worst = 0.0
    deadline = time.monotonic() + timeout_s
    while pending:
        assert time.monotonic() < deadline, f"not queryable after {timeout_s}s: {sorted(pending)}"
        wanted = ", ".join(f"'{i}'" for i in pending)
        seen = sql(
            settings,
            "SELECT q.request_id FROM requests AS q FINAL "
            f"INNER JOIN responses AS r FINAL ON q.request_id = r.request_id "
            f"WHERE q.request_id IN ({wanted})",
        )
        now = time.monotonic()
        for (request_id,) in seen:
            worst = max(worst, now - pending.pop(request_id))
        time.sleep(0.05)
    return worst


def cli_sql(settings: Settings, query: str) -> list[list[str]]:
    env = {**os.environ, **settings_env(settings)}
    out = subprocess.run(
        [sys.executable, "-m", "sluicegate.cli", "sql", query],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_requests_become_queryable_with_their_responses(
    sink: Sink, client: openai.OpenAI, sink_settings: Settings
) -> None:
    # A record that is not Avro must be skipped, not crash the sink or block its partition.
    produce(sink_settings, sink_settings.topic("cost"), b"junk", b"not an avro record")
    answered = ask(client, 4, "analytics")
    delay = wait_visible(sink_settings, answered)
    print(f"\nworst answer→queryable delay: {delay * 1000:.0f} ms")
    ids = list(answered)
    assert counts(sink_settings, ids) == {"requests": 4, "responses": 4}
    rows = cli_sql(
        sink_settings,
        "SELECT q.request_id, r.status, r.deployment, r.latency_ms, "
        "dateDiff('millisecond', q.occurred_at, r.occurred_at) AS end_to_end_ms "
        "FROM requests AS q FINAL INNER JOIN responses AS r FINAL USING request_id "
        f"WHERE q.request_id IN ({', '.join(repr(i) for i in ids)}) ORDER BY q.request_id",
    )
    assert rows[0] == ["request_id", "status", "deployment", "latency_ms", "end_to_end_ms"]
    assert [r[0] for r in rows[1:]] == sorted(ids)
    for _, status, deployment, latency_ms, end_to_end_ms in rows[1:]:
        assert (status, deployment) == ("ok", "fake")
        assert 0 < float(latency_ms) < 10_000
        assert 0 <= int(end_to_end_ms) < 10_000 and float(latency_ms) <= int(end_to_end_ms) + 1
    assert sink.process is not None and sink.process.poll() is None

    # Cost: one CostEntry per answer, priced from the catalogue (0.15 / 0.60 USD per 1M tokens).
    wanted = ", ".join(repr(i) for i in ids)
    deadline = time.monotonic() + 30
    while True:
        ((priced, usd, expected),) = sql(
            sink_settings,
            "SELECT count(), sum(usd), sum(prompt_tokens * 0.15 + completion_tokens * 0.60) / 1e6 "
            f"FROM cost FINAL WHERE request_id IN ({wanted})",
        )
        if priced == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert priced == 4 and usd == pytest.approx(expected) and usd > 0

    # Trace: bridge (root) → admission → inference, each nested under the stage that caused it.
    deadline = time.monotonic() + 30
    while True:
        trace = subprocess.run(
            [sys.executable, "-m", "sluicegate.cli", "trace", f"chatcmpl-{ids[0]}"],
            env={**os.environ, **settings_env(sink_settings)},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = trace.stdout.splitlines()
        if len(lines) == 6 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert trace.returncode == 0, trace.stderr
    # The input guard (injection flagging is on by default) is a step of admission; the sink
    # span, under the answer's, runs until the answer was handed to the store.
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["bridge", "admission", "guard", "inference", "sink"]
    assert lines[2].startswith("  admission") and lines[3].startswith("    guard")
    assert lines[4].startswith("    inference") and "deployment=fake" in lines[4]
    assert lines[5].startswith("      sink")


def test_chdb_is_locked_while_the_sink_runs(sink: Sink, sink_settings: Settings) -> None:
    """Why `sql` goes through the sink: a second process cannot open the chDB path."""
    dsn = sink_settings.analytics.dsn
    probe = (
        "from sluicegate.connectors.analytics import ClickHouseAnalytics\n"
        "from sluicegate.settings import AnalyticsSettings\n"
        "from sluicegate.errors import AnalyticsError\n"
        f"try:\n    ClickHouseAnalytics(settings=AnalyticsSettings(dsn={dsn!r}))\n"
        "except AnalyticsError as e:\n    print('locked' if 'locked by another' in str(e) else e)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "locked", out.stdout + out.stderr


def test_kill_9_and_redelivery_neither_lose_nor_double_count(
    sink: Sink, client: openai.OpenAI, sink_settings: Settings
) -> None:
    first = ask(client, 3, "before the kill")
    sink.kill()  # maybe mid-batch: what it had not committed is read again
    second = ask(client, 3, "while the sink is down")
    sink.start()
    wait_visible(sink_settings, {**first, **second})
    ids = [*first, *second]
    assert counts(sink_settings, ids) == {"requests": 6, "responses": 6}

    # Force a full redelivery: stop cleanly, forget the group's offsets, start again.
    sink.stop()
    group = f"{sink_settings.worker.app_id}-analytics"
    admin = AdminClient({"bootstrap.servers": sink_settings.kafka.bootstrap_servers})
    admin.delete_consumer_groups([group])[group].result(10)
    sink.start()
    marker = ask(client, 1, "after the redelivery")  # read after everything that came before
    wait_visible(sink_settings, marker)
    raw = counts(sink_settings, ids, final=False)
    assert raw["requests"] >= 12, "the redelivery did not happen"
    assert counts(sink_settings, ids) == {"requests": 6, "responses": 6}
    # Exact in the shipped views too: every request of the day counted once.
    where = "model = 'gpt-fake' AND tenant_id = 'default' AND toDate(occurred_at) = today()"
    view = sql(
        sink_settings,
        "SELECT requests FROM v_requests_per_tenant_model_day "
        "WHERE model = 'gpt-fake' AND tenant_id = 'default' AND day = today()",
    )
    events = sql(sink_settings, f"SELECT uniqExact(event_id), count() FROM requests WHERE {where}")
    assert view == [[events[0][0]]] and events[0][1] > events[0][0]
    assert endpoint_file(sink_settings).exists()


def test_sql_opens_the_store_directly_when_no_sink_runs(
    sink: Sink, sink_settings: Settings
) -> None:
    sink.stop()
    assert not endpoint_file(sink_settings).exists()
    rows = cli_sql(sink_settings, "SELECT count() > 0 AS any FROM requests FINAL")
    assert rows == [["any"], ["true"]] or rows == [["any"], ["1"]], rows
    sink.start()  # leave it as the fixture expects
