"""Matchers: each type on hits, misses and near misses; the registry's config errors."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.errors import ConfigurationError
from sluicegate.processors.eval_datasets import CaseInput, EvalCase
from sluicegate.processors.eval_judge import JudgeMatcher
from sluicegate.processors.eval_matchers import (
    DeferredMatcher,
    Matcher,
    MatcherConfigError,
    MatchResult,
    SemanticSimilarityMatcher,
    build_matcher,
    build_matchers,
    extract_json,
)

pytestmark = pytest.mark.unit


def _case(expected: object = None) -> EvalCase:
    return EvalCase(
        id="c", input=CaseInput(messages=[{"role": "user", "content": "q"}]), expected=expected
    )


def fake_embed(texts: list[str]) -> np.ndarray:
    """Bag of words hashed into 64 dimensions: shared words → similar vectors, no model."""
    vectors = np.zeros((len(texts), 64))
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            vectors[row, hashlib.sha256(word.encode()).digest()[0] % 64] += 1.0
    return vectors


# --- result type ------------------------------------------------------------------------------


def test_match_result_refuses_scores_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError):
        MatchResult("m", 1.5, True, "")
    with pytest.raises(ValueError):
        MatchResult("m", float("nan"), False, "")
    failure = MatchResult.failure("m", "why")
    assert (failure.score, failure.passed, failure.error) == (0.0, False, True)


# --- exact ------------------------------------------------------------------------------------


def test_exact_with_and_without_normalisation() -> None:
    strict = build_matcher({"type": "exact"})
    loose = build_matcher({"type": "exact", "ignore_case": True, "normalize_whitespace": True})
    case = _case("The  answer\nis Paris")
    assert not strict.match("the answer is paris", case).passed
    assert loose.match("the answer   is PARIS ", case).passed
    assert strict.match("The  answer\nis Paris", case).score == 1.0


def test_exact_on_an_object_compares_parsed_json() -> None:
    matcher = build_matcher({"type": "exact"})
    assert matcher.match('```json\n{"a": 1}\n```', _case({"a": 1})).passed
    assert not matcher.match('{"a": 2}', _case({"a": 1})).passed
    assert matcher.match("no json", _case({"a": 1})).detail == "output is not JSON"
    assert matcher.match("x", _case(None)).error


# --- contains ---------------------------------------------------------------------------------


def test_contains_all_scores_the_share_found_and_any_passes_on_one() -> None:
    case = _case()
    every = build_matcher({"type": "contains", "value": ["red", "green", "blue"]})
    result = every.match("red and blue", case)
    assert result.score == pytest.approx(2 / 3)
    assert not result.passed and "'green'" in result.detail
    partial = build_matcher(
        {"type": "contains", "value": ["red", "green", "blue"], "threshold": 0.6}
    )
    assert partial.match("red and blue", case).passed
    anyone = build_matcher({"type": "contains", "value": ["red", "green"], "mode": "any"})
    assert anyone.match("only green", case).score == 1.0
    assert not anyone.match("nothing", case).passed


def test_contains_case_sensitivity_and_the_case_expected() -> None:
    sensitive = build_matcher({"type": "contains"})
    insensitive = build_matcher({"type": "contains", "case_sensitive": False})
    case = _case("Paris")
    assert not sensitive.match("it is paris", case).passed
    assert insensitive.match("it is PARIS", case).passed
    assert sensitive.match("x", _case({"a": 1})).error


@given(st.text(), st.text(), st.text())
def test_contains_finds_any_embedded_substring(prefix: str, needle: str, suffix: str) -> None:
    matcher = build_matcher({"type": "contains", "value": needle or "x"})
    assert matcher.match(prefix + (needle or "x") + suffix, _case()).passed


# --- regex ------------------------------------------------------------------------------------


def test_regex_search_and_fullmatch() -> None:
    search = build_matcher({"type": "regex", "pattern": r"\d{3}"})
    full = build_matcher({"type": "regex", "pattern": r"\d{3}", "mode": "fullmatch"})
    assert search.match("code 123 ok", _case()).passed
    assert not full.match("code 123 ok", _case()).passed
    assert full.match("123", _case()).passed
    insensitive = build_matcher(
        {"type": "regex", "pattern": "^yes$", "ignore_case": True, "multiline": True}
    )
    assert insensitive.match("well\nYES\n", _case()).passed


def test_a_bad_pattern_fails_when_built() -> None:
    with pytest.raises(MatcherConfigError) as caught:
        build_matcher({"type": "regex", "pattern": "(unclosed"})
    assert caught.value.option == "pattern" and caught.value.matcher_type == "regex"
    assert isinstance(caught.value, ConfigurationError)


# --- json_structure ---------------------------------------------------------------------------


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def test_json_structure_reads_fenced_and_embedded_json() -> None:
    matcher = build_matcher(
        {"type": "json_structure", "required_keys": ["user.name", "items.0.id"]}
    )
    fenced = 'Sure:\n```json\n{"user": {"name": "A"}, "items": [{"id": 1}]}\n```\nDone.'
    assert matcher.match(fenced, _case()).passed
    embedded = 'The result is {"user": {"name": "A"}, "items": []} as asked.'
    result = matcher.match(embedded, _case())
    assert result.score == 0.5 and "missing items.0.id" in result.detail
    assert matcher.match("no json here", _case()).score == 0.0


def test_json_structure_with_a_schema() -> None:
    matcher = build_matcher({"type": "json_structure", "schema": SCHEMA})
    assert matcher.match('{"name": "A", "age": 3}', _case()).passed
    bad = matcher.match('{"name": "A", "age": -1}', _case())
    assert not bad.passed and "$.age" in bad.detail
    both = build_matcher({"type": "json_structure", "schema": SCHEMA, "required_keys": ["name"]})
    assert both.match('{"name": "A", "age": -1}', _case()).score == 0.5


def test_an_invalid_schema_fails_when_built() -> None:
    with pytest.raises(MatcherConfigError) as caught:
        build_matcher({"type": "json_structure", "schema": {"type": "no-such-type"}})
    assert caught.value.option == "schema"


def test_extract_json_prefers_the_whole_text_then_fences_then_embedded() -> None:
    assert extract_json(" [1, 2] ") == [1, 2]
    assert extract_json('```\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('x {broken then {"b": 2} y') == {"b": 2}
    with pytest.raises(ValueError):
        extract_json("nothing")


# --- field_accuracy ---------------------------------------------------------------------------


def test_field_accuracy_scores_each_field_and_names_the_wrong_ones() -> None:
    expected = {"number": 42, "total": 10.5, "buyer": {"name": "Ada", "country": "UK"}}
    matcher = build_matcher({"type": "field_accuracy", "tolerance": 0.01})
    output = '{"number": 42, "total": 10.499, "buyer": {"name": "Ada", "country": "FR"}}'
    result = matcher.match(output, _case(expected))
    assert result.score == 0.75
    assert "buyer.country: expected 'UK', got 'FR'" in result.detail
    assert "3/4 fields" in result.detail
    missing = matcher.match('{"number": 42}', _case(expected))
    assert missing.score == 0.25 and "total: missing" in missing.detail
    strict = build_matcher({"type": "field_accuracy"})
    assert strict.match(output, _case(expected)).score == 0.5
    assert strict.match("{}", _case("not an object")).error
    assert strict.match('{"flag": 1}', _case({"flag": True})).score == 0.0  # bool is not 1


def test_field_accuracy_ignore_case_and_value_from_config() -> None:
    matcher = build_matcher(
        {"type": "field_accuracy", "value": {"city": "Paris"}, "ignore_case": True}
    )
    assert matcher.match('{"city": " paris"}', _case()).passed


# --- semantic_similarity ----------------------------------------------------------------------


def test_semantic_similarity_with_a_fake_embedder() -> None:
    matcher = build_matcher({"type": "semantic_similarity", "threshold": 0.7}, embed=fake_embed)
    case = _case("the capital of france is paris")
    close = matcher.match("paris is the capital of france", case)
    far = matcher.match("bananas grow on trees in summer", case)
    assert close.score == pytest.approx(1.0) and close.passed
    assert far.score < 0.5 and not far.passed
    assert "cosine" in close.detail


def test_semantic_similarity_failures_are_results_not_exceptions() -> None:
    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("model gone")

    case = _case("x")
    assert SemanticSimilarityMatcher(embed=broken).match("y", case).error
    zero = SemanticSimilarityMatcher(embed=lambda texts: np.zeros((2, 3)))
    assert "zero" in zero.match("y", case).detail
    wrong = SemanticSimilarityMatcher(embed=lambda texts: np.ones(3))
    assert wrong.match("y", case).error
    assert SemanticSimilarityMatcher(embed=fake_embed).match("y", _case({"a": 1})).error


def test_semantic_similarity_without_an_embedder_is_a_config_error() -> None:
    with pytest.raises(MatcherConfigError, match="embedder"):
        build_matcher({"type": "semantic_similarity"})


# --- registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"type": "telepathy"}, "type"),
        ({}, "type"),
        ({"type": "contains", "casesensitive": True}, "casesensitive"),
        ({"type": "contains", "threshold": 1.5}, "threshold"),
        ({"type": "contains", "mode": "most"}, "mode"),
        ({"type": "regex"}, "pattern"),
        ({"type": "llm_judge", "criteria": []}, "criteria"),
        ({"type": "llm_judge", "criteria": ["x"], "scale_min": 5, "scale_max": 1}, "scale_max"),
        ({"type": "field_accuracy", "tolerance": -1}, "tolerance"),
    ],
)
def test_registry_errors_name_the_option(config: dict[str, object], option: str) -> None:
    with pytest.raises(MatcherConfigError) as caught:
        build_matcher(config, embed=fake_embed)
    assert caught.value.option == option


def test_registry_builds_both_shapes_and_names_metrics() -> None:
    matchers = build_matchers(
        [
            {"type": "exact"},
            {"type": "contains", "name": "mentions_paris", "value": "Paris"},
            {"type": "semantic_similarity"},
            {"type": "llm_judge", "criteria": ["correct"], "model": "judge-large"},
        ],
        embed=fake_embed,
    )
    assert [m.name for m in matchers] == [
        "exact",
        "mentions_paris",
        "semantic_similarity",
        "llm_judge",
    ]
    assert all(isinstance(m, Matcher) for m in matchers[:3])
    judge = matchers[3]
    assert isinstance(judge, JudgeMatcher) and isinstance(judge, DeferredMatcher)
    assert judge.model == "judge-large"
    with pytest.raises(MatcherConfigError, match="two matchers named"):
        build_matchers([{"type": "exact"}, {"type": "exact"}])
