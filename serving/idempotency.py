"""Idempotency-Key on every bridge: a repeated key gets the first answer and runs nothing again.

The bridge's side of the protocol in processors/idempotency.py, on the compacted sg.idempotency
that every bridge follows (streams/idempotency_view.py). A request with a key goes through
`IdempotencyGate.admit` before it is journaled:

- the key is **settled** → its answer, replayed at once (the bridge renders it as JSON or as a
  one-chunk stream);
- another request **holds** the key → wait until its claim is settled, released or expired.
  The settlement normally comes through the view from the holder's bridge. When that bridge
  died after journaling, nobody would write it, so the waiter takes the holder's answer from
  sg.responses itself — the part already written by a one-off read from the claim's time, what
  comes later through the reply router — and settles the key on the holder's behalf;
- **nobody** holds it → write a claim (acks=all), wait until the view has folded the partition
  up to it, and decide again: the claim holds the key (a `Lease`: journal the request, then
  `settle` or `abandon` it), or an earlier claim that this bridge had not seen yet does (wait
  for that one). Two bridges racing on one key therefore agree: the log orders their claims.

A claim lives until its request's deadline plus a grace, so a retry after a crash waits at most
for the first request's timeout. It is released early (a retry runs afresh) when the request was
surely not journaled (shed by the bridge, the claim itself failed) or its answer is one a retry
may cure (429, 5xx). A request whose journal write was ambiguous keeps its claim: its record may
still be appended and answered, and a retry then gets that answer instead of a second run.

Requests without the header never come here and pay nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, Message

from sluicegate.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IdempotencyUnavailable,
)
from sluicegate.processors.envelope import new_event_id, new_span_id, now
from sluicegate.processors.idempotency import (
    CLAIM_GRACE_MS,
    CLAIMED,
    RELEASED,
    SETTLED,
    Claim,
    Mismatch,
    Owned,
    Replay,
    Take,
    Wait,
    scoped_key,
    settles,
)
from sluicegate.schemas.models import (
    Event,
    IdempotencyClaim,
    RequestReceived,
    RequestRejected,
    ResponseReady,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.kafka_io import AsyncProducer, ReplyRouter
from sluicegate.serving.topic_read import read_to_end
from sluicegate.settings import Settings
from sluicegate.streams.idempotency_view import IdempotencyView

log = logging.getLogger(__name__)

Answer = ResponseReady | RequestRejected
# How far before a claim's time the one-off read of sg.responses starts: the claim's time is the
# claiming bridge's clock, the responses' timestamps the broker's.
_CLOCK_SLACK_MS = 5_000
# How long a written settlement or release may take to come back through the view before the
# lease ends anyway (waiters then watch sg.responses).
_FOLD_TIMEOUT_S = 30.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Lease:
    """This request holds the key: journal it, then `settle` or `abandon` the lease."""

    tenant_id: str
    key: str
    request_id: str
    trace_id: str
    body_sha256: str
    claimed_at_ms: int
    deadline_ms: int


@dataclass(slots=True)
class _Watch:
    """The final answer of a request held by another (or a gone) bridge, shared by the
    requests of this bridge waiting for it: one reply-router listener and one read back."""

    answer: asyncio.Future[Answer]
    users: int = 0


class IdempotencyGate:
    def __init__(
        self,
        *,
        settings: Settings,
        serde: AvroSerde,
        instance_id: str,
        view: IdempotencyView | None = None,
    ) -> None:
        self.view = view or IdempotencyView(settings=settings, serde=serde)
        self._settings = settings
        self._serde = serde
        self._instance_id = instance_id
        self._responses_topic = settings.topic("responses")
        self._journal: AsyncProducer | None = None
        self._router: ReplyRouter | None = None
        self._leases: dict[str, Lease] = {}  # by request_id: held here, answer still awaited
        self._watches: dict[str, _Watch] = {}  # by the holder's request_id
        self._background: set[asyncio.Future[None]] = set()

    async def start(self, journal: AsyncProducer, router: ReplyRouter) -> None:
        """Read sg.idempotency to its end, then follow it."""
        self._journal, self._router = journal, router
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.view.start, loop)

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.view.close)

    # -- before the journal -------------------------------------------------------------------

    async def admit(
        self, event: RequestReceived, *, key: str, body_sha256: str, timeout_s: float
    ) -> Answer | Lease:
        """The key's answer to replay, or a lease to run `event` under. Raises
        IdempotencyKeyReused (422), IdempotencyKeyInUse (409: the holder had no answer within
        `timeout_s`) or IdempotencyUnavailable (503: the claim could not be written)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        tenant = event.tenant_id
        own: str | None = None  # set once this request's claim is written and read back
        while True:
            decision, changed = self.view.decide_and_watch(
                tenant, key, body_sha256, now_ms=_now_ms(), own_request_id=own
            )
            try:
                if isinstance(decision, Replay):
                    return self._decode(decision.settlement.answer)
                if isinstance(decision, Mismatch):
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {key!r} was used for request {decision.request_id} "
                        "with another body; a key names one request.",
                        request_id=decision.request_id,
                    )
                if isinstance(decision, Owned):
                    lease = Lease(
                        tenant_id=tenant,
                        key=key,
                        request_id=event.request_id,
                        trace_id=event.trace_id,
                        body_sha256=body_sha256,
                        claimed_at_ms=decision.claim.claimed_at_ms,
                        deadline_ms=decision.claim.deadline_ms,
                    )
                    self._leases[lease.request_id] = lease
                    return lease
                if isinstance(decision, Take):
                    await self._claim(self._claim_record(event, key, body_sha256), give_up)
                    own = event.request_id
                    continue
                assert isinstance(decision, Wait)  # an earlier claim holds the key
                answer = await self._await_holder(decision.claim, tenant, key, changed, give_up)
                if answer is not None:
                    return answer
            finally:
                self.view.unwatch(tenant, key, changed)

    def _claim_record(self, event: RequestReceived, key: str, body_sha256: str) -> IdempotencyClaim:
        """A claim for `event` from now until its deadline plus the grace."""
        claimed_at = _now_ms()
        return self._record(
            event.tenant_id,
            key,
            CLAIMED,
            request_id=event.request_id,
            trace_id=event.trace_id,
            body_sha256=body_sha256,
            claimed_at_ms=claimed_at,
            deadline_ms=(event.deadline_ms or claimed_at) + CLAIM_GRACE_MS,
        )

    async def _claim(self, record: IdempotencyClaim, give_up: float) -> None:
        """Write a claim and wait until the view has folded it.

        If that fails or the caller leaves meanwhile, the claim may still be appended (or is)
        with no request behind it: a release is written right behind it (same producer, same
        partition, so in order), so a retry need not wait for the claim's deadline. A release
        of a claim that lost or was superseded changes nothing."""
        loop = asyncio.get_running_loop()
        try:
            try:
                partition, offset = await asyncio.wait_for(
                    self._write(record), max(0.0, give_up - loop.time())
                )
            except Exception as error:
                raise IdempotencyUnavailable(
                    f"The Idempotency-Key could not be claimed: {error or 'no acknowledgement'}."
                    " Nothing was journaled; retry with the same key."
                ) from error
            try:
                await asyncio.wait_for(
                    self.view.reached(partition, offset), max(0.0, give_up - loop.time())
                )
            except TimeoutError:
                raise IdempotencyUnavailable(
                    "The Idempotency-Key's claim was written but not read back in time. "
                    "Nothing was journaled; retry with the same key."
                ) from None
        except BaseException:
            released = {"state": RELEASED, "event_id": new_event_id(), "occurred_at": now()}
            self._write_later(record.model_copy(update=released))
            raise

    async def _await_holder(
        self,
        claim: Claim,
        tenant: str,
        key: str,
        changed: asyncio.Future[None],
        give_up: float,
    ) -> Answer | None:
        """Wait for the request holding the key: its answer to replay, or None to decide again
        (a record of the key was folded, the claim expired, or it was released)."""
        loop = asyncio.get_running_loop()
        # A claim of this bridge whose request still waits for its answer: the lease's
        # settlement or release comes through the view. Otherwise watch the holder's answer.
        watched = None if claim.request_id in self._leases else self._watch(claim)
        until = min(give_up, loop.time() + (claim.deadline_ms - _now_ms()) / 1000 + 0.005)
        try:
            waits: set[asyncio.Future[Any]] = {changed}
            if watched is not None:
                waits.add(watched)
            await asyncio.wait(
                waits, timeout=max(0.0, until - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            if watched is not None and watched.done():
                return await self._settle_for(claim, tenant, key, watched.result())
            if not changed.done() and loop.time() >= give_up:
                raise IdempotencyKeyInUse(
                    f"Request {claim.request_id} holds Idempotency-Key {key!r} and had no "
                    "answer yet; retry later with the same key.",
                    request_id=claim.request_id,
                )
            return None
        finally:
            if watched is not None:
                self._unwatch(claim.request_id)

    async def _settle_for(
        self, claim: Claim, tenant: str, key: str, answer: Answer
    ) -> Answer | None:
        """The holder's answer reached this bridge: settle the key with it on the holder's
        behalf (its bridge may be gone), or release the claim if a retry may do better."""
        fields = {
            "request_id": claim.request_id,
            "trace_id": answer.trace_id,
            "body_sha256": claim.body_sha256,
            "claimed_at_ms": claim.claimed_at_ms,
            "deadline_ms": claim.deadline_ms,
        }
        if settles(_status(answer)):
            self._write_later(
                self._record(tenant, key, SETTLED, answer=self._serde.encode(answer), **fields)
            )
            return answer
        try:
            partition, offset = await self._write(self._record(tenant, key, RELEASED, **fields))
            await self.view.reached(partition, offset)
        except Exception as error:
            raise IdempotencyUnavailable(
                f"The Idempotency-Key could not be released: {error}; retry with the same key."
            ) from error
        return None

    # -- after the journal --------------------------------------------------------------------

    def settle(self, lease: Lease, answer: Event) -> None:
        """The request holding the key got its final result: it becomes the key's answer, or
        (a failure a retry may cure) the key is released."""
        if not isinstance(answer, ResponseReady | RequestRejected):
            # A stream whose chunks all came before the journal's final copy: that copy is the
            # answer. Waiters here watch sg.responses for it from now on.
            self._end_lease(lease)
            return
        state = SETTLED if settles(_status(answer)) else RELEASED
        record = self._lease_record(
            lease, state, answer=self._serde.encode(answer) if state == SETTLED else None
        )
        self._write_later(record, then=lambda: self._end_lease(lease))

    def abandon(self, lease: Lease, *, journaled: bool) -> None:
        """The request holding the key ended without its answer. Not journaled (shed): release
        the key. Journaled, or maybe (a timeout, an ambiguous journal error, a client gone):
        keep the claim, since the answer may still come; waiters here watch for it."""
        if journaled:
            self._end_lease(lease)
        else:
            self._write_later(
                self._lease_record(lease, RELEASED), then=lambda: self._end_lease(lease)
            )

    def _end_lease(self, lease: Lease) -> None:
        self._leases.pop(lease.request_id, None)
        self.view.poke(lease.tenant_id, lease.key)

    # -- watching another bridge's request ----------------------------------------------------

    def _watch(self, claim: Claim) -> asyncio.Future[Answer]:
        watch = self._watches.get(claim.request_id)
        if watch is None:
            loop = asyncio.get_running_loop()
            watch = _Watch(answer=loop.create_future())
            self._watches[claim.request_id] = watch
            future = watch.answer

            def on_event(_request_id: str, event: Event) -> None:
                if isinstance(event, ResponseReady | RequestRejected) and not future.done():
                    future.set_result(event)

            assert self._router is not None
            self._router.listen(claim.request_id, on_event)  # what comes from now on
            since = claim.claimed_at_ms - _CLOCK_SLACK_MS  # what came already
            past = loop.run_in_executor(None, self._find_answer, claim.request_id, since)
            past.add_done_callback(lambda done: _offer(future, done))
        watch.users += 1
        return watch.answer

    def _unwatch(self, request_id: str) -> None:
        watch = self._watches.get(request_id)
        if watch is None:
            return
        watch.users -= 1
        if watch.users <= 0:
            del self._watches[request_id]
            assert self._router is not None
            self._router.forget(request_id)

    def _find_answer(self, request_id: str, since_ms: int) -> Answer | None:
        """The first final result of `request_id` on sg.responses since `since_ms`; blocking."""
        wanted = request_id.encode()
        batches = read_to_end(
            self._settings, self._responses_topic, since_ms=since_ms, timeout_s=10.0
        )
        with contextlib.closing(batches):
            for batch in batches:
                for message in batch:
                    if message.key() != wanted:
                        continue
                    event = self._serde.decode(message.value() or b"")
                    if isinstance(event, ResponseReady | RequestRejected):
                        return event
        return None

    # -- records ------------------------------------------------------------------------------

    def _record(
        self,
        tenant: str,
        key: str,
        state: str,
        *,
        request_id: str,
        trace_id: str,
        body_sha256: str,
        claimed_at_ms: int,
        deadline_ms: int,
        answer: bytes | None = None,
    ) -> IdempotencyClaim:
        return IdempotencyClaim(
            event_id=new_event_id(),
            occurred_at=now(),
            tenant_id=tenant,
            request_id=request_id,
            trace_id=trace_id,
            span_id=new_span_id(),
            producer=self._instance_id,
            idempotency_key=key,
            state=state,
            claimed_at=_at(claimed_at_ms),
            deadline=_at(deadline_ms),
            body_sha256=body_sha256,
            answer=answer,
        )

    def _lease_record(
        self, lease: Lease, state: str, *, answer: bytes | None = None
    ) -> IdempotencyClaim:
        return self._record(
            lease.tenant_id,
            lease.key,
            state,
            request_id=lease.request_id,
            trace_id=lease.trace_id,
            body_sha256=lease.body_sha256,
            claimed_at_ms=lease.claimed_at_ms,
            deadline_ms=lease.deadline_ms,
            answer=answer,
        )

    def _write(self, record: IdempotencyClaim) -> asyncio.Future[tuple[int, int]]:
        """Append a record (acks=all); resolves to its (partition, offset)."""
        assert self._journal is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, int]] = loop.create_future()

        def delivered(error: KafkaError | None, message: Message) -> None:
            where = (message.partition(), message.offset())
            loop.call_soon_threadsafe(_delivered, future, error, where)

        self._journal.produce_raw(
            self.view.topic,
            scoped_key(record.tenant_id, record.idempotency_key),
            self._serde.encode(record),
            delivered,
        )
        return future

    def _write_later(
        self, record: IdempotencyClaim, then: Callable[[], None] | None = None
    ) -> None:
        """Append without holding up the caller's answer, then run `then` once the view has
        folded the record (or the write failed). A failure is logged: the claim then stays
        until its deadline, and a waiter finds the answer on sg.responses itself."""
        task = asyncio.ensure_future(self._write_and_fold(record, then))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_and_fold(
        self, record: IdempotencyClaim, then: Callable[[], None] | None
    ) -> None:
        try:
            partition, offset = await self._write(record)
            await asyncio.wait_for(self.view.reached(partition, offset), _FOLD_TIMEOUT_S)
        except Exception as error:
            log.warning("idempotency: %s record of %s: %s", record.state, record.request_id, error)
        finally:
            if then is not None:
                then()

    def _decode(self, answer: bytes) -> Answer:
        event = self._serde.decode(answer)
        assert isinstance(event, ResponseReady | RequestRejected), type(event).__name__
        return event


def _status(answer: Answer) -> int:
    return 200 if isinstance(answer, ResponseReady) else answer.http_status


def _offer(future: asyncio.Future[Answer], past: asyncio.Future[Answer | None]) -> None:
    """The one-off read of sg.responses finished: its answer, if any, unless the router was
    first. A failed read is logged; the router and the claim's deadline still end the wait."""
    if past.cancelled() or future.done():
        return
    if past.exception() is not None:
        log.warning("idempotency: reading sg.responses back failed: %s", past.exception())
        return
    found = past.result()
    if found is not None:
        future.set_result(found)


def _delivered(
    future: asyncio.Future[tuple[int, int]], error: KafkaError | None, where: tuple[int, int]
) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(where)
    else:
        future.set_exception(IdempotencyUnavailable(f"write failed: {error.str()}"))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _at(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)
