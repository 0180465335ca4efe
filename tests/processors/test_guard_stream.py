"""Hold-back of streamed answers (processors/guard_stream.py): what the caller may receive."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.processors.guard_output import OutputContext, OutputGuard
from sluicegate.processors.guard_stream import Release, StreamHoldback
from sluicegate.schemas.models import ChatMessage
from sluicegate.settings import BannedTopic, GuardrailsSettings

pytestmark = pytest.mark.unit

CONTEXT = OutputContext(tenant_id="acme", model="chat")
PHONE = "+1 415 555 2671"
CARD = "4242 4242 4242 4242"
EMAIL = "ann.lee@example.com"
KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
ANSWER = (
    "Thanks for waiting. I checked the account and the details on file are these: call "
    f"{PHONE} before noon, or write to {EMAIL}; the card ending the order is {CARD}. "
    "Anything else I can help with today?"
)


def guard(**fields: Any) -> OutputGuard:
    return OutputGuard(settings=GuardrailsSettings(**fields))


def holdback(g: OutputGuard, *, window: int = 16, overlap: int = 32) -> StreamHoldback:
    return StreamHoldback(guard=g, context=CONTEXT, window_chars=window, overlap_chars=overlap)


def run(h: StreamHoldback, deltas: list[str]) -> tuple[list[Release], Release]:
    steps = [h.feed(delta) for delta in deltas]
    return steps, h.finish()


def pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in pairwise(bounds) if b > a]


def masked(g: OutputGuard, text: str) -> str:
    return g.check(ChatMessage(role="assistant", content=text), CONTEXT).message.content or ""


def released(steps: list[Release], last: Release) -> str:
    return "".join(step.text for step in [*steps, last])


@pytest.mark.parametrize("value", [PHONE, CARD, EMAIL])
def test_a_value_split_across_two_chunks_is_never_released_raw(value: str) -> None:
    g = guard(output_pii_action="mask")
    start = ANSWER.index(value)
    for split in range(start + 1, start + len(value)):
        steps, last = run(holdback(g), [ANSWER[:split], ANSWER[split:]])
        out = released(steps, last)
        assert value not in out, split
        assert out == masked(g, ANSWER), split


@pytest.mark.parametrize("value", [PHONE, CARD, EMAIL])
def test_a_value_split_across_three_chunks_is_blocked_before_any_of_it_leaves(value: str) -> None:
    """Block: what the caller got before the error is a prefix of the answer that stops before
    the value, and the text before it was not held back needlessly."""
    g = guard(output_pii_action="block")
    answer = f"{ANSWER[:80]} the one on file is {value} and nothing else, as far as I can see."
    start = answer.index(value)
    for first in range(start + 1, start + len(value) - 1):
        second = first + (start + len(value) - first) // 2 + 1
        deltas = pieces(answer, [*range(4, start - 4, 9), first, second])
        steps, last = run(holdback(g), deltas)
        out = released(steps, last)
        assert last.block is not None and last.block.code == "output_pii_detected"
        assert answer.startswith(out) and len(out) <= start, (first, second)
        assert len(out) >= start - 32 - 16 - 9  # held: an overlap, a window, a delta at most


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(ANSWER) - 1), max_size=40),
    window=st.integers(min_value=1, max_value=80),
    overlap=st.integers(min_value=24, max_value=80),
)
def test_released_text_and_masks_add_up_to_the_answer(
    cuts: list[int], window: int, overlap: int
) -> None:
    """Whatever the deltas and sizes (an overlap of 24+ covers these values whole): the raw text
    released is the answer, once, in order; what the caller got is the answer masked as the
    whole-answer check masks it, and no value is ever in it."""
    g = guard(output_pii_action="mask")
    steps, last = run(holdback(g, window=window, overlap=overlap), pieces(ANSWER, cuts))
    assert "".join(step.raw for step in [*steps, last]) == ANSWER
    out = released(steps, last)
    assert out == masked(g, ANSWER)
    assert not any(value in out for value in (PHONE, CARD, EMAIL))


def test_redaction_masks_inside_the_window_before_release() -> None:
    g = guard(output_pii_action="redact")
    steps, last = run(holdback(g, window=8, overlap=24), list(ANSWER))
    out = released(steps, last)
    assert "[PHONE]" in out and "[EMAIL]" in out and "[CREDIT_CARD]" in out
    for step in steps:  # each release is masked on its own: no raw digit run of a value
        assert "555" not in step.text and "4242" not in step.text


def test_a_key_longer_than_the_overlap_is_held_while_it_grows() -> None:
    """A finding that reaches the end of the checked text may go on: nothing of it leaves
    until it stops, however many characters past the overlap it runs."""
    g = guard(output_pii_action="mask")
    answer = f"Your key is {KEY} and it expires soon, so rotate it."
    h = holdback(g, window=4, overlap=24)
    steps = [h.feed(answer[i : i + 3]) for i in range(0, len(answer), 3)]
    out = released(steps, h.finish())
    assert "sk-" not in out and "Ab3d" not in out
    assert out == masked(g, answer) == "Your key is [SECRET] and it expires soon, so rotate it."


def test_finish_on_the_last_window_flushes_it() -> None:
    g = guard(output_pii_action="mask")
    answer = f"Call {PHONE}."
    h = holdback(g, window=64, overlap=64)
    assert [h.feed(c).text for c in answer] == [""] * len(answer)  # shorter than one window
    assert h.held == answer
    last = h.finish()
    assert last.text == masked(g, answer) and last.raw == answer
    assert h.held == "" and h.finish() == Release()


def test_a_banned_topic_split_across_chunks_blocks_and_stays_blocked() -> None:
    g = guard(banned_topics=[BannedTopic(name="weapons", keywords=["pipe bomb"])])
    answer = "Here is some harmless text first, long enough to be released. Then a pi"
    h = holdback(g, window=8, overlap=24)
    steps = [h.feed(c) for c in answer]
    assert "".join(s.text for s in steps) and not any(s.block for s in steps)
    blocked = h.feed("pe bomb recipe")
    assert blocked.block is not None and blocked.block.code == "banned_topic"
    assert blocked.text == "" and h.blocked is not None
    assert h.feed("more").block == blocked.block and h.finish().block == blocked.block
    assert "pi" not in "".join(s.text for s in steps)[-30:]  # the phrase's start was held


def test_a_regex_rule_is_not_cut_in_two(tmp_path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules:\n"
        "  - {name: hosts, when: {stage: output, regex: '\\b[a-z0-9-]+\\.corp\\.internal\\b'}, "
        "action: redact}\n"
    )
    g = guard(policy_file=policy)
    answer = "Connect to build-server-07.corp.internal over SSH, then run the deploy script."
    for split in range(11, 40):
        steps, last = run(holdback(g, window=4, overlap=24), [answer[:split], answer[split:]])
        out = released(steps, last)
        assert "corp.internal" not in out and "[REDACTED]" in out, split


def test_what_needs_holding_back() -> None:
    assert StreamHoldback.of(guard(output_pii_action="mask"), CONTEXT) is not None
    assert StreamHoldback.of(guard(output_pii_action="block"), CONTEXT) is not None
    weapons = [BannedTopic(name="weapons", keywords=["detonator"])]
    assert StreamHoldback.of(guard(banned_topics=weapons), CONTEXT) is not None
    # Nothing can be stopped mid-stream: flag-only or JSON-only rules, or no rules at all.
    assert StreamHoldback.of(guard(banned_topics=weapons, topic_action="flag"), CONTEXT) is None
    assert StreamHoldback.of(guard(json_schema_action="block"), CONTEXT) is None
    assert StreamHoldback.of(guard(), CONTEXT) is None
    # The operator's choice: tokens as they come.
    passthrough = guard(output_pii_action="mask", output_stream_mode="passthrough")
    assert StreamHoldback.of(passthrough, CONTEXT) is None


def test_sizes_come_from_the_settings() -> None:
    g = guard(
        output_pii_action="mask", output_stream_window_chars=10, output_stream_overlap_chars=30
    )
    h = StreamHoldback.of(g, CONTEXT)
    assert h is not None
    assert h.feed("x" * 39) == Release()
    assert h.feed("x").raw == "x" * 10
