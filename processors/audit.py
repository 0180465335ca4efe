"""The audit trail: facts from every stage, linked per tenant into a hash chain.

Stages that decide something worth proving later (an admin call on the bridge, a guardrail
decision in admission or on the output) publish an AuditRecord *fact* to sg.audit.pending,
keyed by tenant, with empty hashes. One agent per tenant partition links them in arrival order
into sg.audit: ``hash = sha256(prev_hash || canonical JSON of the record's content)``. A record
altered, dropped or reordered afterwards breaks every link after it, which `verify_chain` (and
`sluicegate audit verify`, and the shipped ClickHouse query `audit_trail_chain_check`) finds.

Chaining in one place, on the tenant's partition, is what makes the order well defined: the
facts come from many processes, and only the partition has a single writer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sluicegate.processors.envelope import Emit, child_envelope
from sluicegate.schemas.models import AuditRecord, Event

PRODUCER = "audit"
GENESIS = ""
"""The prev_hash of a tenant's first record."""
RECENT = 64
"""Event ids of recently chained facts kept per tenant: a fact redelivered after a crash (its
link already made) is recognised and not chained twice."""


def content_of(record: AuditRecord) -> dict[str, Any]:
    """What the hash covers: who did what to what, when, for which request, and the detail."""
    return {
        "event_id": record.event_id,
        "occurred_at": int(record.occurred_at.timestamp() * 1000),
        "tenant_id": record.tenant_id,
        "request_id": record.request_id,
        "actor": record.actor,
        "action": record.action,
        "resource": record.resource,
        "detail_json": record.detail_json,
    }


def link_hash(prev_hash: str, record: AuditRecord) -> str:
    canonical = json.dumps(content_of(record), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


class AuditChain:
    """Links audit facts per tenant; `store` is the changelog-backed table of chain heads."""

    def __init__(self, *, store: MutableMapping[str, Any]) -> None:
        self._store = store

    def run(self, fact: AuditRecord) -> list[Emit]:
        head = self._store.get(fact.tenant_id) or {"hash": GENESIS, "recent": []}
        if fact.event_id in head["recent"]:
            return []
        prev = str(head["hash"])
        linked = fact.model_copy(update={"prev_hash": prev, "hash": ""})
        linked = linked.model_copy(update={"hash": link_hash(prev, linked)})
        recent = [*head["recent"], fact.event_id][-RECENT:]
        self._store[fact.tenant_id] = {"hash": linked.hash, "recent": recent}
        return [Emit("audit", fact.tenant_id, linked)]


@dataclass(frozen=True, slots=True)
class ChainBreak:
    tenant_id: str
    event_id: str
    reason: str


def verify_chain(records: Iterable[AuditRecord]) -> tuple[int, list[ChainBreak]]:
    """Check records in log order: each links to its tenant's previous one and hashes right.
    Returns the number of records checked and every break found."""
    heads: dict[str, str] = {}
    breaks: list[ChainBreak] = []
    checked = 0
    for record in records:
        checked += 1
        expected_prev = heads.get(record.tenant_id, GENESIS)
        if record.prev_hash != expected_prev:
            breaks.append(ChainBreak(record.tenant_id, record.event_id, "does not link"))
        if link_hash(record.prev_hash, record) != record.hash:
            breaks.append(ChainBreak(record.tenant_id, record.event_id, "hash mismatch"))
        heads[record.tenant_id] = record.hash
    return checked, breaks


def audit_fact(
    cause: Event,
    *,
    producer: str,
    actor: str,
    action: str,
    resource: str,
    detail: dict[str, Any],
    at: datetime | None = None,
) -> Emit:
    """A fact caused by `cause` (same tenant, request and trace), for sg.audit.pending."""
    envelope = child_envelope(cause, producer=producer)
    if at is not None:
        envelope["occurred_at"] = at
    record = AuditRecord(
        **envelope,
        actor=actor,
        action=action,
        resource=resource,
        detail_json=json.dumps(detail, sort_keys=True, separators=(",", ":")),
        prev_hash="",
        hash="",
    )
    return Emit("audit.pending", cause.tenant_id, record)


def guard_fact(
    cause: Event, attributes: dict[str, str], *, stage: str, producer: str
) -> Emit | None:
    """The audit fact of a guardrail decision, when a rule decided (not the default allow).

    The detail holds the rule, action and reason and the kinds found, never the text.
    """
    rule = attributes.get("policy_rule")
    if rule is None or rule == "default":
        return None
    action = attributes.get("policy_action", "")
    detail = {
        key: value
        for key, value in attributes.items()
        if key.startswith("policy_")
        or key in ("pii", "output_pii", "topics", "injection_score", "json_valid")
    }
    actor = getattr(cause, "api_key_id", None) or "anonymous"
    return audit_fact(
        cause,
        producer=producer,
        actor=f"key:{actor}",
        action=f"guard.{stage}.{action}",
        resource=f"request:{cause.request_id}",
        detail=detail,
    )
