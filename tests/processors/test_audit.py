"""The audit chain: linking per tenant, redelivery, tamper detection, and guardrail facts."""

from __future__ import annotations

import json

import pytest

from sluicegate.processors.admission import Admission
from sluicegate.processors.audit import GENESIS, AuditChain, audit_fact, guard_fact, verify_chain
from sluicegate.schemas.models import AuditRecord, ChatMessage
from sluicegate.settings import Deployment, GuardrailsSettings, ModelAlias, Settings
from tests.builders import request

pytestmark = pytest.mark.unit


def fact(tenant: str, action: str) -> AuditRecord:
    emit = audit_fact(
        request(tenant_id=tenant),
        producer="test",
        actor="key:admin1",
        action=action,
        resource="key:k1",
        detail={"status": 200},
    )
    assert emit.topic == "audit.pending" and emit.key == tenant
    return emit.event


def chained(facts: list[AuditRecord]) -> list[AuditRecord]:
    chain = AuditChain(store={})
    return [emit.event for f in facts for emit in chain.run(f)]


def test_facts_link_per_tenant_and_the_chain_verifies() -> None:
    records = chained([fact("acme", "a1"), fact("beta", "b1"), fact("acme", "a2")])
    acme = [r for r in records if r.tenant_id == "acme"]
    assert acme[0].prev_hash == GENESIS and acme[1].prev_hash == acme[0].hash
    assert records[1].prev_hash == GENESIS  # beta has a chain of its own
    assert len({r.hash for r in records}) == 3
    assert verify_chain(records) == (3, [])


def test_a_redelivered_fact_is_not_chained_twice() -> None:
    chain = AuditChain(store={})
    first = fact("acme", "a1")
    assert len(chain.run(first)) == 1
    assert chain.run(first) == []
    assert len(chain.run(fact("acme", "a2"))) == 1


@pytest.mark.parametrize("tamper", ["edit", "drop", "swap"])
def test_tampering_breaks_the_chain(tamper: str) -> None:
    records = chained([fact("acme", f"a{i}") for i in range(4)])
    if tamper == "edit":
        records[1] = records[1].model_copy(update={"detail_json": '{"status":500}'})
    elif tamper == "drop":
        del records[1]
    else:
        records[1], records[2] = records[2], records[1]
    checked, breaks = verify_chain(records)
    assert breaks and breaks[0].tenant_id == "acme"
    assert checked == len(records)


def test_only_a_deciding_rule_makes_a_guard_fact_and_it_holds_no_text() -> None:
    cause = request(tenant_id="acme", api_key_id="k1")
    assert guard_fact(cause, {"policy_rule": "default"}, stage="input", producer="t") is None
    assert guard_fact(cause, {"injection_score": "0.10"}, stage="input", producer="t") is None
    attributes = {
        "policy_rule": "settings.pii",
        "policy_action": "mask",
        "policy_reason": "pii email:1",
        "pii": "email:1",
    }
    emit = guard_fact(cause, attributes, stage="input", producer="t")
    assert emit is not None and emit.key == "acme"
    record = emit.event
    assert (record.action, record.actor) == ("guard.input.mask", "key:k1")
    assert record.resource == f"request:{cause.request_id}"
    assert json.loads(record.detail_json)["pii"] == "email:1"


def test_admission_publishes_the_fact_of_a_masking_decision() -> None:
    settings = Settings(
        deployments=[Deployment(name="a", backend="openai", provider_model="m")],
        models=[ModelAlias(name="chat", deployments=["a"])],
        guardrails=GuardrailsSettings(pii_action="mask"),
    )
    asking = request("chat").model_copy(
        update={"messages": [ChatMessage(role="user", content="mail ann@example.com")]}
    )
    emits = Admission(settings=settings).run(asking)
    facts = [e.event for e in emits if e.topic == "audit.pending"]
    assert [f.action for f in facts] == ["guard.input.mask"]
    assert "ann@example.com" not in facts[0].detail_json
    assert emits[-1].topic == "traces"
