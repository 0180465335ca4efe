"""Chain-of-thought builders: extra instructions a prompt version asks the model to follow.

A version's `reasoning` is `{style: name | [names], answer_start, answer_end}`; each style is a
builder (a plain function of the configuration returning one instruction), and the
instructions are composed in the order given, e.g. `[plan_then_answer, self_check,
answer_format]`. They go at the end of the leading system message (one is added when the
prompt has none), so the caller's conversation stays as it was.

`answer_format` makes the final answer machine-readable: between `answer_start` and
`answer_end` (default `<answer>` … `</answer>`); `extract_final_answer(text)` takes it back
out, which is what an eval's exact-match or regex scorer should compare, not the reasoning.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluicegate.processors.prompt_templates import PromptInvalidError

ANSWER_START = "<answer>"
ANSWER_END = "</answer>"


@dataclass(frozen=True, slots=True)
class ReasoningConfig:
    styles: tuple[str, ...]
    answer_start: str = ANSWER_START
    answer_end: str = ANSWER_END

    def to_json(self) -> str:
        out: dict[str, Any] = {"style": list(self.styles)}
        if (self.answer_start, self.answer_end) != (ANSWER_START, ANSWER_END):
            out |= {"answer_start": self.answer_start, "answer_end": self.answer_end}
        return json.dumps(out, sort_keys=True)


Builder = Callable[[ReasoningConfig], str]


def step_by_step(_config: ReasoningConfig) -> str:
    return "Think through the problem step by step, and show your reasoning before the answer."


def plan_then_answer(_config: ReasoningConfig) -> str:
    return (
        "First write a short numbered plan under the heading `Plan:`; then carry the plan out, "
        "one step at a time; then give the answer."
    )


def self_check(_config: ReasoningConfig) -> str:
    return (
        "Before giving the final answer, check your reasoning and the answer against the "
        "question once more, and correct any mistake you find."
    )


def answer_format(config: ReasoningConfig) -> str:
    return (
        f"End with the final answer alone between {config.answer_start} and "
        f"{config.answer_end}, e.g. {config.answer_start}42{config.answer_end}; nothing after it."
    )


BUILDERS: dict[str, Builder] = {
    "step_by_step": step_by_step,
    "plan_then_answer": plan_then_answer,
    "self_check": self_check,
    "answer_format": answer_format,
}


def parse_reasoning(raw: Mapping[str, Any] | None) -> ReasoningConfig | None:
    """`{style, answer_start, answer_end}` as published, checked (PromptInvalidError)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise PromptInvalidError("`reasoning` must be an object {style, ...}.")
    unknown = sorted(set(raw) - {"style", "answer_start", "answer_end"})
    if unknown:
        raise PromptInvalidError(f"reasoning: unknown keys {unknown}.")
    style = raw.get("style")
    styles = [style] if isinstance(style, str) else style
    if not isinstance(styles, list) or not styles:
        raise PromptInvalidError("reasoning.style must be a style or a non-empty list of them.")
    bad = [s for s in styles if s not in BUILDERS]
    if bad:
        raise PromptInvalidError(f"reasoning: unknown styles {bad}; known: {sorted(BUILDERS)}.")
    start = raw.get("answer_start", ANSWER_START)
    end = raw.get("answer_end", ANSWER_END)
    if not (isinstance(start, str) and isinstance(end, str) and start.strip() and end.strip()):
        raise PromptInvalidError("reasoning.answer_start/answer_end must be non-empty strings.")
    if start == end:
        raise PromptInvalidError("reasoning.answer_start and answer_end must differ.")
    return ReasoningConfig(tuple(dict.fromkeys(styles)), start, end)


def reasoning_instructions(config: ReasoningConfig) -> list[str]:
    """The builders' instructions, in the configured order."""
    return [BUILDERS[style](config) for style in config.styles]


def apply_reasoning(
    messages: Sequence[Mapping[str, Any]], config: ReasoningConfig | None
) -> list[dict[str, Any]]:
    """`messages` with the instructions appended to the leading system message (inserted
    first when there is none)."""
    out = [dict(m) for m in messages]
    if config is None:
        return out
    text = "\n".join(reasoning_instructions(config))
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0]["content"] = f"{out[0]['content'].rstrip()}\n\n{text}"
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def extract_final_answer(
    text: str, *, start: str = ANSWER_START, end: str = ANSWER_END
) -> str | None:
    """The final answer of a reply built with `answer_format`: the text of the last
    `start … end` block, stripped (up to the end of the reply when `end` was cut off); None
    when the reply has none."""
    at = text.rfind(start)
    if at < 0:
        return None
    rest = text[at + len(start) :]
    close = rest.find(end)
    answer = rest if close < 0 else rest[:close]
    return answer.strip() or None
