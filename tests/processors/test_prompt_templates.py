"""Prompt templates: declarations, value validation, publish-time checks and the sandbox."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.processors.prompt_templates import (
    MAX_OUTPUT_CHARS,
    PromptInvalidError,
    PromptRenderError,
    PromptVariableError,
    VariableSpec,
    check_template,
    parse_messages,
    parse_variables,
    render_template,
    validate_values,
    variables_json,
)

pytestmark = pytest.mark.unit

DECLARED = parse_variables(
    {
        "question": {"type": "string", "description": "what the user asks"},
        "tone": {"type": "string", "default": "friendly", "enum": ["friendly", "formal"]},
        "n": {"type": "integer", "required": False},
        "score": "number",
        "tags": {"type": "array", "default": []},
    }
)


# -- declarations --------------------------------------------------------------------------------


def test_declarations_parse_with_shorthand_and_defaults() -> None:
    assert DECLARED["score"] == VariableSpec("score", "number")
    assert DECLARED["question"].required and not DECLARED["tone"].required  # a default: optional
    assert DECLARED["n"].required is False and DECLARED["tone"].enum == ("friendly", "formal")
    assert parse_variables(None) == {}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"x": {"type": "text"}}, "type must be one of"),
        ({"1x": "string"}, "not a variable name"),
        ({"x": {"type": "integer", "default": "3"}}, "default: expected integer"),
        ({"x": {"enum": ["a", 3]}}, "not of type string"),
        ({"x": {"enum": ["a"], "default": "b"}}, "not one of the enum"),
        ({"x": {"format": "email"}}, "unknown keys"),
        ({"x": {"required": "yes"}}, "`required` must be true or false"),
    ],
)
def test_bad_declarations_are_refused_with_the_reason(raw: dict, fragment: str) -> None:
    with pytest.raises(PromptInvalidError, match=fragment) as caught:
        parse_variables(raw)
    assert caught.value.code == "prompt_invalid" and caught.value.http_status == 422


def test_variables_json_is_canonical() -> None:
    again = parse_variables({k: DECLARED[k].to_json() for k in reversed(list(DECLARED))})
    assert variables_json(again) == variables_json(DECLARED)
    assert variables_json({}) is None


# -- values --------------------------------------------------------------------------------------


def test_values_get_defaults_and_optional_ones_stay_absent() -> None:
    values = validate_values(DECLARED, {"question": "Why?", "score": 2})
    assert values == {"question": "Why?", "score": 2, "tone": "friendly", "tags": []}


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(PromptVariableError) as caught:
        validate_values(DECLARED, {"tone": "rude", "n": True, "score": "high", "extra": 1})
    problems = {p.name: p.reason for p in caught.value.problems}
    assert set(problems) == {"question", "tone", "n", "score", "extra"}
    assert "missing" in problems["question"] and "one of" in problems["tone"]
    assert problems["n"] == "expected integer, got boolean"  # bool is not a number here
    assert problems["extra"] == "not declared by the prompt"
    assert caught.value.code == "prompt_variables_invalid" and caught.value.http_status == 400


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text()))
def test_a_number_accepts_ints_and_floats_only(value: object) -> None:
    spec = {"x": VariableSpec("x", "number")}
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        assert validate_values(spec, {"x": value}) == {"x": value}
    else:
        with pytest.raises(PromptVariableError):
            validate_values(spec, {"x": value})


# -- publish-time checks ------------------------------------------------------------------------


def test_a_template_may_only_use_declared_variables() -> None:
    used = check_template(
        "{{ question }} {% for t in tags %}{{ t }}{% endfor %}", DECLARED, where="t"
    )
    assert used == {"question", "tags"}
    with pytest.raises(PromptInvalidError, match=r"undeclared variables \['city'\]"):
        check_template("{{ question }} in {{ city }}", DECLARED, where="template")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("Hello {{ question }", "syntax error on line 1"),
        ("{% if question %}", "syntax error"),
        ("{% include 'other' %}", "`include` is not allowed"),
        ("{% extends 'base' %}", "`extends` is not allowed"),
        ("{% import 'm' as m %}", "`import` is not allowed"),
        ("{{ question.__class__.__mro__ }}", "attribute `__mro__` is not allowed"),
        (
            "{% for a in tags %}{% for b in tags %}{% for c in tags %}{% for d in tags %}"
            "{% endfor %}{% endfor %}{% endfor %}{% endfor %}",
            "loops nest deeper",
        ),
        ("x" * 70_000, "longer than"),
    ],
)
def test_bad_templates_are_refused_at_publish(source: str, fragment: str) -> None:
    with pytest.raises(PromptInvalidError, match=fragment):
        check_template(source, DECLARED, where="template")


# -- rendering -----------------------------------------------------------------------------------


def test_renders_without_escaping_and_strictly() -> None:
    values = validate_values(DECLARED, {"question": "<b>why</b> & how", "score": 1})
    text = render_template(
        "Q: {{ question }} ({{ tone }}){% if n is defined %}{{ n }}{% endif %}", values
    )
    assert text == "Q: <b>why</b> & how (friendly)"


def test_an_optional_variable_used_unguarded_is_a_variable_error() -> None:
    with pytest.raises(PromptVariableError, match="'n' is undefined"):
        render_template("{{ n }}", {})


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ x.append(1) }}",
        "{{ 'a' * 1000000000 }}",
        "{{ 2 ** 100000 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    ],
)
def test_sandbox_escapes_and_bombs_are_refused(source: str) -> None:
    with pytest.raises(PromptRenderError) as caught:
        render_template(source, {"x": []})
    assert caught.value.code == "prompt_unsafe"


def test_output_is_capped() -> None:
    with pytest.raises(PromptRenderError) as caught:
        render_template("{% for i in range(300) %}{{ 'x' * 999 }}{% endfor %}", {})
    assert caught.value.code == "prompt_too_large"
    assert len(render_template("{{ 'x' * 99 }}", {}, max_chars=100)) == 99
    assert MAX_OUTPUT_CHARS >= 100_000


def test_the_range_budget_is_per_render() -> None:
    source = "{% for i in range(60000) %}{% endfor %}ok"
    assert render_template(source, {}) == "ok"
    assert render_template(source, {}) == "ok"  # the first render's steps are not carried over


def test_chat_messages_parse_and_refuse_bad_entries() -> None:
    parts = parse_messages(
        [{"role": "system", "template": "Be {{ tone }}."}, {"include": "persona@prod"}]
    )
    assert parts[0].role == "system" and parts[1].include == "persona@prod"
    for bad in (None, [], [{"role": "tool", "template": "x"}], [{"include": "a", "role": "user"}]):
        with pytest.raises(PromptInvalidError):
            parse_messages(bad)
