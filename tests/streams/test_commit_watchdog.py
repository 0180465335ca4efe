"""The commit watchdog (streams/commit_watchdog.py): the decision, and the fix on a real Faust
worker whose stream skipped queued records when flow control was suspended."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sluicegate.streams.commit_watchdog import HoleDetector, Progress

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
class TestHoleDetector:
    def test_a_hole_is_sought_back_once_it_has_lasted(self) -> None:
        detector = HoleDetector(stall_s=10)
        hole = Progress(committed=75, read=399, in_process=0)
        assert detector.observe("p", hole, now=0) is None
        assert detector.observe("p", hole, now=9) is None
        assert detector.observe("p", hole, now=10) == 75
        assert detector.observe("p", hole, now=11) is None  # the clock starts again

    def test_caught_up_or_idle_is_no_hole(self) -> None:
        detector = HoleDetector(stall_s=0)
        assert detector.observe("p", Progress(committed=400, read=399, in_process=0), 0) is None
        assert detector.observe("p", Progress(committed=None, read=None, in_process=0), 1) is None
        assert detector.observe("p", Progress(committed=400, read=399, in_process=0), 2) is None

    def test_a_slow_message_is_no_hole(self) -> None:
        detector = HoleDetector(stall_s=10)
        slow = Progress(committed=75, read=399, in_process=1)
        assert all(detector.observe("p", slow, now=t) is None for t in range(0, 60, 5))

    def test_a_draining_backlog_restarts_the_clock(self) -> None:
        detector = HoleDetector(stall_s=10)
        for t, committed in enumerate(range(100, 160, 5)):
            progress = Progress(committed=committed, read=399, in_process=0)
            assert detector.observe("p", progress, now=t * 5) is None

    def test_acked_records_whose_commit_is_late_are_no_hole(self) -> None:
        detector = HoleDetector(stall_s=10)  # the broker is away: commits fail, acks go on
        late = Progress(committed=1026, read=1044, in_process=0, next_acked=True)
        assert all(detector.observe("p", late, now=t) is None for t in range(0, 60, 5))

    def test_a_message_taken_in_between_restarts_the_clock(self) -> None:
        detector = HoleDetector(stall_s=10)
        hole = Progress(committed=75, read=399, in_process=0)
        detector.observe("p", hole, now=0)
        detector.observe("p", Progress(committed=75, read=399, in_process=1), now=5)
        assert detector.observe("p", hole, now=11) is None
        assert detector.observe("p", hole, now=21) == 75

    def test_partitions_no_longer_assigned_are_forgotten(self) -> None:
        detector = HoleDetector(stall_s=10)
        hole = Progress(committed=75, read=399, in_process=0)
        detector.observe("p", hole, now=0)
        detector.forget(["q"])
        assert detector.observe("p", hole, now=10) is None


def run_app(bootstrap: str, out: Path, *extra: str) -> dict:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"skip-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    command = [sys.executable, "-m", "tests.streams.faust_skip_app", "--bootstrap", bootstrap]
    try:
        done = subprocess.run(
            [*command, "--topic", topic, "--out", str(out), *extra],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        admin.delete_topics([topic], operation_timeout=30)
    assert out.exists(), done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_records_a_stream_skipped_are_read_again(kafka_bootstrap: str, tmp_path: Path) -> None:
    without = run_app(kafka_bootstrap, tmp_path / "without.json", "--no-watchdog")
    # faust-streaming leaves them: the commit stays at the first skipped record for good.
    assert without["seen"] < without["produced"]
    assert without["committed"] < without["produced"]

    healed = run_app(kafka_bootstrap, tmp_path / "healed.json")
    assert healed["sought"] >= 1
    assert healed["seen"] == healed["produced"]
    assert healed["committed"] == healed["produced"]
