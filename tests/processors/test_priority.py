from __future__ import annotations

import json

import pytest

from sluicegate.processors.priority import (
    InvalidPriority,
    LaneDecision,
    LaneState,
    batch_lane,
    parse_priority,
    priority_of,
)

pytestmark = pytest.mark.unit


def lane(
    interactive: int = 0, batch: int = 0, queued: int = 0, *, waiting: bool = False
) -> LaneDecision:
    return batch_lane(
        LaneState(
            interactive_in_flight=interactive,
            batch_in_flight=batch,
            batch_queued=queued,
            interactive_waiting=waiting,
        ),
        concurrency=4,
        fetch_batch=10,
        pause_when_interactive_in_flight=3,
    )


def test_parse_priority() -> None:
    assert parse_priority(None) == "interactive"
    assert parse_priority("interactive") == "interactive"
    assert parse_priority("batch") == "batch"
    for bad in ("Batch", "urgent", "", 1, ["batch"]):
        with pytest.raises(InvalidPriority, match="known: \\['batch', 'interactive'\\]"):
            parse_priority(bad)


def test_priority_of_reads_params_extra_json_leniently() -> None:
    assert priority_of(None) == "interactive"
    assert priority_of('{"sluicegate": {"priority": "batch"}}') == "batch"
    assert priority_of(json.dumps({"sluicegate": {"cache": True}, "priority": 1})) == "interactive"
    assert priority_of('{"sluicegate": {"priority": "soon"}}') == "interactive"
    assert priority_of('{"sluicegate": "priority"}') == "interactive"
    assert priority_of('["priority"]') == "interactive"
    assert priority_of('{"priority": ') == "interactive"


def test_an_idle_worker_starts_batch_tasks_up_to_the_concurrency() -> None:
    assert lane(queued=2) == LaneDecision(start=2, pause=False)
    assert lane(queued=9) == LaneDecision(start=4, pause=False)
    assert lane(batch=3, queued=9) == LaneDecision(start=1, pause=False)
    assert lane(batch=4, queued=9) == LaneDecision(start=0, pause=False)
    assert lane() == LaneDecision(start=0, pause=False)  # nothing to do: keep fetching


def test_a_full_queue_pauses_the_lane_until_it_drains() -> None:
    assert lane(batch=4, queued=10) == LaneDecision(start=0, pause=True)
    assert lane(batch=2, queued=12) == LaneDecision(start=2, pause=True)  # 10 still queued
    assert lane(batch=2, queued=11) == LaneDecision(start=2, pause=False)


def test_interactive_pressure_stops_batch_work_and_pauses_the_lane() -> None:
    assert lane(interactive=3, queued=5) == LaneDecision(start=0, pause=True)
    assert lane(interactive=7) == LaneDecision(start=0, pause=True)
    # A backlog (interactive tasks fetched and waiting for a slot) presses at any count.
    assert lane(interactive=0, queued=5, waiting=True) == LaneDecision(start=0, pause=True)
    # Below the threshold batch work shares the machine.
    assert lane(interactive=2, queued=5) == LaneDecision(start=4, pause=False)


def test_the_lane_resumes_when_interactive_work_drains() -> None:
    pressed = lane(interactive=3, batch=1, queued=3)
    drained = lane(interactive=0, batch=1, queued=3)
    assert pressed == LaneDecision(start=0, pause=True)
    assert drained == LaneDecision(start=3, pause=False)
