"""The Idempotency-Key fold and decision (processors/idempotency.py), without Kafka: who holds
a key when claims race, when a claim expires, what a repeat with another body gets, and that
every reader of the same log decides the same."""

from __future__ import annotations

import itertools

import pytest

from sluicegate.processors.idempotency import (
    CLAIMED,
    RELEASED,
    SETTLED,
    ClaimRecord,
    IdempotencyLedger,
    Mismatch,
    Owned,
    Replay,
    Take,
    Wait,
    fingerprint,
    scoped_key,
    settles,
)

pytestmark = pytest.mark.unit

T0 = 1_800_000_000_000  # epoch ms
TTL = 24 * 3600 * 1000
BODY = fingerprint({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
OTHER = fingerprint({"model": "m", "messages": [{"role": "user", "content": "bye"}]})


def claimed(request_id: str, at: int, *, deadline: int | None = None, body: str = BODY):
    return ClaimRecord(
        tenant_id="acme",
        key="k1",
        state=CLAIMED,
        request_id=request_id,
        claimed_at_ms=at,
        deadline_ms=at + 60_000 if deadline is None else deadline,
        body_sha256=body,
    )


def settled(of: ClaimRecord, answer: bytes = b"answer") -> ClaimRecord:
    return ClaimRecord(
        tenant_id=of.tenant_id,
        key=of.key,
        state=SETTLED,
        request_id=of.request_id,
        claimed_at_ms=of.claimed_at_ms,
        deadline_ms=of.deadline_ms,
        body_sha256=of.body_sha256,
        answer=answer,
    )


def released(of: ClaimRecord) -> ClaimRecord:
    return ClaimRecord(
        tenant_id=of.tenant_id,
        key=of.key,
        state=RELEASED,
        request_id=of.request_id,
        claimed_at_ms=of.claimed_at_ms,
        deadline_ms=of.deadline_ms,
        body_sha256=of.body_sha256,
    )


def ledger(*records: ClaimRecord, max_entries: int = 1000) -> IdempotencyLedger:
    folded = IdempotencyLedger(ttl_ms=TTL, max_entries=max_entries)
    for record in records:
        folded.apply(record)
    return folded


def decide(folded: IdempotencyLedger, now: int, own: str | None = None, body: str = BODY):
    return folded.decide("acme", "k1", body, now_ms=now, own_request_id=own)


def test_an_unknown_key_is_taken() -> None:
    assert decide(ledger(), T0) == Take()


def test_the_first_live_claim_in_the_log_holds_the_key_for_both_racers() -> None:
    a, b = claimed("req-a", T0), claimed("req-b", T0 + 3)
    folded = ledger(a, b)
    assert isinstance(decide(folded, T0 + 10, own="req-a"), Owned)
    waiting = decide(folded, T0 + 10, own="req-b")
    assert isinstance(waiting, Wait) and waiting.claim.request_id == "req-a"


def test_the_log_order_wins_not_the_claim_clocks() -> None:
    """B's bridge clock is behind, but its claim was appended after A's: A holds the key."""
    a, b = claimed("req-a", T0), claimed("req-b", T0 - 500)
    assert isinstance(decide(ledger(a, b), T0 + 10, own="req-a"), Owned)


def test_a_repeat_waits_for_a_live_claim_then_replays_its_settlement() -> None:
    a = claimed("req-a", T0)
    folded = ledger(a)
    assert decide(folded, T0 + 100) == Wait(folded.holder("acme", "k1"))
    folded.apply(settled(a, b"first answer"))
    decision = decide(folded, T0 + 200)
    assert isinstance(decision, Replay) and decision.settlement.answer == b"first answer"
    assert decision.settlement.request_id == "req-a"


def test_a_claim_past_its_deadline_is_superseded_and_the_new_one_holds() -> None:
    a = claimed("req-a", T0, deadline=T0 + 1000)
    folded = ledger(a)
    assert isinstance(decide(folded, T0 + 999), Wait)
    taken = decide(folded, T0 + 1000)
    assert isinstance(taken, Take) and taken.supersedes is not None
    assert taken.supersedes.request_id == "req-a"
    folded.apply(claimed("req-b", T0 + 1000))
    assert isinstance(decide(folded, T0 + 1001, own="req-b"), Owned)


def test_a_claim_written_while_another_is_live_loses_even_if_read_late() -> None:
    """Liveness is judged at the claim's own time, not at the time a reader folds it: a reader
    that starts an hour later (a restarted bridge) agrees with the ones that were there."""
    a = claimed("req-a", T0, deadline=T0 + 1000)
    b = claimed("req-b", T0 + 500)
    folded = ledger(a, b)
    late = decide(folded, T0 + 3_600_000, own="req-b")
    assert isinstance(late, Take) and late.supersedes is not None
    assert late.supersedes.request_id == "req-a"


def test_a_settlement_of_a_superseded_claim_still_answers_the_key_first_one_stays() -> None:
    a = claimed("req-a", T0, deadline=T0 + 1000)
    b = claimed("req-b", T0 + 2000)
    folded = ledger(a, b, settled(a, b"from a"), settled(b, b"from b"))
    decision = decide(folded, T0 + 5000)
    assert isinstance(decision, Replay) and decision.settlement.answer == b"from a"


def test_a_claim_after_a_settlement_loses() -> None:
    a = claimed("req-a", T0)
    folded = ledger(a, settled(a), claimed("req-b", T0 + 100))
    assert isinstance(decide(folded, T0 + 200, own="req-b"), Replay)


def test_a_release_frees_the_key_a_stale_release_does_not() -> None:
    a = claimed("req-a", T0, deadline=T0 + 1000)
    b = claimed("req-b", T0 + 2000)
    folded = ledger(a, b, released(a))  # req-a's late release: req-b holds the key now
    assert isinstance(decide(folded, T0 + 2100, own="req-b"), Owned)
    folded.apply(released(b))
    assert decide(folded, T0 + 2200) == Take()


def test_a_repeat_with_another_body_is_a_mismatch_live_or_settled() -> None:
    a = claimed("req-a", T0)
    folded = ledger(a)
    assert decide(folded, T0 + 10, body=OTHER) == Mismatch("req-a")
    folded.apply(settled(a))
    assert decide(folded, T0 + 20, body=OTHER) == Mismatch("req-a")


def test_a_key_is_forgotten_after_its_ttl() -> None:
    a = claimed("req-a", T0)
    folded = ledger(a, settled(a))
    assert isinstance(decide(folded, T0 + TTL - 1), Replay)
    assert decide(folded, T0 + TTL) == Take()
    folded.apply(claimed("req-b", T0 + TTL))  # a new lifetime: the new claim holds it
    assert isinstance(decide(folded, T0 + TTL + 1, own="req-b"), Owned)


def test_a_settlement_alone_is_enough_after_compaction() -> None:
    """Compaction keeps a key's last record only: its settlement."""
    a = claimed("req-a", T0)
    decision = decide(ledger(settled(a)), T0 + 10)
    assert isinstance(decision, Replay) and decision.settlement.request_id == "req-a"


def test_keys_are_scoped_by_tenant() -> None:
    folded = ledger(claimed("req-a", T0))
    assert folded.decide("globex", "k1", BODY, now_ms=T0 + 1) == Take()
    assert scoped_key("acme", "k1") == "acme/k1"


def test_the_ledger_is_bounded_and_forgets_the_least_recent_keys() -> None:
    folded = IdempotencyLedger(ttl_ms=TTL, max_entries=2)
    for i, key in enumerate(("k1", "k2", "k3")):
        folded.apply(ClaimRecord("acme", key, CLAIMED, f"r{i}", T0 + i, T0 + 60_000, BODY))
    assert len(folded) == 2
    assert folded.decide("acme", "k1", BODY, now_ms=T0 + 10) == Take()
    assert isinstance(folded.decide("acme", "k3", BODY, now_ms=T0 + 10), Wait)


@pytest.mark.parametrize(
    "records",
    list(
        itertools.permutations(
            [claimed("req-a", T0, deadline=T0 + 1000), claimed("req-b", T0 + 10)]
        )
    ),
)
def test_readers_of_one_log_agree(records: tuple[ClaimRecord, ...]) -> None:
    """Two readers fold the same log, one of them from a later start: the same holder."""
    first, second = ledger(*records), ledger(*records)
    assert decide(first, T0 + 20) == decide(second, T0 + 20)
    winner = records[0].request_id
    assert isinstance(decide(first, T0 + 20, own=winner), Owned)


def test_the_fingerprint_ignores_delivery_and_key_order_but_not_routing() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    reordered = {"temperature": 0, "messages": body["messages"], "model": "m"}
    assert fingerprint(body) == fingerprint(reordered)
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    assert fingerprint(streamed) == fingerprint(body)
    assert fingerprint(body, {"X-Sluicegate-Deployment": "a"}) != fingerprint(body)
    assert fingerprint({**body, "temperature": 1}) != fingerprint(body)


@pytest.mark.parametrize("status", [200, 400, 403, 404, 422])
def test_answers_a_retry_would_get_again_settle_a_key(status: int) -> None:
    assert settles(status)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_failures_a_retry_may_cure_release_a_key(status: int) -> None:
    assert not settles(status)
