"""Idempotency-Key as a fold of sg.idempotency: who holds a key, and what a repeat gets.

Every bridge folds the same compacted topic (key `tenant_id/idempotency_key`) into an
`IdempotencyLedger`, so every bridge, and a restarted one, answers a repeat the same way. A key
goes through three kinds of record, all `IdempotencyClaim` events:

- **claimed**: request `request_id` holds the key until `deadline` (its own deadline plus
  `CLAIM_GRACE_MS`). The first live claim of a key in the log wins: a claim written while
  another one is live loses, whichever bridge wrote it, and both bridges see the same order
  because a key lives on one partition. A bridge writes its claim, reads the partition back to
  its own offset and only then knows whether it holds the key.
- **settled**: the key's answer for good (a ResponseReady, or a refusal a retry would get
  again). Written by whichever bridge saw the answer first: the claim's own bridge, or one that
  waited for it after that bridge died. The first settlement is kept; later ones are ignored.
- **released**: the claim ended with a failure a retry may cure (429, 5xx) or before the
  request was journaled: a retry runs afresh.

Liveness is judged at the time written in the records (`claimed_at` against `deadline`), never at
the time a reader folds them, so two readers of one log always agree on who holds a key. A claim
whose deadline passed without a settlement (its bridge died before journaling, or its request
was never answered) is superseded by the next claim.

A repeat with another body is refused with 422 (the IETF draft "The Idempotency-Key HTTP Header
Field" says 422 for a reused key with a different payload; Stripe answers 400): replaying the
first answer to a different question would be wrong, and running it would break the promise.
`stream` and `stream_options` are not part of the body's hash: the stored answer is replayed as
JSON or as a stream, whichever the repeat asks for.

Pure: no Kafka, no clock (callers pass `now_ms`), no asyncio; the shells are
`streams/idempotency_view.py` (the fold, followed) and `serving/idempotency.py` (the bridge's
side of the protocol).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

CLAIMED = "claimed"
SETTLED = "settled"
RELEASED = "released"
State = Literal["claimed", "settled", "released"]

# How long a claim outlives its request's deadline. After the deadline the inference worker no
# longer starts the request, but a call already running may still answer; the grace gives that
# answer time to arrive before a retry may run the request again.
CLAIM_GRACE_MS = 5_000

# Body fields that change how the answer is delivered, not what it is.
_DELIVERY_FIELDS = frozenset({"stream", "stream_options"})


def scoped_key(tenant_id: str, key: str) -> str:
    """The record key on sg.idempotency: one key per tenant and Idempotency-Key (tenant ids
    never contain `/`), so compaction keeps each key's last record."""
    return f"{tenant_id}/{key}"


def fingerprint(body: Mapping[str, Any], routing: Mapping[str, str] | None = None) -> str:
    """Hex SHA-256 of what decides the answer: the JSON body without the delivery fields, and
    the routing headers (which the bridge merges into the body's `sluicegate` options)."""
    canonical = json.dumps(
        {
            "body": {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS},
            "routing": dict(routing or {}),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def settles(http_status: int) -> bool:
    """Whether an answer with this status becomes the key's answer for good.

    Kept: success, and refusals a retry would get again (400, 403, 404, ...): replaying them is
    what the key promises. Released: what a retry may cure — 408, 409, 429 and every 5xx (rate
    limits, budgets, overload, upstream failures, timeouts): pinning those to the key would turn
    a passing failure into a permanent one.
    """
    return http_status < 500 and http_status not in (408, 409, 429)


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """One record of sg.idempotency, as the fold needs it (the shell decodes IdempotencyClaim)."""

    tenant_id: str
    key: str
    state: State
    request_id: str
    claimed_at_ms: int
    deadline_ms: int
    body_sha256: str
    answer: bytes | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A request holding a key until `deadline_ms`."""

    request_id: str
    body_sha256: str
    claimed_at_ms: int
    deadline_ms: int

    def live(self, at_ms: int) -> bool:
        return at_ms < self.deadline_ms


@dataclass(frozen=True, slots=True)
class Settlement:
    """A key's answer for good: `answer` is the final event in the wire format."""

    request_id: str
    body_sha256: str
    claimed_at_ms: int
    answer: bytes


@dataclass(frozen=True, slots=True)
class Replay:
    """Serve the settled answer again."""

    settlement: Settlement


@dataclass(frozen=True, slots=True)
class Wait:
    """Another request holds the key: wait for its answer (or for its claim to end)."""

    claim: Claim


@dataclass(frozen=True, slots=True)
class Take:
    """Nobody holds the key: write a claim. `supersedes` is the expired claim it replaces."""

    supersedes: Claim | None = None


@dataclass(frozen=True, slots=True)
class Owned:
    """The caller's own claim holds the key: journal the request."""

    claim: Claim


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key is held or settled for a request with another body (422)."""

    request_id: str


Decision = Replay | Wait | Take | Owned | Mismatch


@dataclass(slots=True)
class _Entry:
    expires_at_ms: int
    claim: Claim | None = None
    settlement: Settlement | None = None


class IdempotencyLedger:
    """The fold of sg.idempotency plus the decision for a request carrying a key.

    `ttl_ms` bounds how long a key is remembered (from its claim; the topic's retention is the
    same), `max_entries` how many keys this process remembers: past it the least recently
    touched keys are forgotten first, and a repeat of a forgotten key runs again. Not
    thread-safe: the view serialises `apply` and `decide`.
    """

    def __init__(self, *, ttl_ms: int, max_entries: int) -> None:
        self._ttl_ms = ttl_ms
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, record: ClaimRecord) -> None:
        """Fold one record, in log order."""
        scoped = (record.tenant_id, record.key)
        entry = self._entries.get(scoped)
        if record.state == CLAIMED:
            if entry is not None and record.claimed_at_ms >= entry.expires_at_ms:
                entry = None  # the key's lifetime ended: it starts afresh
            if entry is None:
                entry = _Entry(expires_at_ms=record.claimed_at_ms + self._ttl_ms)
            elif entry.settlement is not None or (
                entry.claim is not None and entry.claim.live(record.claimed_at_ms)
            ):
                return  # lost: the key is answered, or held by a live claim
            entry.claim = Claim(
                record.request_id, record.body_sha256, record.claimed_at_ms, record.deadline_ms
            )
            entry.expires_at_ms = record.claimed_at_ms + self._ttl_ms
        elif record.state == SETTLED:
            if entry is None:  # compaction removed the claim, or it was forgotten
                entry = _Entry(expires_at_ms=record.claimed_at_ms + self._ttl_ms)
            if entry.settlement is not None or record.answer is None:
                return  # the first answer stays
            entry.settlement = Settlement(
                record.request_id, record.body_sha256, record.claimed_at_ms, record.answer
            )
            entry.claim = None
        elif record.state == RELEASED:
            if entry is None or entry.claim is None or entry.settlement is not None:
                return
            if entry.claim.request_id != record.request_id:
                return  # a late release of a claim that was superseded meanwhile
            entry.claim = None
        else:
            return
        self._entries[scoped] = entry
        self._entries.move_to_end(scoped)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def decide(
        self,
        tenant_id: str,
        key: str,
        body_sha256: str,
        *,
        now_ms: int,
        own_request_id: str | None = None,
    ) -> Decision:
        """What a request with this key and body does now. `own_request_id` is the caller's own
        claim, once written and read back: `Owned` if it holds the key."""
        entry = self._entries.get((tenant_id, key))
        if entry is None or now_ms >= entry.expires_at_ms:
            return Take()
        if entry.settlement is not None:
            if entry.settlement.body_sha256 != body_sha256:
                return Mismatch(entry.settlement.request_id)
            return Replay(entry.settlement)
        claim = entry.claim
        if claim is None:
            return Take()
        if not claim.live(now_ms):
            return Take(supersedes=claim)
        if claim.request_id == own_request_id:
            return Owned(claim)
        if claim.body_sha256 != body_sha256:
            return Mismatch(claim.request_id)
        return Wait(claim)

    def holder(self, tenant_id: str, key: str) -> Claim | None:
        """The claim that holds the key as folded so far (live or not), if any."""
        entry = self._entries.get((tenant_id, key))
        return None if entry is None else entry.claim
