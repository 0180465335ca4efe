"""Re-read what a Faust stream skipped: a partition whose commit is stuck behind records nobody
holds.

faust-streaming drops the events queued for an agent whenever flow control is suspended
(`Stream` yields `skipped_value` for them: a rebalance starting, the worker stopping) and relies
on the seek to the committed offsets that follows to fetch them again. When no seek follows —
the chaos soak met it once after a kill -9 and restart of the Faust worker, with 76 requests
journaled while it was down — the skipped records are never processed: the fetcher has moved
past them, the later ones are processed and acked, and the committed offset stays at the first
skipped record for good. Those requests are journaled and never answered. The same happens in a
plain experiment: `app.flow_control.suspend()` and `resume()` while records are queued leave
the commit at the first queued one, its successors processed, nothing unacked.

The signature is exact enough to act on: the next offset to commit is at or below the last
offset handed to the streams, it was never acked, no message of the partition is being processed
(none tracked and unacked), and it stays so across `stall_s`. A slow agent never matches (its
message is unacked), nor does a backlog (the commit moves as it drains), nor a commit that fails
while the broker is away (its offsets are acked, only not committed yet: the first version of
this watchdog read those again after a broker restart in the soak). The remedy is the seek Faust did
not do — back to the committed offset; the records after the hole are read again, and their
second run is what at-least-once already allows for (docs/delivery.md: the inference worker
skips tasks already answered or started, the bridge takes the first final result).

`HoleDetector` is the decision, without Faust; `watch_commits` applies it to an app's consumer,
whose bookkeeping (`_committed_offset`, `_read_offset`, `_unacked_messages`) is faust-streaming
0.15.3's own: there is no public API for it (tests/streams/test_commit_watchdog.py checks it on
a real app).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One partition's state as the consumer sees it now."""

    committed: int | None  # the next offset to commit (Kafka's committed offset)
    read: int | None  # the last offset handed to the streams
    in_process: int  # messages of the partition taken by a stream and not acked yet
    next_acked: bool = False  # the offset to commit next is acked, only its commit is late


class HoleDetector:
    """Per partition: is the commit stuck behind records no stream holds, for `stall_s`?"""

    def __init__(self, *, stall_s: float) -> None:
        self._stall_s = stall_s
        self._since: dict[Any, tuple[int, float]] = {}  # partition → (stuck offset, since)

    def observe(self, partition: Any, progress: Progress, now: float) -> int | None:
        """The offset to seek back to, once the hole has lasted `stall_s`; else None."""
        committed, read = progress.committed, progress.read
        if (
            committed is None
            or read is None
            or read < committed
            or progress.in_process
            or progress.next_acked
        ):
            self._since.pop(partition, None)
            return None
        stuck = self._since.get(partition)
        if stuck is None or stuck[0] != committed:
            self._since[partition] = (committed, now)
            return None
        if now - stuck[1] < self._stall_s:
            return None
        del self._since[partition]
        return committed

    def forget(self, keep: Iterable[Any]) -> None:
        """Drop partitions no longer assigned."""
        kept = set(keep)
        for partition in [p for p in self._since if p not in kept]:
            del self._since[partition]


async def watch_commits(
    app: Any,
    detector: HoleDetector,
    now: Callable[[], float],
    on_reseek: Callable[[str, int, int, int], None] | None = None,
) -> int:
    """One check of every stream partition of `app`'s consumer; seeks back where a hole is.
    Returns how many partitions were sought back."""
    if app.rebalancing or not app.flow_control.is_active():
        return 0
    consumer = app.consumer
    try:
        assignment = consumer.assignment()
    except Exception:  # not started yet, or stopping
        return 0
    streams = [tp for tp in assignment if app.topics.acks_enabled_for(tp.topic)]
    detector.forget(streams)
    in_process: dict[Any, int] = {}
    for message in list(consumer._unacked_messages):
        in_process[message.tp] = in_process.get(message.tp, 0) + 1
    sought = 0
    for tp in streams:
        committed = consumer._committed_offset.get(tp)
        progress = Progress(
            committed=committed,
            read=consumer._read_offset.get(tp),
            in_process=in_process.get(tp, 0),
            next_acked=committed in consumer._acked_index.get(tp, ()),
        )
        offset = detector.observe(tp, progress, now())
        if offset is None:
            continue
        log.warning(
            "%s[%s]: commit stuck at %s while offsets up to %s were read and none is being "
            "processed (records a stream skipped): reading again from %s",
            tp.topic,
            tp.partition,
            offset,
            progress.read,
            offset,
        )
        await consumer.seek(tp, offset)
        sought += 1
        if on_reseek is not None:
            on_reseek(tp.topic, tp.partition, offset, progress.read or offset)
    return sought
