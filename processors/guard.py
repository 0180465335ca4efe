"""The input guard: PII, prompt-injection and topic checks on what a caller sends, as one decision.

Admission runs it after rate limits and before the cache, so a masked prompt is what gets
cached and sent to the model, and a blocked one costs no inference. It looks at the messages a
caller controls (user and tool turns; text content), never at system prompts the platform sets.
What to do about a finding is the policy engine's decision (processors/policy.py); the outcome
is data: the (possibly rewritten) request, span attributes, or a rejection.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sluicegate.processors.guard_injection import score_injection
from sluicegate.processors.guard_pii import PiiFinding, pii_engine
from sluicegate.processors.policy import Facts, PolicyEngine, Principal
from sluicegate.schemas.models import RequestReceived
from sluicegate.settings import GuardrailsSettings

GUARDED_ROLES = frozenset({"user", "tool"})


@dataclass(frozen=True, slots=True)
class GuardRejection:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class GuardOutcome:
    request: RequestReceived
    attributes: dict[str, str] = field(default_factory=dict)
    rejection: GuardRejection | None = None


class Guard:
    """The input guard: what the scanners find in the request, decided by the policy engine.

    With no policy file the engine holds only the rules the settings imply (``settings.*``), so
    `pii_action` and `injection_action` behave as documented; a policy file adds per-tenant,
    per-role rules in front of them. Span attributes: ``pii``, ``pii_action``,
    ``injection_score``, ``injection_signals``, ``topics``, ``topic_terms`` and the decision's
    ``policy_rule``, ``policy_action``, ``policy_reason`` (``policy_flags``).
    """

    def __init__(self, *, settings: GuardrailsSettings, engine: PolicyEngine | None = None) -> None:
        self._engine = engine or PolicyEngine.from_settings(settings)
        self._pii = pii_engine(settings)  # guardrails.pii_engine: builtin or presidio

    @property
    def engine(self) -> PolicyEngine:
        return self._engine

    @property
    def active(self) -> bool:
        """Whether any tenant's input rules need a guard at all (admission's check list)."""
        return self._engine.active("input")

    def active_for(self, tenant: str) -> bool:
        return self._engine.needs("input", tenant).any

    def check(self, request: RequestReceived, principal: Principal | None = None) -> GuardOutcome:
        principal = principal or Principal(tenant=request.tenant_id)
        needs = self._engine.needs("input", principal.tenant)
        guarded = [
            (i, m) for i, m in enumerate(request.messages) if m.role in GUARDED_ROLES and m.content
        ]
        if not guarded or not needs.any:
            return GuardOutcome(request)
        texts = tuple(m.content or "" for _, m in guarded)
        attributes: dict[str, str] = {}
        score, signals = None, ()
        if needs.injection:
            verdict = max((score_injection(t) for t in texts), key=lambda v: v.score)
            score, signals = verdict.score, verdict.signals
            attributes["injection_score"] = f"{score:.2f}"
            if signals:
                attributes["injection_signals"] = ",".join(signals)
        findings: dict[int, list[PiiFinding]] = {}
        if needs.pii_kinds:
            scan = self._pii.scan
            findings = {i: scan(m.content or "", needs.pii_kinds) for i, m in guarded}
        counts = Counter(f.kind for found in findings.values() for f in found)
        topics = (
            self._engine.topic_matcher.match("\n".join(texts), tenant=principal.tenant)
            if needs.topics
            else ()
        )
        facts = Facts(
            principal=principal,
            model=request.model,
            pii=dict(counts),
            injection_score=score,
            injection_signals=signals,
            topics=topics,
            texts=texts if needs.texts else (),
        )
        decision = self._engine.evaluate("input", facts)
        if counts:
            attributes["pii"] = ",".join(f"{kind}:{n}" for kind, n in sorted(counts.items()))
            attributes["pii_action"] = decision.action
        if facts.topics:
            attributes["topics"] = ",".join(t.name for t in facts.topics)
            attributes["topic_terms"] = "; ".join(t.explain() for t in facts.topics)
        attributes.update(decision.attributes())
        if decision.blocked:
            rejection = GuardRejection(decision.code or "policy_violation", decision.message or "")
            return GuardOutcome(request, attributes, rejection)
        if not decision.rewrites:
            return GuardOutcome(request, attributes)
        messages = list(request.messages)
        for index, message in guarded:
            content = decision.rewrite(message.content or "", findings.get(index, ()))
            if content != message.content:
                messages[index] = message.model_copy(update={"content": content})
        return GuardOutcome(request.model_copy(update={"messages": messages}), attributes)
