"""Read the soak's topics from the beginning (a fresh consumer, explicit assignment, no group
offsets committed) up to the high watermarks of the moment, decoded with the project's serde."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from bench.soak.verify import Final, Journaled
from sluicegate.schemas.models import (
    InferenceTask,
    RequestReceived,
    RequestRejected,
    ResponseReady,
    TokenChunk,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.topic_read import read_to_end
from sluicegate.settings import Settings


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes


def read_topic(settings: Settings, topic: str, *, timeout_s: float = 120.0) -> Iterator[Record]:
    """Every record of `topic` up to its end of now; an error or a short read raises."""
    for batch in read_to_end(settings, topic, batch=1000, timeout_s=timeout_s, strict=True):
        for m in batch:
            yield Record(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.value() or b"")


@dataclass
class Snapshot:
    journal: list[Journaled]
    journal_times_ms: dict[str, int]  # request_id → broker timestamp
    finals: list[Final]
    final_times_ms: dict[tuple[int, int], int]  # (partition, offset) → broker timestamp
    tasks: list[tuple[str, int, int]]  # (request_id, attempt, timestamp_ms)
    chunks: list[tuple[str, int]]  # (request_id, index) of every TokenChunk on sg.stream


def snapshot(settings: Settings, serde: AvroSerde) -> Snapshot:
    journal: list[Journaled] = []
    journal_times: dict[str, int] = {}
    for record in read_topic(settings, settings.topic("requests")):
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
    for record in read_topic(settings, settings.topic("responses")):
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
        for record in read_topic(settings, settings.topic(f"inference.{pool}")):
            task = serde.decode(record.value)
            if isinstance(task, InferenceTask):
                tasks.append((task.request_id, task.attempt, record.timestamp_ms))
    chunks: list[tuple[str, int]] = []
    for record in read_topic(settings, settings.topic("stream")):
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
    admitted: set[str] = set()
    for record in read_topic(settings, settings.topic("admitted")):
        event = serde.decode(record.value)
        if isinstance(event, RequestAdmitted | RequestRejected) and event.request_id in lost:
            admitted.add(event.request_id)
    attempted: dict[str, list[str]] = {}
    for record in read_topic(settings, settings.topic("inference.results")):
        event = serde.decode(record.value)
        if isinstance(event, InferenceResult | InferenceFailed) and event.request_id in lost:
            outcome = "ok" if isinstance(event, InferenceResult) else event.error_class
            attempted.setdefault(event.request_id, []).append(outcome)
    tasked = {rid for rid, _attempt, _ts in snap.tasks if rid in lost}
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
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
