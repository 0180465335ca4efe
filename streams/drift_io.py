"""The drift stage's Faust-side plumbing: its changelog-backed table, and the queue that takes
sampled prompts off the hot path to the embedding thread.

The table. The monitor's state is saved from a timer as well as from agents, and Faust writes a
table key to the changelog partition of the event being processed, which a timer does not have.
So the state goes straight to the changelog, to the partition of the tenant's own records
(murmur2 of the tenant id, like every producer of the tenant-keyed topics): the worker that
reads a tenant's sg.cost partition after a rebalance is the one that recovers its state.
Keys are ``[tenant, metric]`` as JSON text; values the monitor's JSON-able state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
from aiokafka.partitioner import murmur2

from sluicegate.processors.drift_samples import PromptToEmbed
from sluicegate.processors.drift_stage import DriftStage

log = logging.getLogger(__name__)

PROMPT_QUEUE_SIZE = 1000
"""Prompts waiting for the embedding thread. At ~7 ms an embedding that is 7 s of work: a
backlog longer than that is better dropped than embedded late (the cache shares the thread)."""


def tenant_partition(tenant_id: str, partitions: int) -> int:
    """The partition a tenant-keyed record lands on (Kafka's default murmur2 partitioner)."""
    return (murmur2(tenant_id.encode()) & 0x7FFFFFFF) % partitions


def state_key(tenant_id: str, metric: str) -> str:
    return json.dumps([tenant_id, metric])


class DriftTable:
    """The `drift` table as the stage's store: `save` for `DriftStage`, `recover_into` for the
    table's on_recover. `assigned` gives this worker's partitions of the tenant-keyed topics."""

    def __init__(self, table: Any, *, partitions: int, assigned: Callable[[], set[int]]) -> None:
        self._table = table
        self._partitions = partitions
        self._assigned = assigned

    def save(self, tenant_id: str, metric: str, state: dict[str, Any]) -> None:
        partition = tenant_partition(tenant_id, self._partitions)
        self._table.send_changelog(partition, state_key(tenant_id, metric), state)

    def saved(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """What the table's recovery read: (tenant, metric, state) per series."""
        for key, state in list(self._table.items()):
            try:
                tenant_id, metric = json.loads(key)
            except (TypeError, ValueError):
                log.warning("drift table: skipping key %r", key)
                continue
            if isinstance(state, dict):
                yield str(tenant_id), str(metric), state

    def owns(self, tenant_id: str) -> bool:
        return tenant_partition(tenant_id, self._partitions) in self._assigned()

    def recover_into(self, stage: DriftStage) -> int:
        restored = stage.recover(self.saved(), self.owns)
        log.info("drift: %d series restored from the table", restored)
        return restored


class PromptQueue:
    """Sampled prompts on their way to the embedding thread.

    `offer` never waits: admission calls it on the hot path, and a full queue drops the prompt
    and counts it (a drift sample is worth less than an answer's latency). Nor does it take more
    than `max_per_s` a second (a token bucket; the excess is `over_rate`, not an error): one
    embedding costs ~13 ms of CPU, so a fixed share of the traffic (`embedding_sample_rate`)
    would grow with it — at 150 req/s, 10% took a fifth to two thirds of a core from the worker
    that admits every request, and its throughput fell below the offered load. `run` is the
    consumer task: embed, then hand the vector on; one failure is logged and the loop goes on.
    """

    def __init__(
        self,
        maxsize: int = PROMPT_QUEUE_SIZE,
        *,
        max_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue: asyncio.Queue[PromptToEmbed] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.over_rate = 0
        self._reported = 0
        self._rate = max_per_s
        self._clock = clock
        self._burst = max(1.0, max_per_s or 0.0)
        self._tokens = self._burst
        self._refilled = clock()

    def _take_token(self) -> bool:
        if self._rate is None:
            return True
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def offer(self, prompt: PromptToEmbed) -> bool:
        if not self._take_token():
            self.over_rate += 1
            return False
        try:
            self._queue.put_nowait(prompt)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    def report_drops(self) -> int:
        """Log the prompts dropped since the last report; how many."""
        new = self.dropped - self._reported
        self._reported = self.dropped
        if new:
            log.warning(
                "drift: %d sampled prompts dropped, the embedding queue was full (%d in all)",
                new,
                self.dropped,
            )
        return new

    async def run(
        self,
        embed: Callable[[str], Awaitable[np.ndarray]],
        handle: Callable[[PromptToEmbed, np.ndarray], Awaitable[None]],
    ) -> None:
        while True:
            prompt = await self._queue.get()
            try:
                await handle(prompt, await embed(prompt.text))
            except Exception:  # one prompt must never stop the task
                log.exception("drift: embedding a sampled prompt failed")
            finally:
                self._queue.task_done()

    async def drained(self) -> None:
        """Wait until every queued prompt was handled (tests)."""
        await self._queue.join()
