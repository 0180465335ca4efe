"""The sg.idempotency view without a broker: records folded from the reader thread wake the
requests waiting on their key or on their own claim's offset, on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
from sluicegate.processors.idempotency import Owned, Replay, Take, Wait
from sluicegate.schemas.models import IdempotencyClaim
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import BridgeSettings, KafkaSettings, Settings
from sluicegate.streams.idempotency_view import IdempotencyView
from sluicegate.streams.topics import idempotency_topic

pytestmark = pytest.mark.unit

SERDE = AvroSerde(registry=InMemorySchemaRegistry())
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class FakeMessage:
    payload: bytes
    at: int
    part: int = 0

    def value(self) -> bytes:
        return self.payload

    def partition(self) -> int:
        return self.part

    def offset(self) -> int:
        return self.at


def record(state: str, request_id: str, *, answer: bytes | None = None) -> bytes:
    return SERDE.encode(
        IdempotencyClaim(
            event_id=f"e-{state}-{request_id}",
            occurred_at=NOW,
            tenant_id="acme",
            request_id=request_id,
            trace_id="0" * 32,
            span_id="0" * 16,
            producer="bridge-test",
            idempotency_key="k1",
            state=state,
            claimed_at=NOW,
            deadline=NOW + timedelta(minutes=1),
            body_sha256="b",
            answer=answer,
        )
    )


def settings() -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        bridge=BridgeSettings(idempotency_ttl_s=3600),
    )


@pytest.fixture
def view() -> Iterator[IdempotencyView]:
    built = IdempotencyView(settings=settings(), serde=SERDE)
    yield built
    built._reader._consumer.close()


def now_ms() -> int:
    return int(NOW.timestamp() * 1000) + 10


def from_thread(view: IdempotencyView, *messages: FakeMessage) -> None:
    """Fold as the reader does: on a thread of its own."""
    thread = threading.Thread(target=lambda: [view.apply(m) for m in messages])
    thread.start()
    thread.join()


def test_a_record_of_the_key_wakes_its_waiter(view: IdempotencyView) -> None:
    async def scenario() -> None:
        view._loop = asyncio.get_running_loop()
        from_thread(view, FakeMessage(record("claimed", "req-a"), 0))
        decision, changed = view.decide_and_watch("acme", "k1", "b", now_ms=now_ms())
        assert isinstance(decision, Wait) and decision.claim.request_id == "req-a"
        from_thread(view, FakeMessage(record("settled", "req-a", answer=b"x"), 1))
        await asyncio.wait_for(changed, 2)
        decision, _ = view.decide_and_watch("acme", "k1", "b", now_ms=now_ms())
        assert isinstance(decision, Replay) and decision.settlement.answer == b"x"

    asyncio.run(scenario())


def test_a_claim_is_read_back_by_offset_then_decided(view: IdempotencyView) -> None:
    async def scenario() -> None:
        view._loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(view.reached(0, 1))
        await asyncio.sleep(0)
        from_thread(view, FakeMessage(record("claimed", "req-a"), 0))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        from_thread(view, FakeMessage(record("claimed", "req-b"), 1))
        await asyncio.wait_for(waiting, 2)
        mine, _ = view.decide_and_watch("acme", "k1", "b", now_ms=now_ms(), own_request_id="req-b")
        assert isinstance(mine, Wait) and mine.claim.request_id == "req-a"  # req-b lost
        theirs, _ = view.decide_and_watch(
            "acme", "k1", "b", now_ms=now_ms(), own_request_id="req-a"
        )
        assert isinstance(theirs, Owned)
        await view.reached(0, 0)  # already folded: returns at once

    asyncio.run(scenario())


def test_an_undecodable_record_still_counts_as_read(view: IdempotencyView) -> None:
    async def scenario() -> None:
        view._loop = asyncio.get_running_loop()
        from_thread(view, FakeMessage(b"\x00garbage", 0, part=2))
        await asyncio.wait_for(view.reached(2, 0), 2)
        decision, _ = view.decide_and_watch("acme", "k1", "b", now_ms=now_ms())
        assert decision == Take()

    asyncio.run(scenario())


def test_the_topic_is_compacted_and_deleted_after_the_ttl() -> None:
    spec = idempotency_topic(settings())
    assert spec.name.endswith("idempotency") and spec.events == ("IdempotencyClaim",)
    config = spec.config()
    assert config["cleanup.policy"] == "compact,delete"
    assert config["retention.ms"] == str(3600 * 1000)
    assert int(config["min.compaction.lag.ms"]) >= 2 * settings().bridge.request_timeout_s * 1000
