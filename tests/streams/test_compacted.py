"""The compacted-topic reader waits out a partition that has no leader yet."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from sluicegate.streams.compacted import CompactedTopicReader

pytestmark = pytest.mark.unit


class FlakyConsumer:
    def __init__(self, failures: int, code: int) -> None:
        self.failures = failures
        self.code = code

    def get_watermark_offsets(self, _tp: TopicPartition, timeout: float) -> tuple[int, int]:
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(self.code))
        return 0, 7


def reader_with(consumer: FlakyConsumer) -> CompactedTopicReader:
    reader = CompactedTopicReader(bootstrap_servers="127.0.0.1:1", topic="t", on_record=print)
    reader._consumer.close()
    reader._consumer = consumer  # type: ignore[assignment]
    return reader


def test_not_leader_right_after_creation_is_retried() -> None:
    reader = reader_with(FlakyConsumer(2, KafkaError.NOT_LEADER_FOR_PARTITION))
    assert reader._end_offset(TopicPartition("t", 0), time.monotonic() + 5) == 7


def test_a_real_error_is_raised() -> None:
    reader = reader_with(FlakyConsumer(1, KafkaError.TOPIC_AUTHORIZATION_FAILED))
    with pytest.raises(KafkaException):
        reader._end_offset(TopicPartition("t", 0), time.monotonic() + 5)
