"""The input guard as it was before the policy engine: settings only, no rules.

Kept as a test oracle: tests/processors/test_policy.py checks that the engine's rules derived
from the settings (`default_rules`) decide every case of a grid exactly as this did, so moving
the guard onto the engine changed no documented behaviour.
"""

from __future__ import annotations

from collections import Counter

from sluicegate.processors.guard import GUARDED_ROLES, GuardOutcome, GuardRejection
from sluicegate.processors.guard_injection import score_injection
from sluicegate.processors.guard_pii import PiiFinding, redact, scan_pii
from sluicegate.schemas.models import ChatMessage, RequestReceived
from sluicegate.settings import GuardrailsSettings


class Guard:
    def __init__(self, settings: GuardrailsSettings) -> None:
        self._settings = settings
        self._kinds = frozenset(settings.pii_kinds) if settings.pii_kinds is not None else None

    @property
    def active(self) -> bool:
        return self._settings.pii_action != "off" or self._settings.injection_action != "off"

    def check(self, request: RequestReceived) -> GuardOutcome:
        attributes: dict[str, str] = {}
        guarded = [
            (i, m) for i, m in enumerate(request.messages) if m.role in GUARDED_ROLES and m.content
        ]
        if self._settings.injection_action != "off" and guarded:
            verdict = max(
                (score_injection(m.content or "") for _, m in guarded), key=lambda v: v.score
            )
            attributes["injection_score"] = f"{verdict.score:.2f}"
            if verdict.signals:
                attributes["injection_signals"] = ",".join(verdict.signals)
            if (
                self._settings.injection_action == "block"
                and verdict.score >= self._settings.injection_threshold
            ):
                return GuardOutcome(
                    request,
                    attributes,
                    GuardRejection(
                        "prompt_injection",
                        "The request was refused: it looks like a prompt-injection attempt "
                        f"({', '.join(verdict.signals) or 'heuristic score'}).",
                    ),
                )
        action = self._settings.pii_action
        if action == "off" or not guarded:
            return GuardOutcome(request, attributes)
        findings = {i: scan_pii(m.content or "", self._kinds) for i, m in guarded}
        counts = Counter(f.kind for found in findings.values() for f in found)
        if not counts:
            return GuardOutcome(request, attributes)
        attributes["pii"] = ",".join(f"{kind}:{n}" for kind, n in sorted(counts.items()))
        attributes["pii_action"] = action
        if action == "block":
            return GuardOutcome(
                request,
                attributes,
                GuardRejection(
                    "pii_detected",
                    "The request was refused: it contains personal data or secrets "
                    f"({', '.join(sorted(counts))}). Remove them and try again.",
                ),
            )
        return GuardOutcome(_rewritten(request, findings, action), attributes)


def _rewritten(
    request: RequestReceived, findings: dict[int, list[PiiFinding]], style: str
) -> RequestReceived:
    messages: list[ChatMessage] = list(request.messages)
    for index, found in findings.items():
        if found:
            message = messages[index]
            messages[index] = message.model_copy(
                update={"content": redact(message.content or "", found, style)}  # type: ignore[arg-type]
            )
    return request.model_copy(update={"messages": messages})
