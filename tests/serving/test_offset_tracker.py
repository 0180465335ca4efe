from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from sluicegate.serving.inference_worker import OffsetTracker

pytestmark = pytest.mark.unit


def test_commits_only_up_to_the_oldest_task_still_running() -> None:
    tracker = OffsetTracker()
    for offset in (5, 6, 7):
        tracker.start("t", 0, offset)
    tracker.start("t", 1, 40)
    assert tracker.finish("t", 0, 6) is None  # 5 still runs: committing 7 would skip it
    assert tracker.finish("t", 0, 5) == 7  # next to consume is the one still running
    assert tracker.finish("t", 0, 7) == 8
    assert tracker.finish("t", 1, 40) == 41


def test_revoked_partitions_are_forgotten() -> None:
    tracker = OffsetTracker()
    tracker.start("t", 0, 1)
    tracker.forget([TopicPartition("t", 0)])
    assert tracker.finish("t", 0, 1) is None
