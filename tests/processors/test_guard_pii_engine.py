"""The PiiEngine port: the contract every engine passes, and the guards scanning through it.

`PiiEngineContract` is inherited by each engine's tests (the builtin one here, Presidio's in
tests/connectors/test_pii_presidio.py), so a new engine is proven against the same behaviour.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from sluicegate.processors import guard, guard_output
from sluicegate.processors.guard import Guard
from sluicegate.processors.guard_output import OutputContext, OutputGuard
from sluicegate.processors.guard_pii import (
    BUILTIN,
    KINDS,
    PiiEngine,
    PiiFinding,
    pii_engine,
)
from sluicegate.schemas.models import ChatMessage
from sluicegate.settings import GuardrailsSettings
from tests.builders import request

pytestmark = pytest.mark.unit

AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"  # assembled so secret scanners do not flag this file

# One clear example per kind, in the context a person would write it in; every engine must
# find these (the bench measures the harder cases).
CLEAR = {
    "email": ("Email me at jane.doe@example.com please.", "jane.doe@example.com"),
    "phone": ("Call me at +1 (415) 555-0132 after 5pm.", "+1 (415) 555-0132"),
    "credit_card": ("Charge my credit card 4111 1111 1111 1111 today.", "4111 1111 1111 1111"),
    "iban": ("Wire it to DE89 3704 0044 0532 0130 00 by Friday.", "DE89 3704 0044 0532 0130 00"),
    "us_ssn": ("My social security number is 536-22-8141.", "536-22-8141"),
    "ip_address": ("The server at 10.12.0.254 keeps timing out.", "10.12.0.254"),
    "secret": (f"aws_access_key_id = {AWS_KEY}", AWS_KEY),
}
MIXED = (
    "Write to jane.doe@example.com or call +1 (415) 555-0132; my credit card is "
    "4111 1111 1111 1111 and the box is at 10.12.0.254."
)


class PiiEngineContract:
    """Behaviour every :class:`PiiEngine` shares. Subclasses provide the ``engine`` fixture."""

    @pytest.fixture
    def engine(self) -> PiiEngine:
        raise NotImplementedError

    @pytest.mark.parametrize("kind", sorted(CLEAR))
    def test_finds_a_clear_example_of_every_kind(self, engine: PiiEngine, kind: str) -> None:
        text, value = CLEAR[kind]
        found = engine.scan(text, KINDS)
        assert [(f.kind, f.value) for f in found] == [(kind, value)]

    def test_findings_are_sorted_exact_and_never_overlap(self, engine: PiiEngine) -> None:
        found = engine.scan(MIXED, KINDS)
        assert {f.kind for f in found} >= {"email", "phone", "credit_card", "ip_address"}
        for f in found:
            assert MIXED[f.start : f.end] == f.value
        for a, b in itertools.pairwise(found):
            assert a.end <= b.start

    def test_only_the_requested_kinds(self, engine: PiiEngine) -> None:
        assert [f.kind for f in engine.scan(MIXED, frozenset({"email"}))] == ["email"]
        assert engine.scan(MIXED, frozenset()) == []
        assert engine.scan("", KINDS) == []

    def test_unknown_kind_is_an_error(self, engine: PiiEngine) -> None:
        with pytest.raises(ValueError, match="passport"):
            engine.scan("x", frozenset({"passport"}))

    def test_checksums_are_checked(self, engine: PiiEngine) -> None:
        text = "Is credit card 4242 4242 4242 4243 valid? And IBAN DE88 3704 0044 0532 0130 00?"
        assert not {"credit_card", "iban"} & {f.kind for f in engine.scan(text, KINDS)}

    def test_nothing_in_plain_prose(self, engine: PiiEngine) -> None:
        text = "Summarise the quarterly report: revenue grew eight percent in 2023."
        assert engine.scan(text, KINDS) == []


class TestBuiltinEngine(PiiEngineContract):
    @pytest.fixture
    def engine(self) -> PiiEngine:
        return BUILTIN


def test_the_default_engine_is_the_builtin_one() -> None:
    assert GuardrailsSettings().pii_engine == "builtin"
    assert pii_engine(GuardrailsSettings()) is BUILTIN
    assert BUILTIN.name == "builtin"


# ----------------------------------------------------------------------------- the guards


@dataclass
class RecordingEngine:
    """Finds every "XXX" and records what it was asked."""

    name: str = "recording"
    calls: list[tuple[str, frozenset[str]]] = field(default_factory=list)

    def scan(self, text: str, kinds: frozenset[str]) -> list[PiiFinding]:
        self.calls.append((text, kinds))
        at = text.find("XXX")
        return [PiiFinding("secret", at, at + 3, "XXX")] if at >= 0 else []


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> RecordingEngine:
    engine = RecordingEngine()
    monkeypatch.setattr(guard, "pii_engine", lambda settings: engine)
    monkeypatch.setattr(guard_output, "pii_engine", lambda settings: engine)
    return engine


def test_the_input_guard_scans_through_the_engine(recording: RecordingEngine) -> None:
    checker = Guard(settings=GuardrailsSettings(pii_action="redact", pii_kinds=["secret"]))
    incoming = request("chat").model_copy(
        update={"messages": [ChatMessage(role="user", content="mail XXX now")]}
    )
    outcome = checker.check(incoming)
    assert recording.calls == [("mail XXX now", frozenset({"secret"}))]
    assert outcome.request.messages[0].content == "mail [SECRET] now"
    assert outcome.attributes["pii"] == "secret:1"


def test_the_output_guard_scans_through_the_engine(recording: RecordingEngine) -> None:
    checker = OutputGuard(settings=GuardrailsSettings(output_pii_action="mask"))
    answer = ChatMessage(role="assistant", content="it is XXX")
    decision = checker.check(answer, OutputContext(tenant_id="acme", model="chat"))
    assert recording.calls == [("it is XXX", KINDS)]
    assert decision.message.content == "it is [SECRET]"
    assert decision.attributes["output_pii"] == "secret:1"
