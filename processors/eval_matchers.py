"""Matchers: how an answer under test is scored against a case.

Every matcher answers with a :class:`MatchResult` (metric, score in [0, 1], passed, detail), so
the runner, the scorecard and the analytics views treat a regex and an LLM judge alike. A
matcher never raises on a bad *answer* (unparseable JSON scores 0 with the reason in
``detail``); it raises :class:`MatcherConfigError` on a bad *config*, when it is built, so a
broken dataset fails before any model is paid for.

Two shapes, both built by :func:`build_matcher` from config dicts such as
``{"type": "contains", "value": "Paris", "case_sensitive": false}``:

* :class:`Matcher` — synchronous: ``match(output, case)``. ``exact``, ``contains``, ``regex``,
  ``json_structure``, ``field_accuracy``, ``semantic_similarity``.
* :class:`DeferredMatcher` — two steps, because the judge is a model called through the
  gateway: ``request_for(output, case)`` gives the judge's messages, which the runner sends as
  an event; ``score(reply_text)`` scores the answer when it comes back. ``llm_judge``
  (:class:`~sluicegate.processors.eval_judge.JudgeMatcher`).

Where a matcher needs a reference it takes the config's ``value``, else the case's
``expected``. ``passed`` is ``score >= threshold``; each type has its own default threshold
(1.0 for the all-or-nothing ones). Options per type are in docs/evals.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

import jsonschema
import numpy as np
from jsonschema.exceptions import best_match
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    from sluicegate.processors.eval_datasets import EvalCase

__all__ = [
    "ContainsMatcher",
    "DeferredMatcher",
    "Embedder",
    "ExactMatcher",
    "FieldAccuracyMatcher",
    "JsonStructureMatcher",
    "MatchResult",
    "Matcher",
    "MatcherConfigError",
    "RegexMatcher",
    "SemanticSimilarityMatcher",
    "build_matcher",
    "build_matchers",
    "extract_json",
    "validate_matcher_config",
]

Embedder = Callable[[list[str]], np.ndarray]
"""Texts in, one row per text out (any scale: cosine does not care)."""

_EPSILON = 1e-9
"""Slack on ``score >= threshold`` so 0.1 + 0.2 style float noise does not flip a verdict."""


@dataclass(frozen=True, slots=True)
class MatchResult:
    """One metric's verdict on one answer. ``error`` marks a result that is not a judgement
    (the judge's reply did not parse, the embedder failed): it counts as not passed, and the
    runner can tell it from a real 0."""

    metric: str
    score: float
    passed: bool
    detail: str = ""
    error: bool = False

    def __post_init__(self) -> None:
        if not (0.0 <= self.score <= 1.0):  # also refuses NaN
            raise ValueError(f"score must be in [0, 1], got {self.score}")

    @classmethod
    def failure(cls, metric: str, detail: str) -> MatchResult:
        """A result standing for "could not be scored": score 0, not passed, flagged."""
        return cls(metric=metric, score=0.0, passed=False, detail=detail, error=True)


class MatcherConfigError(ConfigurationError, ValueError):
    """A matcher config that cannot be built; ``matcher_type`` and ``option`` say which."""

    def __init__(
        self, message: str, *, matcher_type: str | None = None, option: str | None = None
    ) -> None:
        super().__init__(message)
        self.matcher_type = matcher_type
        self.option = option


@runtime_checkable
class Matcher(Protocol):
    """Scores an answer on the spot."""

    name: str

    def match(self, output: str, case: EvalCase) -> MatchResult: ...


@runtime_checkable
class DeferredMatcher(Protocol):
    """Scores an answer through a model call the runner makes (the LLM judge). ``model`` is
    the alias to send the request to (``None``: the runner's default)."""

    name: str
    model: str | None

    def request_for(
        self, output: str, case: EvalCase, *, question: str | None = None
    ) -> list[dict[str, str]]: ...

    def score(self, reply_text: str) -> MatchResult: ...

    def failed(self, reason: str) -> MatchResult: ...


def _verdict(metric: str, score: float, threshold: float, detail: str) -> MatchResult:
    score = min(1.0, max(0.0, score))
    return MatchResult(metric, score, score + _EPSILON >= threshold, detail)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- JSON extraction --------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: the whole text, else a fenced block (```json …```),
    else the first object or array embedded in prose. Raises ``ValueError`` when there is none.

    Models wrap JSON in fences and chatter around it; refusing those would score formatting,
    not content. ``json_structure`` and the judge's reply parser both read answers this way."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    for block in _FENCE.findall(text):
        try:
            return json.loads(block.strip())
        except json.JSONDecodeError:
            continue
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            return value
    raise ValueError("no JSON value found")


_MISSING = object()


def _lookup(value: Any, path: str) -> Any:
    """The value at a dotted path (``a.b.0.c``: list indices as numbers), or ``_MISSING``."""
    current = value
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _leaves(expected: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects flattened to dotted paths, so each leaf field is scored on its own."""
    leaves: dict[str, Any] = {}
    for key, value in expected.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(_leaves(value, f"{path}."))
        else:
            leaves[path] = value
    return leaves


# --- the matchers -----------------------------------------------------------------------------


class ExactMatcher:
    """Equal to the reference, after optional case folding and whitespace collapsing. An
    object reference is compared with the answer's parsed JSON instead."""

    def __init__(
        self,
        *,
        name: str | None = None,
        value: str | None = None,
        ignore_case: bool = False,
        normalize_whitespace: bool = False,
        threshold: float = 1.0,
    ) -> None:
        self.name = name or "exact"
        self.value = value
        self.ignore_case = ignore_case
        self.normalize_whitespace = normalize_whitespace
        self.threshold = threshold

    def _normal(self, text: str) -> str:
        if self.normalize_whitespace:
            text = " ".join(text.split())
        return text.casefold() if self.ignore_case else text

    def match(self, output: str, case: EvalCase) -> MatchResult:
        expected = self.value if self.value is not None else case.expected
        if expected is None:
            return MatchResult.failure(self.name, "no expected value")
        if not isinstance(expected, str):
            try:
                equal = extract_json(output) == expected
            except ValueError:
                return _verdict(self.name, 0.0, self.threshold, "output is not JSON")
            return _verdict(
                self.name, float(equal), self.threshold, "equal" if equal else "differs"
            )
        equal = self._normal(output) == self._normal(expected)
        detail = "equal" if equal else f"expected {_short(expected)!r}, got {_short(output)!r}"
        return _verdict(self.name, float(equal), self.threshold, detail)


class ContainsMatcher:
    """The answer contains the reference substring(s): ``mode="all"`` scores the share found
    (passes at ``threshold``, default all of them), ``mode="any"`` scores 1 if one is found."""

    def __init__(
        self,
        *,
        name: str | None = None,
        value: str | Sequence[str] | None = None,
        case_sensitive: bool = True,
        mode: Literal["all", "any"] = "all",
        threshold: float = 1.0,
    ) -> None:
        self.name = name or "contains"
        self.values = [value] if isinstance(value, str) else (list(value) if value else None)
        self.case_sensitive = case_sensitive
        self.mode = mode
        self.threshold = threshold

    def match(self, output: str, case: EvalCase) -> MatchResult:
        values = self.values
        if values is None:
            expected = case.expected
            if isinstance(expected, str):
                values = [expected]
            elif isinstance(expected, list) and all(isinstance(v, str) for v in expected):
                values = list(expected)
        if not values:
            return MatchResult.failure(self.name, "no substring to look for")
        haystack = output if self.case_sensitive else output.casefold()
        found = [v for v in values if (v if self.case_sensitive else v.casefold()) in haystack]
        missing = [v for v in values if v not in found]
        if self.mode == "any":
            score = 1.0 if found else 0.0
        else:
            score = len(found) / len(values)
        detail = f"found {len(found)}/{len(values)}"
        if missing:
            detail += "; missing " + ", ".join(repr(_short(v, 40)) for v in missing[:5])
        return _verdict(self.name, score, self.threshold, detail)


class RegexMatcher:
    """The answer matches a pattern (``search`` anywhere or ``fullmatch``); compiled once, and a
    pattern that does not compile is a :class:`MatcherConfigError` when the matcher is built."""

    def __init__(
        self,
        *,
        pattern: str,
        name: str | None = None,
        mode: Literal["search", "fullmatch"] = "search",
        ignore_case: bool = False,
        multiline: bool = False,
        dotall: bool = False,
        threshold: float = 1.0,
    ) -> None:
        self.name = name or "regex"
        flags = (
            (re.IGNORECASE if ignore_case else 0)
            | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0)
        )
        try:
            self.pattern = re.compile(pattern, flags)
        except re.error as error:
            raise MatcherConfigError(
                f"regex pattern {pattern!r} does not compile: {error}",
                matcher_type="regex",
                option="pattern",
            ) from error
        self.mode = mode
        self.threshold = threshold

    def match(self, output: str, case: EvalCase) -> MatchResult:
        finder = self.pattern.fullmatch if self.mode == "fullmatch" else self.pattern.search
        found = finder(output)
        detail = f"matched {_short(found.group(0), 60)!r}" if found else "no match"
        return _verdict(self.name, 1.0 if found else 0.0, self.threshold, detail)


class JsonStructureMatcher:
    """The answer is JSON (bare, fenced or embedded) with the required dotted keys and valid
    against a JSON Schema; the score is the share of checks passed (each key one check, the
    schema one), so a near miss scores above a non-answer."""

    def __init__(
        self,
        *,
        name: str | None = None,
        required_keys: Sequence[str] = (),
        json_schema: Mapping[str, Any] | None = None,
        threshold: float = 1.0,
    ) -> None:
        self.name = name or "json_structure"
        self.required_keys = list(required_keys)
        self.validator: jsonschema.protocols.Validator | None = None
        if json_schema is not None:
            validator_class = jsonschema.validators.validator_for(
                json_schema, default=jsonschema.Draft202012Validator
            )
            try:
                validator_class.check_schema(json_schema)
            except jsonschema.SchemaError as error:
                raise MatcherConfigError(
                    f"invalid JSON schema: {error.message}",
                    matcher_type="json_structure",
                    option="schema",
                ) from error
            self.validator = validator_class(json_schema)
        self.threshold = threshold

    def match(self, output: str, case: EvalCase) -> MatchResult:
        try:
            value = extract_json(output)
        except ValueError:
            return _verdict(self.name, 0.0, self.threshold, "output is not JSON")
        problems = [
            f"missing {key}" for key in self.required_keys if _lookup(value, key) is _MISSING
        ]
        checks = len(self.required_keys)
        if self.validator is not None:
            checks += 1
            error = best_match(self.validator.iter_errors(value))
            if error is not None:
                problems.append(f"schema: {error.json_path}: {_short(error.message)}")
        score = 1.0 if checks == 0 else (checks - len(problems)) / checks
        detail = "; ".join(problems) if problems else "valid"
        return _verdict(self.name, score, self.threshold, detail)


class FieldAccuracyMatcher:
    """The share of expected fields the answer's JSON gets right (nested objects flattened to
    dotted paths; numbers within ``tolerance``), with each wrong field named in ``detail`` so
    a reviewer sees *which* extraction failed."""

    def __init__(
        self,
        *,
        name: str | None = None,
        value: Mapping[str, Any] | None = None,
        tolerance: float = 0.0,
        ignore_case: bool = False,
        threshold: float = 1.0,
    ) -> None:
        self.name = name or "field_accuracy"
        self.value = value
        self.tolerance = tolerance
        self.ignore_case = ignore_case
        self.threshold = threshold

    def _equal(self, expected: Any, actual: Any) -> bool:
        if isinstance(expected, bool) or isinstance(actual, bool):  # True == 1 in Python
            return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
        if isinstance(expected, int | float) and isinstance(actual, int | float):
            return math.isclose(expected, actual, rel_tol=0.0, abs_tol=self.tolerance)
        if self.ignore_case and isinstance(expected, str) and isinstance(actual, str):
            return expected.strip().casefold() == actual.strip().casefold()
        return bool(expected == actual)

    def match(self, output: str, case: EvalCase) -> MatchResult:
        expected = self.value if self.value is not None else case.expected
        if not isinstance(expected, Mapping) or not expected:
            return MatchResult.failure(self.name, "field_accuracy needs an expected object")
        try:
            actual = extract_json(output)
        except ValueError:
            return _verdict(self.name, 0.0, self.threshold, "output is not JSON")
        leaves = _leaves(expected)
        notes: list[str] = []
        right = 0
        for path, want in leaves.items():
            got = _lookup(actual, path)
            if got is _MISSING:
                notes.append(f"{path}: missing")
            elif self._equal(want, got):
                right += 1
            else:
                notes.append(
                    f"{path}: expected {_short(repr(want), 40)}, got {_short(repr(got), 40)}"
                )
        detail = f"{right}/{len(leaves)} fields" + ("; " + "; ".join(notes) if notes else "")
        return _verdict(self.name, right / len(leaves), self.threshold, detail)


class SemanticSimilarityMatcher:
    """Cosine similarity of the answer's and the reference's embeddings (negative clipped to
    0). The embedder is injected: the worker passes the cache's model, tests a fake."""

    def __init__(
        self,
        *,
        embed: Embedder,
        name: str | None = None,
        value: str | None = None,
        threshold: float = 0.8,
    ) -> None:
        self.name = name or "semantic_similarity"
        self.embed = embed
        self.value = value
        self.threshold = threshold

    def match(self, output: str, case: EvalCase) -> MatchResult:
        expected = self.value if self.value is not None else case.expected
        if not isinstance(expected, str):
            return MatchResult.failure(self.name, "semantic_similarity needs an expected string")
        try:
            vectors = np.asarray(self.embed([output, expected]), dtype=np.float64)
        except Exception as error:  # one case's embedding failure must not end the run
            return MatchResult.failure(self.name, f"embedding failed: {error}")
        if vectors.ndim != 2 or vectors.shape[0] != 2 or not np.all(np.isfinite(vectors)):
            return MatchResult.failure(self.name, f"embedder returned shape {vectors.shape}")
        norms = np.linalg.norm(vectors, axis=1)
        if np.any(norms == 0):
            return MatchResult.failure(self.name, "zero embedding vector")
        cosine = float(vectors[0] @ vectors[1] / (norms[0] * norms[1]))
        return _verdict(self.name, max(0.0, cosine), self.threshold, f"cosine {cosine:.3f}")


# --- the registry -----------------------------------------------------------------------------

Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str | None = None


class _ExactConfig(_Config):
    type: Literal["exact"]
    value: str | None = None
    ignore_case: bool = False
    normalize_whitespace: bool = False
    threshold: Unit = 1.0


class _ContainsConfig(_Config):
    type: Literal["contains"]
    value: str | list[str] | None = None
    case_sensitive: bool = True
    mode: Literal["all", "any"] = "all"
    threshold: Unit = 1.0


class _RegexConfig(_Config):
    type: Literal["regex"]
    pattern: str
    mode: Literal["search", "fullmatch"] = "search"
    ignore_case: bool = False
    multiline: bool = False
    dotall: bool = False
    threshold: Unit = 1.0


class _JsonStructureConfig(_Config):
    type: Literal["json_structure"]
    required_keys: list[str] = Field(default_factory=list)
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    threshold: Unit = 1.0


class _FieldAccuracyConfig(_Config):
    type: Literal["field_accuracy"]
    value: dict[str, Any] | None = None
    tolerance: float = Field(default=0.0, ge=0.0)
    ignore_case: bool = False
    threshold: Unit = 1.0


class _SemanticConfig(_Config):
    type: Literal["semantic_similarity"]
    value: str | None = None
    threshold: Unit = 0.8


class _JudgeConfig(_Config):
    type: Literal["llm_judge"]
    criteria: list[str] = Field(min_length=1)
    scale_min: int = 1
    scale_max: int = 5
    model: str | None = None
    instructions: str | None = None
    threshold: Unit = 0.75


_CONFIG = TypeAdapter(
    Annotated[
        _ExactConfig
        | _ContainsConfig
        | _RegexConfig
        | _JsonStructureConfig
        | _FieldAccuracyConfig
        | _SemanticConfig
        | _JudgeConfig,
        Field(discriminator="type"),
    ]
)

MATCHER_TYPES = (
    "exact",
    "contains",
    "regex",
    "json_structure",
    "field_accuracy",
    "semantic_similarity",
    "llm_judge",
)


def _parse_config(config: Mapping[str, Any]) -> _Config:
    matcher_type = config.get("type")
    if matcher_type not in MATCHER_TYPES:
        raise MatcherConfigError(
            f"unknown matcher type {matcher_type!r}; known: {', '.join(MATCHER_TYPES)}",
            matcher_type=str(matcher_type),
            option="type",
        )
    try:
        return _CONFIG.validate_python(dict(config))
    except ValidationError as error:
        first = error.errors()[0]
        option = ".".join(str(part) for part in first["loc"][1:]) or None
        raise MatcherConfigError(
            f"{matcher_type}: {option or 'config'}: {first['msg']}",
            matcher_type=str(matcher_type),
            option=option,
        ) from error


def build_matcher(
    config: Mapping[str, Any], *, embed: Embedder | None = None
) -> Matcher | DeferredMatcher:
    """A matcher from its config dict; :class:`MatcherConfigError` on an unknown type, an
    unknown or ill-typed option, a pattern or schema that does not compile, or a
    ``semantic_similarity`` without an ``embed`` function."""
    parsed = _parse_config(config)
    options = parsed.model_dump(exclude={"type"})
    if isinstance(parsed, _ExactConfig):
        return ExactMatcher(**options)
    if isinstance(parsed, _ContainsConfig):
        return ContainsMatcher(**options)
    if isinstance(parsed, _RegexConfig):
        return RegexMatcher(**options)
    if isinstance(parsed, _JsonStructureConfig):
        return JsonStructureMatcher(**options)
    if isinstance(parsed, _FieldAccuracyConfig):
        return FieldAccuracyMatcher(**options)
    if isinstance(parsed, _SemanticConfig):
        if embed is None:
            raise MatcherConfigError(
                "semantic_similarity needs an embedder",
                matcher_type="semantic_similarity",
                option="embed",
            )
        return SemanticSimilarityMatcher(embed=embed, **options)
    # eval_judge imports MatchResult from here, so the judge is imported when first asked for.
    from sluicegate.processors.eval_judge import JudgeMatcher

    return JudgeMatcher(**options)


def build_matchers(
    configs: Sequence[Mapping[str, Any]], *, embed: Embedder | None = None
) -> list[Matcher | DeferredMatcher]:
    """Matchers for a case; two with the same metric name would overwrite each other's
    results downstream, so that is a config error too."""
    matchers = [build_matcher(config, embed=embed) for config in configs]
    names = [matcher.name for matcher in matchers]
    for name in names:
        if names.count(name) > 1:
            raise MatcherConfigError(f"two matchers named {name!r}; give one a name", option="name")
    return matchers


def _unused_embedder(texts: list[str]) -> np.ndarray:
    raise AssertionError("validation never embeds")


def validate_matcher_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`MatcherConfigError` if ``config`` would not build (no model is called)."""
    build_matcher(config, embed=_unused_embedder)
