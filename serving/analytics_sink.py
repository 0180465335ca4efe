"""The analytics sink: Kafka events → analytics tables, at-least-once, idempotent for readers.

A librdkafka consumer (group `<app_id>-analytics`, no auto-commit) reads the event topics and
every `.dlq`, decodes each record with the serde, maps it to a row (`processors/analytics_rows`),
and buffers rows per table. A batch is flushed when it reaches `analytics.batch_rows` rows or
`analytics.batch_seconds` after its first record; offsets are committed synchronously only after
every table of the batch is inserted. An insert that fails is retried with backoff, without
committing and without reading on, so nothing is lost; a crash re-delivers the uncommitted batch
and the ReplacingMergeTree tables (ORDER BY …, event_id) keep one row per event for readers that
use FINAL or count uniqExact(event_id).

A record that does not decode is logged and counted, and its offset is committed with the
batch: it stays on its topic, and never blocks the partition.

chDB locks its path for the one process that opens it, so this process also serves read-only
queries for `sluicegate sql` on 127.0.0.1 (`QueryEndpoint`); the address and a token are written
beside the chDB path, readable by the owner only.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from sluicegate.connectors.analytics import AnalyticsSink, ClickHouseAnalytics, open_analytics
from sluicegate.errors import AnalyticsError
from sluicegate.processors.analytics_rows import Row, rows_for, sink_spans
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from sluicegate.streams.topics import catalogue

log = logging.getLogger(__name__)

SOURCE_TOPICS = (
    "requests",
    "responses",
    "inference.results",
    "traces",
    "cost",
    "health",
    "alerts",
    "evals",
    "audit",
    "drift",
)


def sink_topics(settings: Settings) -> list[str]:
    """The event topics the sink stores, and every dead-letter topic of the catalogue."""
    names = [settings.topic(name) for name in SOURCE_TOPICS]
    names += [spec.name for spec in catalogue(settings) if spec.name.endswith(".dlq")]
    return names


@dataclass
class SinkStats:
    records: int = 0
    rows: int = 0
    undecodable: int = 0
    batches: int = 0
    insert_failures: int = 0


@dataclass
class Batch:
    rows: dict[str, list[Row]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    size: int = 0
    started: float | None = None
    inserted: set[str] = field(default_factory=set)
    traced: bool = False  # the answers' `sink` spans are added (once: an insert may be retried)

    def add(self, message: Message, row: tuple[str, Row] | None, *, polled_at: float) -> None:
        if self.started is None:
            # The window opens when the first record arrived — not when the poll that returned
            # it ended (a poll can block up to its timeout at low rates), and never before the
            # poll began (an old record of a backlog must not make every batch due at once).
            kind, stamp_ms = message.timestamp()
            arrived = stamp_ms / 1000 if kind != TIMESTAMP_NOT_AVAILABLE else polled_at
            self.started = min(time.time(), max(polled_at, arrived))
        self.offsets[(message.topic(), message.partition())] = message.offset() + 1
        if row is not None:
            table, values = row
            self.rows.setdefault(table, []).append(values)
            self.size += 1


class AnalyticsSinkWorker:
    def __init__(
        self,
        *,
        settings: Settings,
        serde: AvroSerde,
        store: AnalyticsSink,
        stop: threading.Event | None = None,
    ) -> None:
        self._settings = settings.analytics
        self._serde = serde
        self._store = store
        self._topics = sink_topics(settings)
        self._batch = Batch()
        self._polled_at = time.time()
        self._stop = stop or threading.Event()
        self.stats = SinkStats()
        self._consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": f"{settings.worker.app_id}-analytics",
                "client.id": f"analytics-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                # A killed sink's partitions move after 6 s (the broker's minimum), not 45 s.
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1500,
            }
        )

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Consume until `stop()`; the last batch is flushed on the way out."""
        self._consumer.subscribe(self._topics, on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                self._polled_at = time.time()
                for message in self._consumer.consume(
                    num_messages=max(1, min(1000, self._settings.batch_rows - self._batch.size)),
                    timeout=self._poll_timeout(),
                ):
                    self._take(message)
                if self._due():
                    self._flush()
            self._flush()
        finally:
            self._consumer.close()

    def _poll_timeout(self) -> float:
        if self._batch.started is None:
            return 0.2
        left = self._batch.started + self._settings.batch_seconds - time.time()
        return min(0.2, max(0.0, left))

    def _due(self) -> bool:
        if self._batch.started is None:
            return False
        full = self._batch.size >= self._settings.batch_rows
        return full or time.time() - self._batch.started >= self._settings.batch_seconds

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("analytics consumer: %s", error)
            return
        self.stats.records += 1
        try:
            row = rows_for(self._serde.decode(message.value() or b""))
        except Exception as exc:  # one bad record must never stop or block the sink
            self.stats.undecodable += 1
            log.warning(
                "analytics: skipping undecodable %s[%s]@%s: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc,
            )
            row = None
        self._batch.add(message, row, polled_at=self._polled_at)

    def _flush(self) -> None:
        """Insert every table of the batch, retrying with backoff; then commit its offsets."""
        batch = self._batch
        if not batch.offsets:
            return
        if not batch.traced and batch.rows.get("responses"):
            spans = sink_spans(batch.rows["responses"], datetime.now(UTC))
            batch.rows.setdefault("spans", []).extend(spans)
            batch.traced = True
        for table, rows in batch.rows.items():
            if table in batch.inserted:
                continue
            if not self._insert_until_done(table, rows):
                return  # stopped while retrying: the offsets stay uncommitted
            batch.inserted.add(table)
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. partitions revoked: the new owner re-inserts
            log.warning("analytics: commit failed (batch will be re-delivered): %s", exc)
        self.stats.rows += batch.size
        self.stats.batches += 1
        self._batch = Batch()

    def _insert_until_done(self, table: str, rows: list[Row]) -> bool:
        """True once inserted; False if stopped before an attempt succeeded."""
        delay = 0.1
        while True:
            try:
                self._store.insert(table, rows)
                return True
            except AnalyticsError as exc:
                self.stats.insert_failures += 1
                log.warning(
                    "analytics: insert of %d rows into %s failed (retriable=%s), retrying in "
                    "%.1fs: %s",
                    len(rows),
                    table,
                    exc.retriable,
                    delay,
                    exc,
                )
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, self._settings.retry_max_s)

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Flush before the partitions move, so the new owner starts after what we stored.
        self._flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def endpoint_file(settings: Settings) -> Path:
    """Where a running sink announces its query endpoint: beside the chDB path."""
    path = settings.analytics.chdb_path
    return path.with_name(path.name + ".query.json")


class QueryEndpoint:
    """Read-only SQL over HTTP on loopback, for `sluicegate sql` while this process holds chDB."""

    def __init__(self, *, store: AnalyticsSink, announce: Path) -> None:
        token = secrets.token_urlsafe(24)
        store_ = store

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self._reply(401, {"error": "bad token"})
                    return
                sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                try:
                    result = store_.query(sql, readonly=True)
                except AnalyticsError as exc:
                    self._reply(400, {"error": str(exc)})
                    return
                self._reply(200, {"columns": result.columns, "rows": result.rows})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, default=_jsonable).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("query endpoint: " + format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="analytics-query", daemon=True
        )
        self._announce = announce
        host, port = self._server.server_address[:2]
        announce.parent.mkdir(parents=True, exist_ok=True)
        tmp = announce.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        tmp.touch(mode=0o600)  # the token is readable by the owner only
        tmp.write_text(json.dumps({"url": f"http://{host}:{port}/query", "token": token}))
        tmp.replace(announce)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._announce.unlink(missing_ok=True)


def query_running_sink(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]] | None:
    """Ask the running sink's endpoint; None when no sink announces one or it does not answer."""
    import httpx

    announce = endpoint_file(settings)
    try:
        info = json.loads(announce.read_text())
    except (OSError, ValueError):
        return None
    try:
        response = httpx.post(
            info["url"],
            content=sql.encode(),
            headers={"Authorization": f"Bearer {info['token']}"},
            timeout=60,
        )
    except httpx.TransportError:
        return None  # a stale announcement (the sink was killed)
    body = response.json()
    if response.status_code != 200:
        raise AnalyticsError(body.get("error", response.text), retriable=False)
    return body["columns"], body["rows"]


def open_when_free(settings: Settings, stop: threading.Event) -> ClickHouseAnalytics | None:
    """Open and migrate the store, retrying while it is unreachable or its chDB path is held by
    another process (a `sluicegate sql` that opened it directly); None if stopped first."""
    delay = 0.5
    while True:
        try:
            return open_analytics(settings.analytics)
        except AnalyticsError as exc:
            if not exc.retriable:
                raise
            log.warning("analytics store not available, retrying in %.1fs: %s", delay, exc)
        if stop.wait(delay):
            return None
        delay = min(delay * 2, settings.analytics.retry_max_s)


def run_sink(settings: Settings) -> None:
    """The `sluicegate sink` process; blocks until SIGINT/SIGTERM."""
    import signal

    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.streams.topics import ensure_topics

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ensure_topics(settings)
    serde = build_serde(settings)
    store = open_when_free(settings, stop)
    if store is None:
        return
    endpoint = None
    if not settings.analytics.url:
        endpoint = QueryEndpoint(store=store, announce=endpoint_file(settings))
        endpoint.start()
    worker = AnalyticsSinkWorker(settings=settings, serde=serde, store=store, stop=stop)
    log.info("analytics sink: %s → %s", ", ".join(sink_topics(settings)), store.target)
    try:
        worker.run()
    finally:
        if endpoint is not None:
            endpoint.close()
        store.close()
        log.info("analytics sink stopped: %s", worker.stats)
