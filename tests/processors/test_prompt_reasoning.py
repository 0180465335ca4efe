"""Chain-of-thought builders: parsing, composition order, placement, answer extraction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.processors.prompt_reasoning import (
    ReasoningConfig,
    apply_reasoning,
    extract_final_answer,
    parse_reasoning,
    reasoning_instructions,
)
from sluicegate.processors.prompt_templates import PromptInvalidError

pytestmark = pytest.mark.unit


def test_a_style_or_a_list_of_styles() -> None:
    assert parse_reasoning({"style": "step_by_step"}) == ReasoningConfig(("step_by_step",))
    both = parse_reasoning({"style": ["plan_then_answer", "self_check", "plan_then_answer"]})
    assert both is not None and both.styles == ("plan_then_answer", "self_check")
    assert parse_reasoning(None) is None


@pytest.mark.parametrize(
    "raw",
    [
        {"style": "tree_of_thought"},
        {"style": []},
        {"style": "answer_format", "answer_start": "##", "answer_end": "##"},
        {"style": "answer_format", "answer_start": ""},
        {"style": "step_by_step", "temperature": 0},
    ],
)
def test_bad_configurations_are_refused(raw: dict) -> None:
    with pytest.raises(PromptInvalidError):
        parse_reasoning(raw)


def test_instructions_compose_in_the_order_given() -> None:
    config = parse_reasoning({"style": ["self_check", "step_by_step", "answer_format"]})
    assert config is not None
    text = reasoning_instructions(config)
    assert "check your reasoning" in text[0] and "step by step" in text[1]
    assert "<answer>" in text[2]


def test_instructions_join_the_system_message_or_open_one() -> None:
    config = ReasoningConfig(("step_by_step",))
    with_system = apply_reasoning(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], config
    )
    assert with_system[0]["content"].startswith("Be brief.\n\nThink")
    assert len(with_system) == 2
    without = apply_reasoning([{"role": "user", "content": "2+2?"}], config)
    assert without[0]["role"] == "system" and without[1]["content"] == "2+2?"
    assert apply_reasoning(without, None) == without


def test_extract_final_answer() -> None:
    assert extract_final_answer("2+2 is 4.\n<answer> 4 </answer>") == "4"
    assert extract_final_answer("<answer>3</answer> wait <answer>4</answer>") == "4"
    assert extract_final_answer("so <answer>4") == "4"  # cut off before the end tag
    assert extract_final_answer("no tags at all") is None
    assert extract_final_answer("#### 12", start="####", end="\n") == "12"


@given(
    reasoning=st.text(alphabet=st.characters(blacklist_characters="<>")),
    answer=st.text(alphabet=st.characters(blacklist_characters="<>"), min_size=1).filter(
        lambda s: s.strip()
    ),
)
def test_whatever_the_reasoning_the_answer_comes_back(reasoning: str, answer: str) -> None:
    reply = f"{reasoning}\n<answer>{answer}</answer>"
    assert extract_final_answer(reply) == answer.strip()
