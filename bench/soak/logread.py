"""Read the soak's topics from the beginning (a fresh consumer, explicit assignment, no group
offsets committed) up to the high watermarks of the moment, decoded with the project's serde."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from bench.soak.verify import Final, Journaled
from sluicegate.schemas.models import (
    InferenceTask,
    RequestReceived,
    RequestRejected,
    ResponseReady,
    TokenChunk,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 120.0) -> Iterator[Record]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"soak-verify-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        ends: dict[int, int] = {}
        for partition in metadata.partitions:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=30
            )
            if high > 0:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {topic}: {error}")
                continue
            partition, offset = message.partition(), message.offset()
            if partition in ends and offset < ends[partition]:
                yield Record(topic, partition, offset, message.timestamp()[1], message.value())
            if partition in ends and offset >= ends[partition] - 1:
                del ends[partition]
        if ends:
            raise RuntimeError(f"reading {topic}: not at the end after {timeout_s:g} s: {ends}")
    finally:
        consumer.close()


@dataclass
class Snapshot:
    journal: list[Journaled]
    journal_times_ms: dict[str, int]  # request_id → broker timestamp
    finals: list[Final]
    final_times_ms: dict[tuple[int, int], int]  # (partition, offset) → broker timestamp
    tasks: list[tuple[str, int, int]]  # (request_id, attempt, timestamp_ms)
    chunks: list[tuple[str, int]]  # (request_id, index) of every TokenChunk on sg.stream


def snapshot(settings: Settings, serde: AvroSerde) -> Snapshot:
    bootstrap = settings.kafka.bootstrap_servers
    journal: list[Journaled] = []
    journal_times: dict[str, int] = {}
    for record in read_topic(bootstrap, settings.topic("requests")):
        event = serde.decode(record.value)
        if isinstance(event, RequestReceived):
            journal_times[event.request_id] = record.timestamp_ms
            journal.append(
                Journaled(
                    request_id=event.request_id,
                    idempotency_key=event.idempotency_key,
                    stream=event.stream,
                    partition=record.partition,
                    offset=record.offset,
                )
            )
    finals: list[Final] = []
    times: dict[tuple[int, int], int] = {}
    for record in read_topic(bootstrap, settings.topic("responses")):
        event = serde.decode(record.value)
        times[(record.partition, record.offset)] = record.timestamp_ms
        if isinstance(event, ResponseReady):
            finals.append(
                Final(
                    request_id=event.request_id,
                    kind="answer",
                    content=event.message.content or "",
                    finish_reason=event.finish_reason,
                    producer=event.producer,
                    partition=record.partition,
                    offset=record.offset,
                )
            )
        elif isinstance(event, RequestRejected):
            finals.append(
                Final(
                    request_id=event.request_id,
                    kind="rejection",
                    content=event.message,
                    code=event.code,
                    http_status=event.http_status,
                    producer=event.producer,
                    partition=record.partition,
                    offset=record.offset,
                )
            )
    tasks: list[tuple[str, int, int]] = []
    for pool in settings.pools:
        for record in read_topic(bootstrap, settings.topic(f"inference.{pool}")):
            task = serde.decode(record.value)
            if isinstance(task, InferenceTask):
                tasks.append((task.request_id, task.attempt, record.timestamp_ms))
    chunks: list[tuple[str, int]] = []
    for record in read_topic(bootstrap, settings.topic("stream")):
        chunk = serde.decode(record.value)
        if isinstance(chunk, TokenChunk):
            chunks.append((chunk.request_id, chunk.index))
    return Snapshot(
        journal=journal,
        journal_times_ms=journal_times,
        finals=finals,
        final_times_ms=times,
        tasks=tasks,
        chunks=chunks,
    )


def diagnose_lost(
    settings: Settings, serde: AvroSerde, snap: Snapshot, lost_ids: list[str]
) -> dict[str, object]:
    """Where each lost request stopped: admitted or not, a task or not, an attempt's result or
    not, and whether the Faust group's committed offset on sg.requests is past its record."""
    from sluicegate.schemas.models import (
        InferenceFailed,
        InferenceResult,
        RequestAdmitted,
    )

    lost = set(lost_ids)
    if not lost:
        return {}
    bootstrap = settings.kafka.bootstrap_servers
    admitted: set[str] = set()
    for record in read_topic(bootstrap, settings.topic("admitted")):
        event = serde.decode(record.value)
        if isinstance(event, RequestAdmitted | RequestRejected) and event.request_id in lost:
            admitted.add(event.request_id)
    attempted: dict[str, list[str]] = {}
    for record in read_topic(bootstrap, settings.topic("inference.results")):
        event = serde.decode(record.value)
        if isinstance(event, InferenceResult | InferenceFailed) and event.request_id in lost:
            outcome = "ok" if isinstance(event, InferenceResult) else event.error_class
            attempted.setdefault(event.request_id, []).append(outcome)
    tasked = {rid for rid, _attempt, _ts in snap.tasks if rid in lost}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": settings.worker.app_id,
            "enable.auto.commit": False,
        }
    )
    try:
        topic = settings.topic("requests")
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        committed = {
            tp.partition: tp.offset
            for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
        }
    finally:
        consumer.close()
    records = [r for r in snap.journal if r.request_id in lost]
    below = [r for r in records if r.offset < committed.get(r.partition, -1)]
    outcomes: dict[str, int] = {}
    for rid in lost:
        for outcome in attempted.get(rid, []):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "lost": len(lost),
        "admitted_or_rejected_on_sg.admitted": len(admitted),
        "with_an_inference_task": len(tasked),
        "with_an_attempt_result": len(attempted),
        "attempt_outcomes": outcomes,
        "journal_offsets_below_the_faust_groups_commit": len(below),
        "faust_committed_offsets": committed,
        "journal_positions": sorted((r.partition, r.offset) for r in records)[:20],
    }
