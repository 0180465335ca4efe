"""Idempotency-Keys in every bridge: sg.idempotency folded into an `IdempotencyLedger`.

Like the identity and prompt views, a bridge reads the whole compacted topic at start (so a
restarted bridge knows every key answered within the TTL before it serves a request) and then
follows it. Two things are added for the claim protocol (processors/idempotency.py):

- the offset applied per partition, so a bridge that wrote a claim can wait until the fold has
  reached it (`reached`) and then read who holds the key: its own claim, or an earlier one;
- watchers per key, so a request waiting for another one's claim wakes up as soon as a record
  of that key is folded (`decide_and_watch`).

The reader thread folds and the event loop decides, under one lock; deciding and registering a
watcher happen under that lock too, so a record folded in between always wakes the watcher.
Futures are resolved on the loop (`call_soon_threadsafe`), and only when someone waits: a
bridge that nobody waits on pays nothing per record beyond the fold.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from datetime import datetime

from confluent_kafka import Message

from sluicegate.processors.idempotency import (
    ClaimRecord,
    Decision,
    IdempotencyLedger,
)
from sluicegate.schemas.models import IdempotencyClaim
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from sluicegate.streams.compacted import CompactedTopicReader

log = logging.getLogger(__name__)

Scoped = tuple[str, str]


def claim_record(event: IdempotencyClaim) -> ClaimRecord:
    """The fold's view of an IdempotencyClaim event."""
    if event.state not in ("claimed", "settled", "released"):
        raise ValueError(f"unknown idempotency state {event.state!r}")
    return ClaimRecord(
        tenant_id=event.tenant_id,
        key=event.idempotency_key,
        state=event.state,  # type: ignore[arg-type]  # checked above
        request_id=event.request_id,
        claimed_at_ms=_ms(event.claimed_at),
        deadline_ms=_ms(event.deadline),
        body_sha256=event.body_sha256,
        answer=event.answer,
    )


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class IdempotencyView:
    """Follows sg.idempotency into `ledger`; a record that does not decode is logged and skipped
    (its offset still counts as applied, so nobody waits for it forever)."""

    def __init__(
        self, *, settings: Settings, serde: AvroSerde, ledger: IdempotencyLedger | None = None
    ) -> None:
        self.ledger = ledger or IdempotencyLedger(
            ttl_ms=int(settings.bridge.idempotency_ttl_s * 1000),
            max_entries=settings.bridge.idempotency_max_entries,
        )
        self.topic = settings.topic("idempotency")
        self._serde = serde
        self._lock = threading.Lock()
        self._applied: dict[int, int] = {}  # partition -> last offset folded
        self._watchers: dict[Scoped, list[asyncio.Future[None]]] = defaultdict(list)
        self._offset_waiters: dict[int, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader = CompactedTopicReader(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            client_config=settings.kafka.client_config(),
            topic=self.topic,
            on_message=self.apply,
        )

    def start(self, loop: asyncio.AbstractEventLoop, timeout_s: float = 30.0) -> None:
        """Read the topic to its end (bounded by `timeout_s`), then follow it; blocking."""
        self._loop = loop
        self._reader.start(timeout_s)

    def close(self) -> None:
        self._reader.close()

    # -- the reader thread --------------------------------------------------------------------

    def apply(self, message: Message) -> None:
        record = self._decode(message.value() or b"")
        partition, offset = message.partition(), message.offset()
        wake: list[asyncio.Future[None]] = []
        with self._lock:
            if record is not None:
                self.ledger.apply(record)
                wake += self._watchers.pop((record.tenant_id, record.key), [])
            self._applied[partition] = max(offset, self._applied.get(partition, -1))
            waiting = self._offset_waiters.get(partition)
            if waiting:
                wake += [future for wanted, future in waiting if wanted <= offset]
                waiting[:] = [(wanted, f) for wanted, f in waiting if wanted > offset]
        if wake and self._loop is not None:
            self._loop.call_soon_threadsafe(_resolve, wake)

    def _decode(self, value: bytes) -> ClaimRecord | None:
        try:
            return claim_record(self._serde.decode_as(value, IdempotencyClaim))
        except Exception:
            log.exception("idempotency: a record that does not decode was skipped")
            return None

    # -- the event loop -----------------------------------------------------------------------

    def decide_and_watch(
        self,
        tenant_id: str,
        key: str,
        body_sha256: str,
        *,
        now_ms: int,
        own_request_id: str | None = None,
    ) -> tuple[Decision, asyncio.Future[None]]:
        """The decision for a request now, and a future resolved by the next record of the key
        (a settlement, a release, a new claim): await it to decide again."""
        assert self._loop is not None, "start() first"
        changed: asyncio.Future[None] = self._loop.create_future()
        with self._lock:
            decision = self.ledger.decide(
                tenant_id, key, body_sha256, now_ms=now_ms, own_request_id=own_request_id
            )
            self._watchers[(tenant_id, key)].append(changed)
        return decision, changed

    def unwatch(self, tenant_id: str, key: str, changed: asyncio.Future[None]) -> None:
        """Drop a watcher that is no longer awaited (the request ended another way)."""
        with self._lock:
            watchers = self._watchers.get((tenant_id, key))
            if watchers is not None and changed in watchers:
                watchers.remove(changed)
                if not watchers:
                    del self._watchers[(tenant_id, key)]
        changed.cancel()

    def poke(self, tenant_id: str, key: str) -> None:
        """Wake the key's watchers without a record: something outside the log changed (the
        request that holds the key on this bridge stopped waiting for its answer)."""
        with self._lock:
            wake = self._watchers.pop((tenant_id, key), [])
        _resolve(wake)

    async def reached(self, partition: int, offset: int) -> None:
        """Return once the record at `offset` of `partition` is folded."""
        assert self._loop is not None, "start() first"
        with self._lock:
            if self._applied.get(partition, -1) >= offset:
                return
            future: asyncio.Future[None] = self._loop.create_future()
            self._offset_waiters[partition].append((offset, future))
        try:
            await future
        finally:  # folded (already removed), or cancelled or timed out: stop waiting
            with self._lock:
                waiting = self._offset_waiters.get(partition, [])
                waiting[:] = [(o, f) for o, f in waiting if f is not future]


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
