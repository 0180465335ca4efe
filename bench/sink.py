"""The analytics sink: rows/s into chDB (and a ClickHouse server when one is configured), and the
end-to-end delay from an event's production to the moment a query sees it.

    python -m bench.sink [--events 200000] [--batch-rows 1000,5000,20000]
                         [--rate 50] [--delay-seconds 20] [--batch-seconds 1.0,0.2,0.05]
                         [--quick] [--no-docs] [--kafka-bootstrap HOST:PORT]

Throughput: N events of the mix one request journals (RequestReceived, three Spans,
InferenceResult, ResponseReady, CostEntry; built with the pydantic models, encoded with the serde
of `build_serde`) are produced once to fresh topics (prefix `bench<run-id>.`). Then, per
`analytics.batch_rows`, a `sluicegate sink` process on a fresh consumer group and a fresh chDB
path drains them; rows/s is N over the time from the group's first assignment to the moment
`count() FINAL` over the five tables reaches N (polled every 0.1 s).

Delay: per `analytics.batch_seconds`, a fresh sink on fresh topics; once it is caught up, one
event at a time at `--rate` per second for `--delay-seconds`. Each event's delay is from its
`occurred_at` (set just before it is produced) to the moment a query that returns it comes
back; the queries (every 25 ms, only events not seen yet) go through the sink's loopback query
endpoint for chDB, which holds the path, or straight to the server.

The sink runs as a process of its own (`sluicegate sink`), as in production: chDB allows one
engine per process and locks its path, so every cell needs a fresh process anyway.

With `SLUICEGATE_ANALYTICS__URL` set (a ClickHouse server; `__USERNAME`, `__PASSWORD` and
`__DATABASE` as for the sink) the same cells run against it, in a fresh database
`sgbench_<run-id>` dropped afterwards; otherwise that part is skipped and says so.

Numbers are printed, never asserted; unless `--no-docs`, the tables go into docs/benchmarks.md
(section `bench:analytics-sink`). Topics, consumer groups, databases and temp dirs of the run are
removed at the end, also on failure or Ctrl-C; logs and the JSON go to
`bench/results/<timestamp>-sink/`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupState, Producer
from confluent_kafka.admin import AdminClient

from bench import _report
from bench._procs import Service, ServiceError, cpu_seconds
from bench._targets import broker_pid, ensure_broker
from bench.serde import ASSISTANT, SYSTEM, USER
from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.schemas.models import (
    ChatMessage,
    CostEntry,
    Event,
    InferenceResult,
    RequestReceived,
    ResponseReady,
    SamplingParams,
    Span,
    TokenUsage,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import AnalyticsSettings, KafkaSettings, Settings, WorkerSettings

REPO_ROOT = _report.REPO_ROOT
TABLES = ("requests", "responses", "inference_results", "spans", "cost")
POLL_S = 0.025  # delay cells: how often the visibility query runs (--poll-ms)
COUNT_POLL_S = 0.1  # throughput cells: how often the row count is read

# -- events -----------------------------------------------------------------------------------

TENANTS = [f"tenant-{i}" for i in range(8)]
DEPLOYMENTS = ["gpt-4o-mini-east", "gpt-4o-mini-west", "claude-haiku", "llama-local"]
USERS = [f"customer-{i}" for i in range(500)]


def _envelope(request_id: str, tenant: str, trace: str, producer: str, parent: str | None) -> dict:
    return {
        "event_id": new_event_id(),
        "occurred_at": now(),
        "tenant_id": tenant,
        "request_id": request_id,
        "trace_id": trace,
        "span_id": new_span_id(),
        "parent_span_id": parent,
        "producer": producer,
    }


def request_events(rng: random.Random) -> list[tuple[str, str, Event]]:
    """(catalogue topic, key, event) for what one answered request journals, in that order."""
    tenant, deployment = rng.choice(TENANTS), rng.choice(DEPLOYMENTS)
    request_id, trace = str(uuid.uuid4()), new_trace_id()
    user, key_id = rng.choice(USERS), f"key-{rng.randrange(40)}"
    prompt, completion = rng.randrange(80, 3000), rng.randrange(5, 600)
    latency = rng.uniform(150, 4000)
    usage = TokenUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    answer = ChatMessage(role="assistant", content=ASSISTANT)

    request = RequestReceived(
        **_envelope(request_id, tenant, trace, "bridge", None),
        model="gpt-4o-mini",
        messages=[
            ChatMessage(role="system", content=SYSTEM),
            ChatMessage(role="user", content=USER),
        ],
        params=SamplingParams(temperature=0.2, max_tokens=512),
        user=user,
        api_key_id=key_id,
        metadata={"app": "support-bot", "feature": rng.choice(["chat", "summary", "triage"])},
        reply_to="bridge-1",
        deadline_ms=int(time.time() * 1000) + 120_000,
    )

    def span(name: str, parent: str, attributes: dict[str, str]) -> Span:
        start = now()
        return Span(
            **{**_envelope(request_id, tenant, trace, name, parent), "occurred_at": start},
            name=name,
            start_ms=start,
            end_ms=start + timedelta(milliseconds=latency if name == "inference" else 3),
            status="ok",
            attributes=attributes,
        )

    root = span("bridge.request", request.span_id, {"model": "gpt-4o-mini", "stream": "false"})
    admission = span("admission", root.span_id, {"decision": "admitted", "checks": "limits"})
    inference = span("inference", admission.span_id, {"deployment": deployment, "attempt": "1"})
    result = InferenceResult(
        **_envelope(request_id, tenant, trace, "inference", admission.span_id),
        deployment=deployment,
        provider_model="gpt-4o-mini-2024-07-18",
        message=answer,
        finish_reason="stop",
        usage=usage,
        latency_ms=latency,
        attempt=1,
    )
    response = ResponseReady(
        **_envelope(request_id, tenant, trace, "inference", admission.span_id),
        model="gpt-4o-mini",
        deployment=deployment,
        provider_model="gpt-4o-mini-2024-07-18",
        message=answer,
        finish_reason="stop",
        usage=usage,
        latency_ms=latency,
    )
    cost = CostEntry(
        **_envelope(request_id, tenant, trace, "inference", admission.span_id),
        model="gpt-4o-mini",
        deployment=deployment,
        api_key_id=key_id,
        prompt_tokens=prompt,
        completion_tokens=completion,
        usd=(prompt * 0.15 + completion * 0.60) / 1e6,
        pricing_version="2026-11",
        user=user,
        feature=request.metadata["feature"],
        estimated_tokens=prompt + 512,
    )
    return [
        ("requests", tenant, request),
        ("traces", trace, root),
        ("traces", trace, admission),
        ("traces", trace, inference),
        ("inference.results", deployment, result),
        ("responses", request_id, response),
        ("cost", tenant, cost),
    ]


def event_stream(seed: int) -> Iterator[tuple[str, str, Event]]:
    rng = random.Random(seed)
    while True:
        yield from request_events(rng)


MIX = "per request: RequestReceived, 3 Spans, InferenceResult, ResponseReady, CostEntry"

# -- settings, processes, cleanup ---------------------------------------------------------------


@dataclass
class Run:
    """What this run created, so that `cleanup` removes exactly that."""

    run_id: str
    base: Settings
    out_dir: Path
    tmp: Path
    prefixes: list[str] = field(default_factory=list)
    app_ids: list[str] = field(default_factory=list)
    databases: list[AnalyticsSettings] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)

    def settings(self, prefix: str, app_id: str, analytics: AnalyticsSettings) -> Settings:
        if prefix not in self.prefixes:
            self.prefixes.append(prefix)
        if app_id not in self.app_ids:
            self.app_ids.append(app_id)
        return self.base.model_copy(
            update={
                "kafka": self.base.kafka.model_copy(update={"topic_prefix": prefix}),
                "worker": WorkerSettings(
                    app_id=app_id,
                    data_dir=self.tmp / "worker",
                    metrics_port=None,
                    inference_metrics_port=None,
                ),
                "analytics": analytics,
            }
        )

    def cleanup(self) -> None:
        for service in self.services:
            with contextlib.suppress(Exception):
                service.stop()
        with contextlib.suppress(Exception):
            _delete_kafka_state(self.base.kafka, self.prefixes, self.app_ids)
        for analytics in self.databases:
            with contextlib.suppress(Exception):
                _drop_database(analytics)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _delete_kafka_state(kafka: KafkaSettings, prefixes: list[str], app_ids: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    owned = (*prefixes, *(f"{a}-" for a in app_ids))
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(owned)]
    for future in admin.delete_topics(names, operation_timeout=30).values() if names else []:
        with contextlib.suppress(Exception):
            future.result(30)
    groups = [f"{a}-analytics" for a in app_ids]
    for future in admin.delete_consumer_groups(groups).values() if groups else []:
        with contextlib.suppress(Exception):  # a group that never committed may not exist
            future.result(10)


def _server_client(analytics: AnalyticsSettings, database: str) -> Any:
    import clickhouse_connect

    password = analytics.password.get_secret_value() if analytics.password else ""
    return clickhouse_connect.get_client(
        dsn=analytics.url, username=analytics.username, password=password, database=database
    )


def _create_database(analytics: AnalyticsSettings) -> None:
    client = _server_client(analytics, "default")
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{analytics.database}`")
    finally:
        client.close()


def _drop_database(analytics: AnalyticsSettings) -> None:
    client = _server_client(analytics, "default")
    try:
        client.command(f"DROP DATABASE IF EXISTS `{analytics.database}` SYNC")
    finally:
        client.close()


def child_env(settings: Settings) -> dict[str, str]:
    """The parent's environment without its SLUICEGATE_* variables, plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    env.update(settings.to_env())
    password = settings.analytics.password
    if password is not None:  # to_env() writes a SecretStr masked
        env["SLUICEGATE_ANALYTICS__PASSWORD"] = password.get_secret_value()
    return env


class Store:
    """Queries against what the cell's sink writes: its endpoint (chDB) or the server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        if settings.analytics.url:
            self._client = _server_client(settings.analytics, settings.analytics.database)

    def rows(self, sql: str) -> list[Any]:
        if self._client is not None:
            return list(self._client.query(sql).result_rows)
        from sluicegate.serving.analytics_sink import query_running_sink

        answer = query_running_sink(self.settings, sql)
        if answer is None:
            raise ServiceError("the sink's query endpoint did not answer")
        return answer[1]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def start_sink(run: Run, settings: Settings, name: str) -> tuple[Service, Store, dict[str, float]]:
    """`sluicegate sink` for `settings`; returns once it answers queries and its group has
    partitions. The times are seconds since the spawn."""
    cli = [sys.executable, "-m", "sluicegate.cli", "sink"]
    service = Service(
        name, cli, run.out_dir / f"{name}.log", env=child_env(settings), cwd=REPO_ROOT
    )
    run.services.append(service)
    spawned = time.monotonic()
    service.start()
    store = Store(settings)
    times: dict[str, float] = {}
    deadline = spawned + 120
    while True:  # the store is open and migrated (chDB: the endpoint answers)
        service.check()
        with contextlib.suppress(Exception):
            if store.rows("SELECT count() FROM schema_migrations"):
                break
        if time.monotonic() > deadline:
            raise ServiceError(f"{name}: store not ready in 120 s:\n{service.tail()}")
        time.sleep(0.05)
    times["store_ready_s"] = time.monotonic() - spawned
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    group = f"{settings.worker.app_id}-analytics"
    while True:
        service.check()
        with contextlib.suppress(Exception):
            described = admin.describe_consumer_groups([group])[group].result(5)
            assigned = any(m.assignment.topic_partitions for m in described.members)
            if described.state == ConsumerGroupState.STABLE and assigned:
                break
        if time.monotonic() > deadline:
            raise ServiceError(f"{name}: group {group} not stable in 120 s:\n{service.tail()}")
        time.sleep(0.05)
    times["assigned_s"] = time.monotonic() - spawned
    return service, store, times


def stop_sink(run: Run, service: Service, store: Store) -> None:
    store.close()
    service.stop()
    run.services.remove(service)


def count_sql(final: bool) -> str:
    f = " FINAL" if final else ""
    return "SELECT " + " + ".join(f"(SELECT count() FROM {t}{f})" for t in TABLES)


# -- throughput -------------------------------------------------------------------------------


def produce_bulk(settings: Settings, serde: AvroSerde, n: int, seed: int) -> dict[str, Any]:
    """N events of the mix, as fast as one Python producer builds, encodes and sends them."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "partitioner": "murmur2_random",
        }
    )
    start = time.monotonic()
    wire_bytes = 0
    per_type: dict[str, int] = {}
    for topic, key, event in itertools.islice(event_stream(seed), n):
        value = serde.encode(event)
        wire_bytes += len(value)
        per_type[type(event).__name__] = per_type.get(type(event).__name__, 0) + 1
        while True:
            try:
                producer.produce(settings.topic(topic), key=key.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise ServiceError(f"{left} events not delivered")
    elapsed = time.monotonic() - start
    return {
        "events": n,
        "seconds": round(elapsed, 2),
        "events_per_s": round(n / elapsed),
        "mean_wire_bytes": round(wire_bytes / n),
        "partitions": settings.kafka.default_partitions,
        "per_type": per_type,
    }


def throughput_cell(
    run: Run, prefix: str, analytics: AnalyticsSettings, batch_rows: int, n: int, label: str
) -> dict[str, Any]:
    app_id = f"sgbench-sink-{run.run_id}-{label}-t{batch_rows}"
    settings = run.settings(prefix, app_id, analytics)
    service, store, times = start_sink(run, settings, f"sink-{label}-t{batch_rows}")
    try:
        sink_pid, kafka_pids = service.pid, broker_pid()
        cpu0 = cpu_seconds(sink_pid)
        kafka0 = sum(map(cpu_seconds, kafka_pids))
        t0 = time.monotonic()
        deadline = t0 + 300
        curve: list[tuple[float, int]] = []
        while True:
            service.check()
            (raw,) = store.rows(count_sql(final=False))[0]
            curve.append((round(time.monotonic() - t0, 2), int(raw)))
            if raw >= n:
                (final,) = store.rows(count_sql(final=True))[0]
                if final >= n:
                    break
            if time.monotonic() > deadline:
                raise ServiceError(f"only {raw} of {n} rows after 300 s:\n{service.tail()}")
            time.sleep(COUNT_POLL_S)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(sink_pid) - cpu0
        kafka_cpu = sum(map(cpu_seconds, kafka_pids)) - kafka0
        first = next((t for t, c in curve if c > 0), None)
        parts = store.rows(
            "SELECT count(), sum(bytes_on_disk) FROM system.parts WHERE active AND database = "
            "currentDatabase() AND table IN (" + ", ".join(f"'{t}'" for t in TABLES) + ")"
        )[0]
        return {
            "target": label,
            "batch_rows": batch_rows,
            "batch_seconds": analytics.batch_seconds,
            "rows": n,
            "raw_rows": int(raw),
            "final_rows": int(final),
            "seconds": round(elapsed, 2),
            "rows_per_s": round(n / elapsed),
            "first_rows_after_s": first,
            "sink_cpu_pct": round(100 * cpu / elapsed, 1),
            "sink_cpu_us_per_row": round(1e6 * cpu / n, 1),
            "kafka_cpu_pct": round(100 * kafka_cpu / elapsed, 1),
            "active_parts": int(parts[0]),
            "bytes_per_row": round(int(parts[1] or 0) / n, 1),
            **{k: round(v, 2) for k, v in times.items()},
        }
    finally:
        stop_sink(run, service, store)


# -- delay ------------------------------------------------------------------------------------


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def delay_cell(
    run: Run,
    analytics: AnalyticsSettings,
    serde_for: Callable[[Settings], AvroSerde],
    *,
    rate: float,
    seconds: float,
    label: str,
) -> dict[str, Any]:
    tag = f"{label}-d{round(analytics.batch_seconds * 1000)}"
    prefix = f"bench{run.run_id}{tag.replace('-', '')}."
    settings = run.settings(prefix, f"sgbench-sink-{run.run_id}-{tag}", analytics)
    from sluicegate.streams.topics import ensure_topics

    ensure_topics(settings)
    serde = serde_for(settings)
    service, store, _times = start_sink(run, settings, f"sink-{tag}")
    producer = Producer(
        {  # the bridge's journal producer (serving/kafka_io.py)
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "socket.nagle.disable": True,
            "partitioner": "murmur2_random",
        }
    )
    produced: dict[str, int] = {}  # event_id → occurred_at, epoch ms
    seen: dict[str, float] = {}  # event_id → epoch s when a query returned it
    lock = threading.Lock()
    done = threading.Event()
    round_trips: list[float] = []
    errors: list[BaseException] = []

    def poll() -> None:
        union = " UNION ALL ".join(
            f"SELECT event_id FROM {t} WHERE occurred_at >= fromUnixTimestamp64Milli({{since}})"
            for t in TABLES
        )
        try:
            while not done.is_set():
                with lock:
                    pending = [ms for eid, ms in produced.items() if eid not in seen]
                if pending:
                    sent = time.monotonic()
                    rows = store.rows(union.format(since=min(pending)))
                    answered = time.time()
                    round_trips.append(time.monotonic() - sent)
                    with lock:
                        for (event_id,) in rows:
                            if event_id in produced and event_id not in seen:
                                seen[event_id] = answered
                time.sleep(POLL_S)
        except BaseException as exc:
            errors.append(exc)

    poller = threading.Thread(target=poll, name="visibility-poll", daemon=True)
    try:
        # Caught up: a first event is queryable before the measured ones start.
        warm = next(event_stream(seed=7))
        producer.produce(settings.topic(warm[0]), key=warm[1].encode(), value=serde.encode(warm[2]))
        producer.flush(10)
        deadline = time.monotonic() + 60
        while store.rows(count_sql(final=True))[0][0] < 1:
            service.check()
            if time.monotonic() > deadline:
                raise ServiceError(f"warm-up event not visible in 60 s:\n{service.tail()}")
            time.sleep(0.1)
        time.sleep(2 * analytics.batch_seconds)  # an idle sink: no batch open
        cpu0 = cpu_seconds(service.pid)
        poller.start()
        stream = event_stream(seed=11)
        start = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            topic, key, event = next(stream)
            event = event.model_copy(update={"occurred_at": now()})
            value = serde.encode(event)
            with lock:
                produced[event.event_id] = _ms(event.occurred_at)
            producer.produce(settings.topic(topic), key=key.encode(), value=value)
            producer.poll(0)
        producer.flush(10)
        sent_s = time.monotonic() - start
        deadline = time.monotonic() + 30
        while len(seen) < total and time.monotonic() < deadline and not errors:
            service.check()
            time.sleep(0.1)
        measured_s = time.monotonic() - start
        cpu = cpu_seconds(service.pid) - cpu0
        done.set()
        poller.join(10)
        if errors:
            raise ServiceError(f"visibility poll failed: {errors[0]!r}")
        with lock:
            delays = sorted(1000 * seen[e] - ms for e, ms in produced.items() if e in seen)
        return {
            "target": label,
            "batch_seconds": analytics.batch_seconds,
            "batch_rows": analytics.batch_rows,
            "rate": rate,
            "sent": total,
            "send_seconds": round(sent_s, 2),
            "seen": len(delays),
            "p50_ms": round(_pct(delays, 50), 1),
            "p95_ms": round(_pct(delays, 95), 1),
            "p99_ms": round(_pct(delays, 99), 1),
            "max_ms": round(delays[-1], 1) if delays else None,
            "min_ms": round(delays[0], 1) if delays else None,
            "poll_rtt_ms_median": round(1000 * statistics.median(round_trips), 1),
            "polls": len(round_trips),
            "sink_cpu_pct": round(100 * cpu / measured_s, 1),
        }
    finally:
        done.set()
        producer.flush(5)
        stop_sink(run, service, store)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


# -- the run ----------------------------------------------------------------------------------


def targets(run: Run) -> tuple[list[tuple[str, AnalyticsSettings]], str | None]:
    """chDB always; the server when SLUICEGATE_ANALYTICS__URL names one (else why not)."""
    found: list[tuple[str, AnalyticsSettings]] = [("chdb", AnalyticsSettings())]
    configured = run.base.analytics
    if not configured.url:
        return found, "no server configured (`SLUICEGATE_ANALYTICS__URL` is not set)"
    try:
        client = _server_client(configured, "default")
        try:
            client.command("SELECT 1")
        finally:
            client.close()
    except Exception as exc:  # the server does not answer: say so, keep the chDB numbers
        return found, f"the ClickHouse server at {configured.url} did not answer: {exc}"
    return [*found, ("server", configured)], None


def cell_analytics(
    run: Run, base: AnalyticsSettings, label: str, **update: Any
) -> AnalyticsSettings:
    """A fresh store per cell: a new chDB path, or a new database on the server."""
    if base.url:
        name = re.sub(r"[^0-9A-Za-z]", "_", f"sgbench_{run.run_id}_{label}")
        fresh = base.model_copy(update={**update, "database": name})
        run.databases.append(fresh)
        _create_database(fresh)
        return fresh
    path = run.tmp / f"chdb-{label}-{secrets.token_hex(3)}"
    return AnalyticsSettings(dsn=f"chdb://{path}", **update)


def run_all(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.streams.topics import ensure_topics

    found, skipped = targets(run)
    versions = _report.versions(
        {
            "chdb": _report.package_version("chdb"),
            "chdb-core": _report.package_version("chdb-core"),
            "clickhouse-connect": _report.package_version("clickhouse-connect"),
        }
    )
    versions.pop("go (load generator)", None)  # no load generator here
    report: dict[str, Any] = {
        "run_id": run.run_id,
        "machine": _report.machine(),
        "versions": versions,
        "mix": MIX,
        "server_skipped": skipped,
        "server_url": run.base.analytics.url if not skipped else None,
        "throughput": [],
        "delay": [],
    }
    if skipped:
        print(f"server: skipped: {skipped}", flush=True)

    prefix = f"bench{run.run_id}."
    bulk = run.settings(prefix, f"sgbench-sink-{run.run_id}-producer", found[0][1])
    ensure_topics(bulk)
    serde = build_serde(bulk)
    print(f"producing {args.events:,} events to {prefix}* ...", flush=True)
    report["produce"] = produce_bulk(bulk, serde, args.events, seed=1)
    p = report["produce"]
    print(
        f"  {p['events_per_s']:,} events/s from one Python producer (build + encode + send), "
        f"{p['mean_wire_bytes']} bytes/event on average",
        flush=True,
    )
    for label, base in found:
        for batch_rows in args.batch_rows:
            analytics = cell_analytics(run, base, f"t{batch_rows}", batch_rows=batch_rows)
            cell = throughput_cell(run, prefix, analytics, batch_rows, args.events, label)
            report["throughput"].append(cell)
            print(
                f"  {label} batch_rows={batch_rows}: {cell['rows_per_s']:,} rows/s "
                f"({cell['seconds']} s; sink CPU {cell['sink_cpu_pct']}%, "
                f"{cell['sink_cpu_us_per_row']} µs/row; store ready {cell['store_ready_s']} s, "
                f"group assigned {cell['assigned_s']} s after the spawn)",
                flush=True,
            )
    for label, base in found:
        for batch_seconds in args.batch_seconds:
            analytics = cell_analytics(run, base, f"d{batch_seconds}", batch_seconds=batch_seconds)
            cell = delay_cell(
                run,
                analytics,
                build_serde,
                rate=args.rate,
                seconds=args.delay_seconds,
                label=label,
            )
            report["delay"].append(cell)
            print(
                f"  {label} batch_seconds={batch_seconds}: p50 {cell['p50_ms']} ms, p95 "
                f"{cell['p95_ms']} ms, max {cell['max_ms']} ms ({cell['seen']}/{cell['sent']} "
                f"seen; poll round trip {cell['poll_rtt_ms_median']} ms)",
                flush=True,
            )
    return report


def tables(report: dict[str, Any]) -> tuple[str, str]:
    rows = [
        [
            c["target"],
            f"{c['batch_rows']:,}",
            f"{c['rows']:,}",
            f"{c['seconds']:.1f}",
            f"{c['rows_per_s']:,}",
            f"{c['sink_cpu_pct']:.0f}",
            f"{c['sink_cpu_us_per_row']:.0f}",
            f"{c['kafka_cpu_pct']:.0f}",
            f"{c['store_ready_s']:.1f} / {c['assigned_s']:.1f}",
        ]
        for c in report["throughput"]
    ]
    throughput = _report.table(
        [
            "store",
            "batch_rows",
            "rows",
            "drain s",
            "rows/s",
            "sink CPU %",
            "sink CPU µs/row",
            "broker CPU %",
            "start: store / group s",
        ],
        rows,
        align="lrrrrrrrr",
    )
    rows = [
        [
            c["target"],
            f"{c['batch_seconds']:g}",
            f"{c['rate']:g}/s x {c['send_seconds']:.0f} s",
            f"{c['seen']}/{c['sent']}",
            f"{c['p50_ms']:,.0f}",
            f"{c['p95_ms']:,.0f}",
            f"{c['p99_ms']:,.0f}",
            f"{c['max_ms']:,.0f}",
            f"{c['min_ms']:,.0f}",
            f"{c['poll_rtt_ms_median']:.1f}",
            f"{c['sink_cpu_pct']:.0f}",
        ]
        for c in report["delay"]
    ]
    delay = _report.table(
        [
            "store",
            "batch_seconds",
            "events",
            "seen",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "min ms",
            "poll RTT ms",
            "sink CPU %",
        ],
        rows,
        align="lrlrrrrrrrr",
    )
    return throughput, delay


def write_docs(report: dict[str, Any], throughput: str, delay: str, minutes: float) -> None:
    p = report["produce"]
    server = (
        f"A ClickHouse server ({report['server_url']}) ran the same cells."
        if report["server_url"]
        else f"ClickHouse server: skipped, {report['server_skipped']}; only chDB ran."
    )
    whole = (
        "; N is a multiple of every batch_rows, so no batch waits for `batch_seconds`"
        if all(c["rows"] % c["batch_rows"] == 0 for c in report["throughput"])
        else ""
    )
    body = "\n\n".join(
        [
            f"## Analytics sink ({time.strftime('%Y-%m-%d')})",
            f"`python -m bench.sink` took {minutes:.1f} minutes. The sink runs as "
            "`sluicegate sink` (its own process; chDB in-process at a fresh path per cell, "
            "clickhouse-connect's `chdb://` client). "
            f"**Throughput:** {p['events']:,} events of the mix one answered request journals "
            f"({MIX.removeprefix('per request: ')}; {p['mean_wire_bytes']} bytes/event on average "
            "in the wire format, 8 tenants, 4 deployments), produced once beforehand to fresh "
            f"topics ({p['partitions']} partitions each; one Python producer built, encoded "
            f"and sent {p['events_per_s']:,} events/s), then drained by a fresh sink (fresh "
            "consumer group, fresh chDB path) per `analytics.batch_rows` (`batch_seconds` 1.0"
            f"{whole}). rows/s is "
            "N over the time from the group's first assignment to `count() FINAL` over the five "
            "tables reaching N (polled every 0.1 s through the sink's query endpoint for chDB). "
            "CPU is % "
            "of one core over the drain. `start` is when, after the spawn, the store was "
            "migrated and answering and when the group had its partitions.",
            throughput,
            "**Delay:** a fresh sink on fresh topics per `analytics.batch_seconds` (`batch_rows` "
            "5000), caught up and idle; then one event at a time, cycling through the same mix, "
            "produced with the bridge's journal producer settings (acks=all, linger 1 ms). Delay "
            "= from the event's `occurred_at` (set just before it is encoded and produced) to "
            "the moment a query that returns it comes back; the query (only events not seen yet) "
            f"runs every {POLL_S * 1000:.0f} ms through the sink's loopback query endpoint (chDB; "
            "straight to a server), so a "
            "figure is late by up to one poll period plus one round trip (`poll RTT`, median).",
            delay,
            server,
            _report.describe(report["machine"], report["versions"]),
        ]
    )
    _report.replace_section("analytics-sink", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per throughput cell")
    parser.add_argument("--batch-rows", default="1000,5000,20000")
    parser.add_argument("--batch-seconds", default="1.0,0.2,0.05")
    parser.add_argument("--rate", type=float, default=50.0, help="delay cells: events per s")
    parser.add_argument("--delay-seconds", type=float, default=20.0)
    parser.add_argument("--poll-ms", type=float, default=25.0, help="delay cells: query period")
    parser.add_argument("--quick", action="store_true", help="20k events, 5 s delay cells")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--kafka-bootstrap", default=None)
    args = parser.parse_args()
    args.batch_rows = [int(v) for v in args.batch_rows.split(",") if v]
    args.batch_seconds = [float(v) for v in args.batch_seconds.split(",") if v]
    global POLL_S
    POLL_S = args.poll_ms / 1000
    if args.quick:
        args.events, args.delay_seconds = 20_000, 5.0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup runs on the way out
    base = Settings()
    if args.kafka_bootstrap:
        kafka = base.kafka.model_copy(update={"bootstrap_servers": args.kafka_bootstrap})
        base = base.model_copy(update={"kafka": kafka})
    ensure_broker(base.kafka.bootstrap_servers)
    run_id = f"{datetime.now(UTC):%H%M%S}{secrets.token_hex(2)}"
    out_dir = _report.RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-sink"
    out_dir.mkdir(parents=True, exist_ok=True)
    run = Run(run_id, base, out_dir, Path(tempfile.mkdtemp(prefix=f"sgbench-sink-{run_id}-")))
    started = time.monotonic()
    try:
        report = run_all(args, run)
    finally:
        run.cleanup()
    minutes = (time.monotonic() - started) / 60
    (out_dir / "sink.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    throughput, delay = tables(report)
    print(f"\nThroughput ({MIX}):\n{throughput}\n\nEvent → queryable delay:\n{delay}")
    if report["server_skipped"]:
        print(f"\nserver: skipped: {report['server_skipped']}")
    print(f"\nraw results: {out_dir.relative_to(REPO_ROOT)}/sink.json ({minutes:.1f} min)")
    if not args.no_docs:
        write_docs(report, throughput, delay, minutes)


if __name__ == "__main__":
    main()
