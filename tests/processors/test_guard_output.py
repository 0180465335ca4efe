"""The output guard: PII leaking into answers, banned topics, structured output, and the trace."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from sluicegate.processors.guard_output import OutputContext, OutputGuard, check_json
from sluicegate.processors.guard_topics import TopicMatcher
from sluicegate.processors.policy import Principal
from sluicegate.schemas.models import ChatMessage, SamplingParams
from sluicegate.settings import BannedTopic, GuardrailsSettings
from tests.builders import task

pytestmark = pytest.mark.unit

CARD = "4242 4242 4242 4242"
USER_SCHEMA = {
    "type": "object",
    "required": ["user"],
    "properties": {
        "user": {
            "type": "object",
            "required": ["id", "address"],
            "properties": {
                "id": {"type": "integer"},
                "address": {
                    "type": "object",
                    "required": ["city", "zip"],
                    "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                },
            },
        }
    },
}
VALID_USER = {"user": {"id": 7, "address": {"city": "Oslo", "zip": "0150"}}}
WEAPONS = BannedTopic(
    name="weapons",
    keywords=["pipe bomb", "detonator", "bomb*", "rapist"],
    patterns=[r"\bhow to (?:make|build) an? (?:explosive|firearm)\b"],
)


def guard(**settings: Any) -> OutputGuard:
    return OutputGuard(settings=GuardrailsSettings(**settings))


def answer(text: str | None = None, tool_calls: list[dict[str, Any]] | None = None) -> ChatMessage:
    calls = json.dumps(tool_calls) if tool_calls is not None else None
    return ChatMessage(role="assistant", content=text, tool_calls_json=calls)


def context(response_format: dict[str, Any] | None = None, tenant: str = "acme") -> OutputContext:
    fmt = json.dumps(response_format) if response_format is not None else None
    return OutputContext(tenant_id=tenant, model="chat", response_format_json=fmt)


def schema_format(schema: dict[str, Any] = USER_SCHEMA) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "user", "schema": schema}}


# ----------------------------------------------------------------------------- PII leakage


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("mask", "Card [CREDIT_CARD ****4242], mail [EMAIL @example.com]."),
        ("redact", "Card [CREDIT_CARD], mail [EMAIL]."),
    ],
)
def test_pii_in_an_answer_is_rewritten_and_the_span_names_kinds_and_rule(
    action: str, expected: str
) -> None:
    decision = guard(output_pii_action=action).check(
        answer(f"Card {CARD}, mail jane.doe@example.com."), context()
    )
    assert decision.message.content == expected
    assert decision.block is None and decision.rewritten
    assert decision.rule == "settings.output_pii"
    assert decision.attributes["output_pii"] == "credit_card:1,email:1"
    assert decision.attributes["policy_action"] == action
    assert decision.attributes["policy_reason"] == "pii credit_card:1,email:1"


def test_blocking_pii_in_an_answer_is_a_502_naming_kinds_never_values() -> None:
    decision = guard(output_pii_action="block").check(answer(f"Card {CARD}"), context())
    assert decision.block is not None
    assert (decision.block.http_status, decision.block.code) == (502, "output_pii_detected")
    assert decision.block.error_type == "upstream_error"
    assert "credit_card" in decision.block.message and "4242" not in decision.block.message


def test_an_answer_without_pii_passes_untouched_by_the_default_rule() -> None:
    text = "Order 2024-1187 ships on 12.03 for 19.99 EUR; call the desk at extension 42."
    decision = guard(output_pii_action="block").check(answer(text), context())
    assert decision.message.content == text
    assert decision.block is None and not decision.rewritten
    assert (decision.rule, decision.policy.action) == ("default", "allow")
    assert "output_pii" not in decision.attributes


def test_output_pii_kinds_limit_what_is_looked_for() -> None:
    text = f"mail a@b.io, card {CARD}"
    decision = guard(output_pii_action="redact", output_pii_kinds=["email"]).check(
        answer(text), context()
    )
    assert decision.message.content == f"mail [EMAIL], card {CARD}"


def test_pii_in_tool_call_arguments_is_masked_and_the_arguments_still_parse() -> None:
    calls = [
        {
            "id": "c1",
            "type": "function",
            "function": {
                "name": "send_mail",
                "arguments": json.dumps({"to": "bob@example.com\nbcc", "count": 2}),
            },
        },
        {"id": "c2", "type": "function", "function": {"name": "noop", "arguments": "{}"}},
    ]
    decision = guard(output_pii_action="mask").check(answer(None, calls), context())
    rewritten = json.loads(decision.message.tool_calls_json or "")
    arguments = json.loads(rewritten[0]["function"]["arguments"])
    assert arguments == {"to": "[EMAIL @example.com]\nbcc", "count": 2}
    assert rewritten[1] == calls[1]  # untouched calls keep their exact arguments text
    assert decision.message.content is None


# ----------------------------------------------------------------------------- banned topics


def test_a_banned_topic_blocks_and_explains_topic_and_terms() -> None:
    decision = guard(banned_topics=[WEAPONS]).check(
        answer("Wire the detonator to the pipe bomb."), context()
    )
    assert decision.block is not None and decision.block.code == "banned_topic"
    assert "weapons" in decision.block.message
    assert decision.attributes["topics"] == "weapons"
    assert decision.attributes["topic_terms"] == "weapons (2>=1: detonator, pipe bomb)"
    assert decision.rule == "settings.topics"


@pytest.mark.parametrize(
    "text",
    [
        "My therapist helped me a lot.",  # "rapist" inside a word
        "Therapists and grapists",
        "A detonatorless design.",  # an exact keyword inside a longer word
        "Fix the pipe fitting, then the bathroom.",  # half of a phrase
        "How to build a firewall",  # the pattern's near miss
    ],
)
def test_near_misses_do_not_match(text: str) -> None:
    matcher = TopicMatcher([WEAPONS])
    assert matcher.match(text) == ()


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("Ask the rapist.", ("rapist",)),
        ("a PIPE-BOMB", ("pipe bomb",)),
        ("pipe   bomb", ("pipe bomb",)),
        ("bombs and bombers", ("bomb*",)),
        (
            "How to build a firearm at home",
            (r"/\bhow to (?:make|build) an? (?:explosive|firearm)\b/",),
        ),
        ("Le DÉTONATOR", ("detonator",)),  # accents folded
        ("\uff44\uff45\uff54\uff4f\uff4e\uff41\uff54\uff4f\uff52", ("detonator",)),  # full width
    ],
)
def test_keywords_phrases_wildcards_and_patterns_match_normalized_text(
    text: str, terms: tuple[str, ...]
) -> None:
    (match,) = TopicMatcher([WEAPONS]).match(text)
    assert match.terms == terms


def test_wildcards_are_opt_in() -> None:
    matcher = TopicMatcher([BannedTopic(name="t", keywords=["bomb*", "gun"])])
    assert matcher.match("Bombastic!")[0].terms == ("bomb*",)  # the author asked for bomb*
    assert matcher.match("a gunner") == ()  # "gun" has no star
    assert matcher.match("a gun.")[0].terms == ("gun",)


def test_a_shorter_keyword_is_found_when_a_longer_phrase_fails_at_its_end() -> None:
    matcher = TopicMatcher([BannedTopic(name="t", keywords=["pipe bomb", "pipe"])])
    assert matcher.match("pipe bombers")[0].terms == ("pipe",)


def test_weights_and_threshold_ask_for_more_than_one_weak_term() -> None:
    gambling = BannedTopic(
        name="gambling", keywords={"casino": 2, "bet": 1, "odds": 1}, threshold=2
    )
    matcher = TopicMatcher([gambling])
    assert matcher.match("What are the odds of rain?") == ()
    assert matcher.match("I bet the odds are good")[0].score == 2
    assert matcher.match("odds, odds, odds") == ()  # repeats add nothing
    assert matcher.match("the casino")[0].terms == ("casino",)


def test_tenant_scoped_topics_only_fire_for_their_tenants() -> None:
    crypto = BannedTopic(name="crypto", keywords=["bitcoin"], tenants=["bank"])
    g = guard(banned_topics=[crypto, WEAPONS])
    assert g.check(answer("Buy bitcoin now"), context(tenant="bank")).block is not None
    assert g.check(answer("Buy bitcoin now"), context(tenant="acme")).block is None
    assert g.check(answer("a detonator"), context(tenant="bank")).block is not None


def test_topic_flag_records_without_blocking() -> None:
    decision = guard(banned_topics=[WEAPONS], topic_action="flag").check(
        answer("a detonator"), context()
    )
    assert decision.block is None
    assert decision.policy.action == "flag"
    assert decision.attributes["policy_flags"] == "settings.topics"


def test_bad_topic_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="neither keywords nor patterns"):
        BannedTopic(name="empty")
    with pytest.raises(ValueError, match="bad pattern"):
        BannedTopic(name="t", patterns=["(unclosed"])
    with pytest.raises(ValueError, match="unique"):
        TopicMatcher([WEAPONS, WEAPONS])


# ----------------------------------------------------------------------------- structured output


def test_a_valid_answer_validates_against_a_schema_with_nested_required_keys() -> None:
    check = check_json(json.dumps(VALID_USER), json.dumps(schema_format()))
    assert check is not None and check.valid and check.error is None
    assert check.schema_name == "user"


def test_a_missing_nested_key_names_the_path_and_the_key() -> None:
    broken = {"user": {"id": 7, "address": {"city": "Oslo"}}}
    check = check_json(json.dumps(broken), json.dumps(schema_format()))
    assert check is not None and not check.valid
    assert check.error == "$.user.address: 'zip' is a required property"


def test_a_wrong_type_deep_inside_is_reported_without_echoing_pii() -> None:
    bad = {"user": {"id": "jane.doe@example.com", "address": {"city": "Oslo", "zip": "1"}}}
    check = check_json(json.dumps(bad), json.dumps(schema_format()))
    assert check is not None and check.error is not None
    assert check.error.startswith("$.user.id: ")
    assert "jane.doe" not in check.error and "[EMAIL]" in check.error


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Sure! Here it is: {}", "not valid JSON"),
        ("```json\n{}\n```", "code fence"),
        ("[1, 2]", "expected a JSON object, got an array"),
    ],
)
def test_json_object_mode_wants_one_json_object(text: str, fragment: str) -> None:
    check = check_json(text, json.dumps({"type": "json_object"}))
    assert check is not None and not check.valid
    assert fragment in (check.error or "")


def test_a_cut_short_answer_says_so() -> None:
    check = check_json('{"user": {"id"', json.dumps(schema_format()), finish_reason="length")
    assert check is not None and "finish_reason=length" in (check.error or "")


RICH_SCHEMA = {
    "$defs": {"tag": {"type": "string", "pattern": "^[a-z]+$"}},
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "tags", "score"],
    "properties": {
        "kind": {"enum": ["a", "b"]},
        "tags": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/tag"}},
        "score": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
        "mail": {"type": "string", "format": "email"},
    },
}


@pytest.mark.parametrize(
    "document",
    [
        {"kind": "a", "tags": ["x"], "score": 3},
        {"kind": "a", "tags": ["x"], "score": None, "mail": "not-an-email"},  # format: annotation
        {"kind": "c", "tags": ["x"], "score": 3},
        {"kind": "a", "tags": [], "score": 3},
        {"kind": "a", "tags": ["X1"], "score": 3},
        {"kind": "a", "tags": ["x"], "score": -1},
        {"kind": "a", "tags": ["x"], "score": 3, "extra": True},
        {"kind": "a", "tags": ["x"]},
    ],
)
def test_the_verdict_is_jsonschemas_whichever_validator_answers(document: dict[str, Any]) -> None:
    check = check_json(json.dumps(document), json.dumps(schema_format(RICH_SCHEMA)))
    expected = jsonschema.Draft202012Validator(RICH_SCHEMA).is_valid(document)
    assert check is not None and check.valid is expected


def test_no_response_format_or_text_format_is_not_checked() -> None:
    assert check_json("anything", None) is None
    assert check_json("anything", json.dumps({"type": "text"})) is None


def test_an_invalid_schema_is_the_requests_fault_and_skips_the_check() -> None:
    with pytest.raises(ValueError, match="schema is invalid"):
        check_json("{}", json.dumps(schema_format({"type": "no-such-type"})))
    decision = guard(json_schema_action="block").check(
        answer("{}"), context(schema_format({"type": "no-such-type"}))
    )
    assert decision.block is None
    assert decision.attributes["json_check"].startswith("skipped: ")


def test_invalid_structured_output_is_flagged_by_default_and_blocked_when_asked() -> None:
    bad = json.dumps({"user": {"id": 7}})
    flagged = guard().check(answer(bad), context(schema_format()))
    assert flagged.block is None and flagged.policy.action == "flag"
    assert flagged.attributes["json_valid"] == "false"
    assert flagged.attributes["json_error"] == "$.user: 'address' is a required property"
    blocked = guard(json_schema_action="block").check(answer(bad), context(schema_format()))
    assert blocked.block is not None
    assert (blocked.block.http_status, blocked.block.code) == (502, "invalid_json_output")
    assert "$.user: 'address' is a required property" in blocked.block.message
    good = guard(json_schema_action="block").check(
        answer(json.dumps(VALID_USER)), context(schema_format())
    )
    assert good.block is None and good.attributes["json_valid"] == "true"


def test_answers_that_call_tools_are_not_held_to_the_response_format() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    decision = guard(json_schema_action="block").check(
        answer(None, calls), context(schema_format())
    )
    assert decision.block is None and "json_valid" not in decision.attributes


# ----------------------------------------------------------------------------- wiring


def test_the_context_comes_from_the_task() -> None:
    fmt = json.dumps({"type": "json_object"})
    t = task().model_copy(update={"params": SamplingParams(response_format_json=fmt)})
    ctx = OutputContext.of(t, Principal(tenant="acme", roles=frozenset({"viewer"})))
    assert (ctx.tenant_id, ctx.model, ctx.response_format_json) == ("acme", t.model, fmt)
    assert ctx.principal is not None and ctx.principal.roles == {"viewer"}


def test_a_guard_with_nothing_to_do_says_so() -> None:
    g = guard(json_schema_action="off")
    assert not g.active_for("acme")
    assert guard().active_for("acme")  # json_schema_action defaults to flag
