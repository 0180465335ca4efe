"""Idempotency-Key support: a repeated key gets the first answer and runs nothing again.

Entries live for a TTL in an LRU bounded by count. A concurrent repeat of an in-flight key waits
for the same answer. An attempt that ended without an answer (timeout, journal failure) is
forgotten, so a retry is journaled afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from sluicegate.schemas.models import Event


@dataclass
class _Entry:
    answer: asyncio.Future[Event]
    created: float = field(default_factory=time.monotonic)


class IdempotencyCache:
    def __init__(self, *, ttl_s: float, max_entries: int) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def claim(self, tenant: str, key: str) -> asyncio.Future[Event] | None:
        """None if this call owns the key now (go ahead); else the first call's answer."""
        scoped = (tenant, key)
        entry = self._entries.get(scoped)
        if entry is not None and time.monotonic() - entry.created < self._ttl_s:
            self._entries.move_to_end(scoped)
            return entry.answer
        self._entries[scoped] = _Entry(asyncio.get_running_loop().create_future())
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return None

    def settle(self, tenant: str, key: str, answer: Event) -> None:
        entry = self._entries.get((tenant, key))
        if entry is not None and not entry.answer.done():
            entry.answer.set_result(answer)

    def abandon(self, tenant: str, key: str, error: BaseException) -> None:
        entry = self._entries.pop((tenant, key), None)
        if entry is not None and not entry.answer.done():
            entry.answer.set_exception(error)
            entry.answer.exception()  # mark retrieved: waiters may not exist
