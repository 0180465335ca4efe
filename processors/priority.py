"""Priority classes: `interactive` (the default) and `batch`, and the batch lane's flow control.

A caller marks a request non-urgent with `extra_body={"sluicegate": {"priority": "batch"}}` or
the header `X-Sluicegate-Priority: batch` (the bridge maps it into the same place). Routing then
picks the cheapest capable deployment (processors/routing.py) and admission sends the task to
the batch lane, `sg.inference.<batch.pool>`, instead of the deployment's own pool topic. The
task's `pool` names that lane, so a retry (which keeps the pool) stays on it.

An inference worker that consumes an interactive pool and the batch lane gives interactive work
precedence with `batch_lane`: a pure decision over what is running and waiting, re-taken after
every fetch and every finished task (serving/inference_worker.py applies it with
`consumer.pause` / `resume` on the lane's partitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

from sluicegate.processors.request_options import request_options

Priority = Literal["interactive", "batch"]
PRIORITIES: Final[frozenset[str]] = frozenset(get_args(Priority))
INTERACTIVE: Final[Priority] = "interactive"
BATCH: Final[Priority] = "batch"


class InvalidPriority(ValueError):
    """A priority that is not one of PRIORITIES; the message is what the caller reads."""


def parse_priority(value: object) -> Priority:
    """`value` as a priority class (None: interactive); raises InvalidPriority."""
    if value is None:
        return INTERACTIVE
    if value == BATCH:
        return BATCH
    if value == INTERACTIVE:
        return INTERACTIVE
    raise InvalidPriority(f"unknown priority {value!r}; known: {sorted(PRIORITIES)}")


def priority_of(extra_json: str | None) -> Priority:
    """The priority recorded in a request's or task's `params.extra_json` (lenient: admission
    validated it, so anything unreadable here is interactive)."""
    if not extra_json or '"priority"' not in extra_json:  # cheap: most requests name none
        return INTERACTIVE
    try:
        return parse_priority(request_options(extra_json).get("priority"))
    except InvalidPriority:
        return INTERACTIVE


@dataclass(frozen=True, slots=True)
class LaneState:
    """One worker's view of its two classes of work at one moment.

    `interactive_in_flight` counts interactive tasks running; `interactive_waiting` is true when
    interactive tasks are fetched but wait for a slot (the worker's backlog). `batch_in_flight`
    counts batch tasks running, `batch_queued` batch tasks fetched and not started yet.
    """

    interactive_in_flight: int
    batch_in_flight: int
    batch_queued: int
    interactive_waiting: bool = False


@dataclass(frozen=True, slots=True)
class LaneDecision:
    """`start`: how many queued batch tasks to start now; `pause`: whether the batch lane's
    partitions should be paused (no more batch tasks fetched) or, if false, resumed."""

    start: int
    pause: bool


def batch_lane(
    state: LaneState,
    *,
    concurrency: int,
    fetch_batch: int,
    pause_when_interactive_in_flight: int,
) -> LaneDecision:
    """What the batch lane may do now.

    Under interactive pressure — `pause_when_interactive_in_flight` or more interactive tasks
    running, or interactive tasks waiting for a slot — no batch task starts and the lane is
    paused, so batch work only ever uses capacity that interactive work leaves idle (a batch task
    already running finishes). Otherwise up to `concurrency` batch tasks run, and the lane is
    paused only while `fetch_batch` or more are queued (fetched ahead of their slots), which
    bounds what a worker holds in memory and leaves the rest on the broker.
    """
    pressure = (
        state.interactive_waiting or state.interactive_in_flight >= pause_when_interactive_in_flight
    )
    if pressure:
        return LaneDecision(start=0, pause=True)
    start = max(0, min(concurrency - state.batch_in_flight, state.batch_queued))
    return LaneDecision(start=start, pause=state.batch_queued - start >= fetch_batch)
