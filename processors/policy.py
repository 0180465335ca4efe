"""The policy engine: per-tenant YAML rules that turn what the guards found into one decision.

The guards find things (PII kinds, an injection score, banned topics, whether structured output
parses); the policy decides what to do about them, per tenant, role, attribute and model. A rule
says when it matches and what happens::

    - name: admins-may-paste-pii
      when: {stage: input, roles: [admin], pii: any}
      action: allow

**Evaluation order.** For a tenant the rules are, in order: the tenant's own rules, then the
file's shared ``rules`` (unless the tenant says ``inherit: false``), then the rules the
:class:`~sluicegate.settings.GuardrailsSettings` imply (:func:`default_rules`, named
``settings.*``). **The first matching rule with a deciding action wins** (``allow``, ``redact``,
``mask``, ``block``); the rules after it are not looked at. ``flag`` is the exception that keeps
flags from hiding the rules after them: a matching ``flag`` rule is recorded (trace, audit) and
evaluation goes on. When nothing decides, the decision is ``allow`` by the rule ``default`` (or
``flag`` by the first flag rule, when one matched).

**Conditions** in ``when`` must all hold (AND); a list inside one condition matches any of its
items (OR). A condition about something the stage does not produce (``json_invalid`` at input)
does not hold. ``redact`` and ``mask`` rewrite the PII the guards found (only the kinds the rule
names, when it names some) and the text the rule's ``regex`` matches.

A decision always names the rule and says why, in words built from the facts that made each
condition hold: ``pii email:1; role admin``. Nothing here reads a message itself: the caller
passes :class:`Facts`. See docs/guardrails.md for the language with examples.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluicegate.processors.guard_pii import KINDS, PiiFinding, redact
from sluicegate.processors.guard_topics import TopicMatch, TopicMatcher
from sluicegate.processors.policy_language import (
    DEFAULT_MESSAGES,
    REGEX_PLACEHOLDER,
    Action,
    Policy,
    PolicyError,
    PolicyIssue,
    Rule,
    Stage,
    default_rules,
    load_policy_file,
)
from sluicegate.settings import GuardrailsSettings

# ----------------------------------------------------------------------------- facts and decisions


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the authenticated tenant, its roles and attributes (never the body's)."""

    tenant: str
    roles: frozenset[str] = frozenset()
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the guards found at one stage, and who asked for which model."""

    principal: Principal
    model: str
    pii: Mapping[str, int] = field(default_factory=dict)
    injection_score: float | None = None
    injection_signals: tuple[str, ...] = ()
    topics: tuple[TopicMatch, ...] = ()
    json_valid: bool | None = None
    json_error: str | None = None
    texts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FiredRule:
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The outcome: the action, the rule that decided (or ``default``) and why."""

    stage: Stage
    action: Action
    rule: str
    reason: str
    code: str | None = None
    message: str | None = None
    flags: tuple[FiredRule, ...] = ()
    redact_kinds: frozenset[str] | None = None
    redact_pattern: re.Pattern[str] | None = None

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def rewrites(self) -> bool:
        return self.action in ("redact", "mask")

    def rewrite(self, text: str, findings: Iterable[PiiFinding]) -> str:
        """``text`` with this decision's redaction applied (unchanged unless redact/mask)."""
        if not self.rewrites:
            return text
        chosen = [f for f in findings if self.redact_kinds is None or f.kind in self.redact_kinds]
        out = redact(text, chosen, "mask" if self.action == "mask" else "redact")
        if self.redact_pattern is not None:
            out = self.redact_pattern.sub(REGEX_PLACEHOLDER, out)
        return out

    def attributes(self) -> dict[str, str]:
        """Span attributes: which rule decided, with what action, and why."""
        attrs = {"policy_rule": self.rule, "policy_action": self.action}
        if self.reason:
            attrs["policy_reason"] = self.reason
        if self.flags:
            attrs["policy_flags"] = ",".join(f.name for f in self.flags)
        return attrs

    def audit_detail(self) -> dict[str, Any]:
        """A JSON-ready record of the decision for an AuditRecord's ``detail_json``."""
        return {
            "stage": self.stage,
            "action": self.action,
            "rule": self.rule,
            "reason": self.reason,
            "code": self.code,
            "flags": [{"rule": f.name, "reason": f.reason} for f in self.flags],
        }


@dataclass(frozen=True, slots=True)
class Needs:
    """What the guards must compute at a stage for the rules that apply (skip the rest)."""

    pii_kinds: frozenset[str] = frozenset()
    injection: bool = False
    topics: bool = False
    json: bool = False
    texts: bool = False
    # Some rule can block, mask or redact on what the text holds (not on JSON validity, which
    # only the whole answer has): a streamed answer must then be held back (guard_stream.py).
    acts_on_text: bool = False

    @property
    def any(self) -> bool:
        return bool(self.pii_kinds) or self.injection or self.topics or self.json or self.texts


# ----------------------------------------------------------------------------- evaluation

_ANY = "any"


class _Compiled:
    """A rule with its conditions pre-shaped for fast matching."""

    __slots__ = ("attributes", "json_invalid", "kinds", "models", "regex", "roles", "rule",
                 "stages", "threshold", "topics")  # fmt: skip

    def __init__(self, rule: Rule) -> None:
        w = rule.when
        self.rule = rule
        self.stages = frozenset({w.stage}) if w.stage else frozenset({"input", "output"})
        self.models = (
            re.compile("|".join(fnmatch.translate(m) for m in w.models)) if w.models else None
        )
        self.roles = frozenset(w.roles) if w.roles is not None else None
        self.attributes = (
            {k: frozenset([v] if isinstance(v, str) else v) for k, v in w.attributes.items()}
            if w.attributes
            else None
        )
        self.kinds: frozenset[str] | str | None = (
            w.pii if w.pii in (None, _ANY) else frozenset(w.pii)  # type: ignore[arg-type]
        )
        self.threshold = w.injection_score_gte
        self.topics: frozenset[str] | str | None = (
            w.topics if w.topics in (None, _ANY) else frozenset(w.topics)  # type: ignore[arg-type]
        )
        self.regex = re.compile(w.regex) if w.regex is not None else None
        self.json_invalid = w.json_invalid

    def matches(self, f: Facts) -> bool:
        if self.models is not None and not self.models.fullmatch(f.model):
            return False
        if self.roles is not None and not self.roles & f.principal.roles:
            return False
        if self.attributes is not None:
            given = f.principal.attributes
            for key, allowed in self.attributes.items():
                if given.get(key) not in allowed:
                    return False
        if self.kinds is not None:
            if not f.pii or (self.kinds != _ANY and not self.kinds & f.pii.keys()):
                return False
        if self.threshold is not None and (
            f.injection_score is None or f.injection_score < self.threshold
        ):
            return False
        if self.topics is not None:
            if not f.topics or (
                self.topics != _ANY and not any(t.name in self.topics for t in f.topics)
            ):
                return False
        if self.json_invalid is not None and (
            f.json_valid is None or f.json_valid == self.json_invalid
        ):
            return False
        return self.regex is None or any(self.regex.search(t) for t in f.texts)

    def explain(self, f: Facts) -> str:
        """Why it matched, from the facts that made each condition hold."""
        parts = []
        if self.kinds is not None:
            kinds = (
                f.pii if self.kinds == _ANY else {k: f.pii[k] for k in self.kinds & f.pii.keys()}
            )
            parts.append("pii " + ",".join(f"{k}:{n}" for k, n in sorted(kinds.items())))
        if self.threshold is not None:
            signals = ",".join(f.injection_signals) or "heuristics"
            parts.append(f"injection {f.injection_score:.2f}>={self.threshold:g} ({signals})")
        if self.topics is not None:
            hits = [t for t in f.topics if self.topics == _ANY or t.name in self.topics]
            parts.append("topic " + "; ".join(t.explain() for t in hits))
        if self.json_invalid is not None:
            parts.append(f"json invalid: {f.json_error}" if self.json_invalid else "json valid")
        if self.regex is not None:
            parts.append(f"regex /{self.regex.pattern}/")
        if self.roles is not None:
            parts.append("role " + ",".join(sorted(self.roles & f.principal.roles)))
        if self.attributes is not None:
            parts.append(", ".join(f"{k}={f.principal.attributes[k]}" for k in self.attributes))
        if self.models is not None:
            parts.append(f"model {f.model}")
        return "; ".join(parts) or "always"


class PolicyEngine:
    """Evaluates the rules for a tenant and stage against the guards' facts (pure, thread-safe)."""

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        settings: GuardrailsSettings | None = None,
        source: str = "<policy>",
    ) -> None:
        policy = policy or Policy()
        settings = settings or GuardrailsSettings()
        self._topics = TopicMatcher([*settings.banned_topics, *policy.topics])
        derived = [_Compiled(r) for r in default_rules(settings)]
        shared = [_Compiled(r) for r in policy.rules]
        self._check_topics(policy, source)
        self._chains: dict[str | None, dict[str, tuple[_Compiled, ...]]] = {
            None: self._by_stage([*shared, *derived])
        }
        for tenant, own in policy.tenants.items():
            chain = [_Compiled(r) for r in own.rules] + (shared if own.inherit else []) + derived
            self._chains[tenant] = self._by_stage(chain)
        self._needs = {
            (tenant, stage): _needs_of(rules)
            for tenant, stages in self._chains.items()
            for stage, rules in stages.items()
        }

    @classmethod
    def from_settings(cls, settings: GuardrailsSettings) -> PolicyEngine:
        """The engine for these settings, with ``policy_file`` loaded when one is set."""
        policy = load_policy_file(settings.policy_file) if settings.policy_file else None
        source = str(settings.policy_file) if settings.policy_file else "<policy>"
        return cls(policy=policy, settings=settings, source=source)

    @property
    def topic_matcher(self) -> TopicMatcher:
        return self._topics

    def rules(self, stage: Stage, tenant: str) -> tuple[str, ...]:
        """The rule names evaluated for ``tenant`` at ``stage``, in order."""
        return tuple(c.rule.name for c in self._chain(stage, tenant))

    def active(self, stage: Stage) -> bool:
        """Whether any tenant's rules at ``stage`` need a guard to compute anything."""
        return any(needs.any for (_, s), needs in self._needs.items() if s == stage)

    def needs(self, stage: Stage, tenant: str) -> Needs:
        return self._needs[(tenant if tenant in self._chains else None, stage)]

    def evaluate(self, stage: Stage, facts: Facts) -> PolicyDecision:
        flags: list[FiredRule] = []
        for compiled in self._chain(stage, facts.principal.tenant):
            if not compiled.matches(facts):
                continue
            rule = compiled.rule
            if rule.action == "flag":
                flags.append(FiredRule(rule.name, compiled.explain(facts)))
                continue
            return self._decide(stage, compiled, facts, tuple(flags))
        if flags:
            first = flags[0]
            return PolicyDecision(stage, "flag", first.name, first.reason, flags=tuple(flags))
        return PolicyDecision(stage, "allow", "default", "no rule matched")

    # --- internals

    def _chain(self, stage: Stage, tenant: str) -> tuple[_Compiled, ...]:
        return self._chains.get(tenant, self._chains[None])[stage]

    @staticmethod
    def _by_stage(rules: list[_Compiled]) -> dict[str, tuple[_Compiled, ...]]:
        return {s: tuple(r for r in rules if s in r.stages) for s in ("input", "output")}

    def _check_topics(self, policy: Policy, source: str) -> None:
        known = self._topics.names
        issues = [
            PolicyIssue(f"names unknown topic(s) {sorted(set(r.when.topics) - known)}", rule=r.name)
            for r in [*policy.rules, *(r for t in policy.tenants.values() for r in t.rules)]
            if isinstance(r.when.topics, list) and set(r.when.topics) - known
        ]
        if issues:
            raise PolicyError(source, issues)

    @staticmethod
    def _decide(
        stage: Stage, compiled: _Compiled, facts: Facts, flags: tuple[FiredRule, ...]
    ) -> PolicyDecision:
        rule = compiled.rule
        reason = compiled.explain(facts)
        if rule.action == "block":
            code = rule.code or _block_code(compiled, stage)
            template = rule.message or DEFAULT_MESSAGES.get(code) or _generic_message(stage)
            message = template.format_map(_placeholders(facts, rule.name))
            return PolicyDecision(stage, "block", rule.name, reason, code, message, flags)
        kinds = None if compiled.kinds in (None, _ANY) else compiled.kinds
        return PolicyDecision(
            stage,
            rule.action,
            rule.name,
            reason,
            rule.code,
            flags=flags,
            redact_kinds=kinds,  # type: ignore[arg-type]
            redact_pattern=compiled.regex,
        )


def _needs_of(rules: Sequence[_Compiled]) -> Needs:
    kinds: set[str] = set()
    for c in rules:
        if c.kinds == _ANY or (c.kinds is None and c.rule.action in ("redact", "mask")):
            kinds = set(KINDS)
            break
        if c.kinds is not None:
            kinds |= c.kinds  # type: ignore[arg-type]
    return Needs(
        pii_kinds=frozenset(kinds),
        injection=any(c.threshold is not None for c in rules),
        topics=any(c.topics is not None for c in rules),
        json=any(c.json_invalid is not None for c in rules),
        texts=any(c.regex is not None for c in rules),
        acts_on_text=any(
            c.rule.action in ("block", "mask", "redact") and c.json_invalid is None for c in rules
        ),
    )


def _block_code(compiled: _Compiled, stage: Stage) -> str:
    if compiled.json_invalid:
        return "invalid_json_output"
    if compiled.topics is not None:
        return "banned_topic"
    if compiled.kinds is not None:
        return "output_pii_detected" if stage == "output" else "pii_detected"
    if compiled.threshold is not None:
        return "prompt_injection"
    return "policy_violation"


def _generic_message(stage: Stage) -> str:
    if stage == "output":
        return "The model's answer was withheld by the policy rule {rule!r}."
    return "The request was refused by the policy rule {rule!r}."


def _placeholders(facts: Facts, rule: str) -> dict[str, str]:
    return {
        "rule": rule,
        "pii": ", ".join(sorted(facts.pii)),
        "topics": ", ".join(t.name for t in facts.topics),
        "injection_score": f"{facts.injection_score or 0.0:.2f}",
        "injection_signals": ", ".join(facts.injection_signals) or "heuristic score",
        "json_error": facts.json_error or "",
        "model": facts.model,
    }
