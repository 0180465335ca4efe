"""Hold-back for streamed answers: the output guard sees streamed text before the caller does.

Tokens sent cannot be taken back. When a tenant's output rules can block or rewrite what an
answer says (:meth:`OutputGuard.holds_back`), the inference stage feeds the stream's text to a
:class:`StreamHoldback` instead of sending it, and sends only what the hold-back releases — the
approach of NeMo Guardrails' streaming output rails (``chunk_size`` + ``context_size``), in
characters.

Each check shows the guard ``context + held``: ``context`` is the last ``overlap`` characters
already released (raw), ``held`` everything not released yet; a check runs once ``held`` has
``window + overlap`` characters (then after every ``window`` more). It releases all but the last
``overlap`` held characters, which stay for the next check. So a value of up to ``overlap``
characters that starts in released text ends inside the text checked with it: it is seen whole
before any of it leaves. Two refinements keep a finding whole:

* a finding across the cut that ends inside the checked text is released whole (masked);
* a finding that reaches the end of the checked text may still be growing (a key, an e-mail's
  domain): the release stops before it, and it is checked again with what follows.

A block ends the stream: nothing of that check's text is released, and every later call
answers the same block. A rewrite (mask, redact) applies to the released text, with the
findings inside it, so released text equals the whole answer masked the same way. ``finish``
checks and releases the rest.

Limits, said where they are decided: a value longer than ``overlap`` whose beginning is not a
finding of its own (an e-mail with a very long local part) can have its first characters
released before it is recognised; facts that only add up across distant parts of an answer (a
topic's threshold met by terms a window apart) are seen together only at the end, when the
inference stage checks the whole answer before the last release.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sluicegate.processors.guard_output import (
    OutputBlock,
    OutputContext,
    OutputDecision,
    OutputGuard,
    TextVerdict,
)
from sluicegate.processors.guard_pii import PiiFinding

__all__ = ["Release", "StreamHoldback"]


@dataclass(frozen=True, slots=True)
class Release:
    """What one step lets out: ``text`` for the caller (masked where a rule masks), ``raw`` the
    characters of the answer it stands for; ``decision`` set when the stream must end with its
    block instead (then nothing is released)."""

    text: str = ""
    raw: str = ""
    decision: OutputDecision | None = None

    @property
    def block(self) -> OutputBlock | None:
        return self.decision.block if self.decision is not None else None


class StreamHoldback:
    """One streamed answer's hold-back: ``feed`` each delta, ``finish`` at the end."""

    def __init__(
        self,
        *,
        guard: OutputGuard,
        context: OutputContext,
        window_chars: int,
        overlap_chars: int,
    ) -> None:
        if window_chars < 1 or overlap_chars < 0:
            raise ValueError("the window needs at least 1 character and the overlap 0 or more")
        self._guard = guard
        self._answer = context
        self._window = window_chars
        self._overlap = overlap_chars
        self._context = ""  # the last `overlap` released characters, raw
        self._held = ""
        self._next_check = window_chars + overlap_chars
        self._blocked: OutputDecision | None = None
        self.checks = 0

    @classmethod
    def of(cls, guard: OutputGuard, context: OutputContext) -> StreamHoldback | None:
        """The hold-back this answer needs under the guard's settings; None: stream it as is."""
        if not guard.holds_back(context):
            return None
        return cls(
            guard=guard,
            context=context,
            window_chars=guard.window_chars,
            overlap_chars=guard.overlap_chars,
        )

    @property
    def blocked(self) -> OutputDecision | None:
        return self._blocked

    @property
    def held(self) -> str:
        """The text received and not released (raw)."""
        return self._held

    def feed(self, text: str) -> Release:
        if self._blocked is not None:
            return Release(decision=self._blocked)
        self._held += text
        if len(self._held) < self._next_check:
            return Release()
        return self._check(final=False)

    def finish(self) -> Release:
        """The rest, checked; after it the hold-back is empty."""
        if self._blocked is not None:
            return Release(decision=self._blocked)
        if not self._held:
            return Release()
        return self._check(final=True)

    def _check(self, *, final: bool) -> Release:
        base = len(self._context)
        checked = self._context + self._held
        verdict = self._guard.check_text(checked, self._answer)
        self.checks += 1
        if verdict.block is not None:
            self._blocked = verdict.decision
            return Release(decision=verdict.decision)
        end = len(checked)
        cut = end if final else _cut(_spans(verdict, checked, base), end - self._overlap, end)
        cut = max(cut, base)
        raw = checked[base:cut]
        inside = [_shifted(f, base) for f in verdict.findings if base <= f.start and f.end <= cut]
        text = verdict.policy.rewrite(raw, inside)
        self._context = checked[max(0, cut - self._overlap) : cut]
        self._held = checked[cut:]
        self._next_check = len(self._held) + self._window
        return Release(text=text, raw=raw)


def _spans(verdict: TextVerdict, checked: str, base: int) -> list[tuple[int, int]]:
    """What must not be cut: the PII found, and what the deciding rule's regex rewrites; those
    that lie wholly in the released context were dealt with when they were released."""
    spans = [(f.start, f.end) for f in verdict.findings if f.end > base]
    pattern = verdict.policy.redact_pattern if verdict.policy.rewrites else None
    if pattern is not None:
        spans += [(m.start(), m.end()) for m in pattern.finditer(checked) if m.end() > base]
    return spans


def _cut(spans: list[tuple[int, int]], cut: int, end: int) -> int:
    """Where a release stops: at ``cut``, unless a span crosses it; then after the span when it
    ends before ``end`` (it is complete), before it when it reaches ``end`` (it may go on).
    Overlapping spans (a regex match over a finding) are merged first, so one move settles it."""
    merged: list[list[int]] = []
    for start, stop in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    for start, stop in merged:
        if start < cut < stop:
            return stop if stop < end else start
        if stop == end and start < cut:  # ends exactly where the text does: may still grow
            return start
    return cut


def _shifted(finding: PiiFinding, by: int) -> PiiFinding:
    return replace(finding, start=finding.start - by, end=finding.end - by)
