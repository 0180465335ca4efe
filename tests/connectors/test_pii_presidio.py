"""Presidio as a PII engine: the engine contract, the guards on it, and that it stays offline.

Runs only where the optional extra is installed (`pip install -e '.[presidio]'`); CI does not
install it, so there these tests are skipped with that reason, except the one that checks the
error a deployment gets when it asks for Presidio without the extra (which simulates that).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sluicegate.connectors import pii_presidio
from sluicegate.errors import ConfigurationError
from sluicegate.processors.guard import Guard
from sluicegate.processors.guard_pii import KINDS, PiiEngine, pii_engine
from sluicegate.schemas.models import ChatMessage
from sluicegate.settings import GuardrailsSettings
from tests.builders import request
from tests.processors.test_guard_pii_engine import PiiEngineContract

pytestmark = pytest.mark.unit

needs_presidio = pytest.mark.skipif(
    not pii_presidio.available(),
    reason="the presidio extra is not installed (pip install -e '.[presidio]')",
)


@pytest.fixture(scope="module")
def presidio() -> pii_presidio.PresidioPiiEngine:
    return pii_presidio.shared_engine()


@needs_presidio
class TestPresidioEngine(PiiEngineContract):
    @pytest.fixture
    def engine(self, presidio: pii_presidio.PresidioPiiEngine) -> PiiEngine:
        return presidio

    def test_secrets_come_from_the_builtin_patterns(self, engine: PiiEngine) -> None:
        key = "sk-" + "proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
        found = engine.scan(f"why does {key} return 401?", frozenset({"secret"}))
        assert [(f.kind, f.value, f.detail) for f in found] == [("secret", key, "openai")]

    def test_names_and_places_are_not_kinds(self, engine: PiiEngine) -> None:
        assert engine.scan("Maria Garcia flew to Berlin on Monday.", KINDS) == []

    def test_ip_findings_say_which_version(self, engine: PiiEngine) -> None:
        found = engine.scan("hosts 10.0.0.7 and 2001:db8::8a2e:370:7334 are down", KINDS)
        assert [(f.kind, f.detail) for f in found] == [("ip_address", "v4"), ("ip_address", "v6")]


@needs_presidio
def test_the_setting_selects_one_shared_engine(presidio: pii_presidio.PresidioPiiEngine) -> None:
    settings = GuardrailsSettings(pii_engine="presidio")
    assert pii_engine(settings) is presidio is pii_engine(settings)
    assert presidio.name == "presidio"


@needs_presidio
def test_the_input_guard_masks_with_presidio(presidio: pii_presidio.PresidioPiiEngine) -> None:
    checker = Guard(settings=GuardrailsSettings(pii_action="mask", pii_engine="presidio"))
    text = "Charge my credit card 4111 1111 1111 1111 and email jane.doe@example.com"
    incoming = request("chat").model_copy(
        update={"messages": [ChatMessage(role="user", content=text)]}
    )
    outcome = checker.check(incoming)
    assert outcome.request.messages[0].content == (
        "Charge my credit card [CREDIT_CARD ****1111] and email [EMAIL @example.com]"
    )
    assert outcome.attributes["pii"] == "credit_card:1,email:1"


@needs_presidio
def test_a_missing_spacy_model_is_a_configuration_error_not_a_download() -> None:
    with pytest.raises(ConfigurationError, match="en_core_web_lg"):
        pii_presidio.PresidioPiiEngine(model="en_core_web_lg")


@needs_presidio
@pytest.mark.slow
def test_loading_and_scanning_open_no_connection(tmp_path: Path) -> None:
    """In a fresh process with every outbound connection refused and counted, and an empty
    tldextract cache: loading the model and checking an email (tldextract's public-suffix
    list) must not try the network."""
    script = textwrap.dedent(
        """
        import socket
        attempts = []
        def refuse(self, address, *args):
            attempts.append(address)
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.getaddrinfo = lambda host, *a, **k: refuse(None, host)  # DNS comes first
        from sluicegate.connectors.pii_presidio import PresidioPiiEngine
        from sluicegate.processors.guard_pii import KINDS
        found = PresidioPiiEngine().scan("write to jane.doe@example.com today", KINDS)
        print(len(attempts), [f.kind for f in found])
        """
    )
    env = {**os.environ, "TLDEXTRACT_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(maxsplit=1) == ["0", "['email']\n"]


def test_asking_for_presidio_without_the_extra_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pii_presidio, "AnalyzerEngine", None)  # as where it is not installed
    monkeypatch.setattr(pii_presidio, "_shared", None)
    with pytest.raises(ConfigurationError, match=r"sluicegate\[presidio\]"):
        Guard(settings=GuardrailsSettings(pii_engine="presidio"))
