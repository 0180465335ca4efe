"""The prompt registry: the fold (order-independent), references, semver bumps, labels and
rollbacks, diffs, compositions and rendering."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.processors.prompt_registry import (
    MAX_INCLUDE_DEPTH,
    NoChangeError,
    PromptInvalidError,
    PromptLabelNotFoundError,
    PromptNotFoundError,
    PromptRegistry,
    PromptRenderError,
    PromptSpec,
    PromptVariableError,
    PromptVersionNotFoundError,
    prompt_key,
    render,
)
from sluicegate.schemas.models import PromptVersionPublished
from tests.fakes.embedders import HashEmbedder

pytestmark = pytest.mark.unit

T = "acme"
VARS = {"question": "string", "tone": {"type": "string", "default": "friendly"}}
BASE: dict[str, Any] = {
    "template": "Answer {{ question }} in a {{ tone }} tone.",
    "variables": VARS,
}


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        self.ms += 1_000
        return self.ms


def publish(
    registry: PromptRegistry, name: str = "support", clock: Clock | None = None, **fields: Any
) -> PromptVersionPublished:
    event = registry.publish(T, name, now_ms=clock() if clock else None, **{**BASE, **fields})
    registry.apply(event)
    return event


# -- publishing and semver -----------------------------------------------------------------------


def test_the_first_version_is_1_0_0_keyed_per_version() -> None:
    registry = PromptRegistry()
    event = publish(registry, labels=["prod"], author="ana", change_note="first")
    assert (event.version, event.semver, event.kind, event.tenant_id) == (1, "1.0.0", "template", T)
    assert prompt_key(event) == "acme/support@1"
    assert event.variables_json and event.author == "ana" and event.labels == ["prod"]
    assert registry.resolve(T, "support@prod").ref == "support@1"


@pytest.mark.parametrize(
    ("change", "semver"),
    [
        (
            {"variables": {**VARS, "city": "string"}, "template": BASE["template"] + "{{ city }}"},
            "2.0.0",
        ),
        ({"variables": {"question": "string", "tone": {"type": "integer", "default": 1}}}, "2.0.0"),
        ({"kind": "system"}, "2.0.0"),
        ({"template": "Reply to {{ question }} in a {{ tone }} tone."}, "1.1.0"),
        ({"reasoning": {"style": "step_by_step"}}, "1.1.0"),
        ({"model": "gpt-4o"}, "1.0.1"),
        ({"few_shot": {"examples": [{"input": "a", "output": "b"}]}}, "1.0.1"),
        (
            {"variables": {**VARS, "question": {"type": "string", "description": "the ask"}}},
            "1.0.1",
        ),
    ],
)
def test_the_semver_bump_follows_the_size_of_the_change(change: dict, semver: str) -> None:
    registry = PromptRegistry()
    publish(registry)
    event = publish(registry, **change)
    assert (event.version, event.semver) == (2, semver)


def test_no_change_is_no_version() -> None:
    registry = PromptRegistry()
    publish(registry)
    with pytest.raises(NoChangeError) as caught:
        registry.publish(T, "support", **BASE, change_note="same again", labels=["prod"])
    assert caught.value.code == "prompt_no_change" and caught.value.http_status == 409
    assert [v.version for v in registry.versions(T, "support")] == [1]


def test_an_explicit_bump_wins() -> None:
    registry = PromptRegistry()
    publish(registry)
    assert publish(registry, model="gpt-4o", bump="major").semver == "2.0.0"


CHANGES = st.sampled_from(["model", "template", "variable", "few_shot", "kind"])


@settings(max_examples=40, deadline=None)
@given(st.lists(CHANGES, min_size=1, max_size=12))
def test_semver_grows_strictly_with_every_version(changes: list[str]) -> None:
    registry = PromptRegistry()
    fields: dict[str, Any] = {**BASE, "variables": dict(VARS), "kind": "template"}
    publish(registry, **fields)
    for step, change in enumerate(changes):
        if change == "model":
            fields["model"] = f"m{step}"
        elif change == "template":
            fields["template"] = fields["template"] + " ."
        elif change == "variable":
            fields["variables"] = {**fields["variables"], f"v{step}": {"default": "x"}}
        elif change == "few_shot":
            fields["few_shot"] = {"examples": [{"input": str(step), "output": "o"}]}
        else:
            fields["kind"] = "system" if fields["kind"] == "template" else "template"
        publish(registry, **fields)
    semvers = [tuple(map(int, v.semver.split("."))) for v in registry.versions(T, "support")]
    assert semvers == sorted(set(semvers)) and len(semvers) == len(changes) + 1


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"template": "{{ question }} {{ city }}"}, "undeclared variables"),
        ({"template": "{{ question "}, "syntax error"),
        ({"template": "  "}, "non-empty `template`"),
        ({"kind": "chat"}, "has `messages`, not `template`"),
        ({"labels": ["3"]}, "Labels"),
        ({"labels": ["1.2.0"]}, "Labels"),
        ({"few_shot": {"k": 0}}, "few_shot"),
        ({"reasoning": {"style": "magic"}}, "unknown styles"),
    ],
)
def test_invalid_prompts_are_refused_before_publishing(fields: dict, fragment: str) -> None:
    registry = PromptRegistry()
    with pytest.raises(PromptInvalidError, match=fragment) as caught:
        registry.publish(T, "support", **{**BASE, **fields})
    assert caught.value.code == "prompt_invalid"


def test_names_are_keys_safe() -> None:
    with pytest.raises(PromptInvalidError):
        PromptRegistry().publish(T, "a/b@c", **BASE)


# -- references ---------------------------------------------------------------------------------


def test_references_by_version_semver_label_and_bare_name() -> None:
    registry, clock = PromptRegistry(), Clock()
    publish(registry, clock=clock, labels=["prod"])
    publish(registry, clock=clock, template=BASE["template"] + "!", labels=["staging"])
    assert registry.resolve(T, "support@1").version == 1
    assert registry.resolve(T, "support@1.1.0").version == 2
    assert registry.resolve(T, "support@prod").version == 1
    assert registry.resolve(T, "support").version == 2  # no `default` label: the latest
    registry.apply(registry.label(T, "support", "default", 1, now_ms=clock()))
    assert registry.resolve(T, "support").version == 1
    for ref, error, code in (
        ("nope", PromptNotFoundError, "prompt_not_found"),
        ("support@9", PromptVersionNotFoundError, "prompt_version_not_found"),
        ("support@9.9.9", PromptVersionNotFoundError, "prompt_version_not_found"),
        ("support@canary", PromptLabelNotFoundError, "prompt_label_not_found"),
    ):
        with pytest.raises(error) as caught:
            registry.resolve(T, ref)
        assert caught.value.code == code and caught.value.http_status == 404
    with pytest.raises(PromptNotFoundError):
        registry.resolve("globex", "support")  # tenants do not see each other's prompts


def test_listing() -> None:
    registry = PromptRegistry()
    publish(registry, "b")
    publish(registry, "a")
    assert registry.names(T) == ["a", "b"] and registry.names("globex") == []
    assert registry.exists(T, "a") and not registry.exists("globex", "a")


# -- labels and rollback ------------------------------------------------------------------------


def three_versions(clock: Clock) -> PromptRegistry:
    registry = PromptRegistry()
    for n in range(3):
        publish(registry, clock=clock, template=BASE["template"] + "." * n, labels=["prod"])
    return registry


def test_a_new_labelled_version_takes_the_label_and_rollback_gives_it_back() -> None:
    clock = Clock()
    registry = three_versions(clock)
    assert registry.labels(T, "support") == {"prod": 3}
    back = registry.rollback(T, "support", now_ms=clock())
    assert (back.version, back.labels) == (2, ["prod"])
    assert back.template == registry.resolve(T, "support@2").template  # content unchanged
    assert back.event_id != registry.resolve(T, "support@2").event.event_id
    registry.apply(back)
    assert registry.labels(T, "support") == {"prod": 2}
    # The holder before v2 (at the moment of the rollback) was v3.
    assert registry.rollback(T, "support", now_ms=clock()).version == 3
    registry.apply(registry.rollback(T, "support", to=1, now_ms=clock()))
    assert registry.resolve(T, "support@prod").version == 1


def test_rollback_refusals() -> None:
    clock = Clock()
    registry = PromptRegistry()
    publish(registry, clock=clock, labels=["prod"])
    with pytest.raises(PromptVersionNotFoundError, match="No earlier holder"):
        registry.rollback(T, "support", now_ms=clock())
    with pytest.raises(PromptLabelNotFoundError):
        registry.rollback(T, "support", "canary")
    with pytest.raises(NoChangeError):
        registry.label(T, "support", "prod", 1)
    with pytest.raises(PromptVersionNotFoundError):
        registry.label(T, "support", "prod", 7)


def test_moving_one_label_keeps_the_others_and_never_takes_back_a_moved_one() -> None:
    clock = Clock()
    registry = three_versions(clock)
    registry.apply(registry.label(T, "support", "staging", 3, now_ms=clock()))
    registry.apply(registry.rollback(T, "support", now_ms=clock()))  # prod → 2
    moved = registry.label(T, "support", "canary", 3, now_ms=clock())
    assert moved.labels == ["staging", "canary"]  # not prod, which moved on to 2
    registry.apply(moved)
    assert registry.labels(T, "support") == {"canary": 3, "prod": 2, "staging": 3}


def test_a_lagging_clock_still_moves_the_label() -> None:
    clock = Clock()
    registry = three_versions(clock)
    back = registry.rollback(T, "support", now_ms=5)  # a writer whose clock is far behind
    registry.apply(back)
    assert registry.labels(T, "support")["prod"] == 2


def history(seed: int) -> list[PromptVersionPublished]:
    """Publishes, label moves and rollbacks, as the log would hold them (before compaction)."""
    rng, clock, registry = random.Random(seed), Clock(), PromptRegistry()
    events = []
    for step in range(12):
        versions = len(registry.versions(T, "support")) if registry.exists(T, "support") else 0
        roll = rng.random()
        try:
            if versions < 2 or roll < 0.4:
                label = rng.choice([[], ["prod"], ["staging"], ["prod", "default"]])
                event = registry.publish(
                    T, "support", **{**BASE, "template": f"v{step} {{{{ question }}}}"},
                    labels=label, now_ms=clock(),
                )  # fmt: skip
            elif roll < 0.7:
                label = rng.choice(["prod", "staging", "default"])
                event = registry.label(
                    T, "support", label, rng.randint(1, versions), now_ms=clock()
                )
            else:
                event = registry.rollback(
                    T, "support", rng.choice(["prod", "staging"]), now_ms=clock()
                )
        except (NoChangeError, PromptLabelNotFoundError, PromptVersionNotFoundError):
            continue
        registry.apply(event)
        events.append(event)
    return events


def state(registry: PromptRegistry) -> tuple[Any, ...]:
    versions = registry.versions(T, "support")
    return (
        registry.labels(T, "support"),
        [(v.version, v.event.event_id) for v in versions],
        registry.resolve(T, "support").version,
    )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), shuffle=st.randoms(use_true_random=False))
def test_the_fold_is_order_independent(seed: int, shuffle: random.Random) -> None:
    events = history(seed)
    in_order, shuffled, compacted = PromptRegistry(), PromptRegistry(), PromptRegistry()
    for event in events:
        in_order.apply(event)
    mixed = list(events)
    shuffle.shuffle(mixed)
    for event in mixed:
        shuffled.apply(event)
    last_per_key = {prompt_key(e): e for e in events}  # what compaction leaves
    for event in last_per_key.values():
        compacted.apply(event)
    assert state(shuffled) == state(in_order) == state(compacted)


# -- diff ---------------------------------------------------------------------------------------


def test_diff_shows_every_changed_field() -> None:
    registry = PromptRegistry()
    publish(registry, labels=["prod"])
    publish(
        registry,
        template="Reply to {{ question }} in a {{ tone }} tone.",
        variables={**VARS, "city": {"type": "string", "default": "Paris"}},
        model="gpt-4o",
    )
    text = registry.diff(T, "support", "prod", 2)
    assert "--- support@1 (1.0.0) template" in text and "+++ support@2 (2.0.0) template" in text
    assert "-Answer {{ question }}" in text and "+Reply to {{ question }}" in text
    assert '+  "city": {' in text and "+gpt-4o" in text and "kind" not in text
    assert registry.diff(T, "support", 1, "1.0.0") == ""


# -- compositions -------------------------------------------------------------------------------


def chat_registry() -> PromptRegistry:
    registry = PromptRegistry()
    publish(
        registry,
        "persona",
        kind="system",
        template="You are {{ who }}.",
        variables={"who": "string"},
    )
    publish(
        registry,
        "support",
        kind="chat",
        template=None,
        messages=[
            {"include": "persona"},
            {"role": "assistant", "template": "How can I help?"},
            {"role": "user", "template": "{{ question }}"},
        ],
        variables={"question": "string"},
    )
    return registry


def test_includes_resolve_and_share_variables() -> None:
    out = render(chat_registry(), T, "support", {"question": "Hi?", "who": "a pirate"})
    assert out.messages == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "assistant", "content": "How can I help?"},
        {"role": "user", "content": "Hi?"},
    ]
    assert (out.prompt_ref, out.version, out.semver) == ("support@1", 1, "1.0.0")


def test_an_include_must_resolve_and_not_cycle() -> None:
    registry = chat_registry()
    with pytest.raises(PromptInvalidError, match="does not resolve"):
        registry.publish(T, "x", kind="chat", messages=[{"include": "nope"}])
    with pytest.raises(PromptInvalidError, match="cycle: persona → support → persona"):
        registry.publish(
            T, "persona", kind="chat", messages=[{"include": "support"}],
            variables={"who": "string"},
        )  # fmt: skip


def test_includes_nest_at_most_the_cap() -> None:
    registry = PromptRegistry()
    publish(registry, "p0", template="base", variables=None)
    for n in range(1, MAX_INCLUDE_DEPTH + 1):
        chat = {"kind": "chat", "template": None, "variables": None}
        publish(registry, f"p{n}", **chat, messages=[{"include": f"p{n - 1}"}])
    assert render(registry, T, f"p{MAX_INCLUDE_DEPTH}", {}).messages == [
        {"role": "user", "content": "base"}
    ]
    with pytest.raises(PromptInvalidError, match="deeper"):
        registry.publish(T, "top", kind="chat", messages=[{"include": f"p{MAX_INCLUDE_DEPTH}"}])


def test_one_variable_declared_two_ways_is_refused() -> None:
    registry = chat_registry()
    with pytest.raises(PromptInvalidError, match="declared differently"):
        registry.publish(
            T, "y", kind="chat", messages=[{"include": "persona"}], variables={"who": "integer"}
        )


# -- rendering ----------------------------------------------------------------------------------


CALLER = [{"role": "system", "content": "Context."}, {"role": "user", "content": "earlier"}]


def test_each_kind_places_its_message() -> None:
    registry = PromptRegistry()
    publish(registry, "sys", kind="system", template="Be {{ tone }}.", variables=VARS)
    publish(registry, "tpl")
    system = render(registry, T, "sys", {"question": "q"}, user_messages=CALLER)
    assert system.messages == [{"role": "system", "content": "Be friendly."}, *CALLER]
    template = render(registry, T, "tpl", {"question": "Why?"}, user_messages=CALLER)
    assert template.messages == [
        *CALLER,
        {"role": "user", "content": "Answer Why? in a friendly tone."},
    ]
    assert render(registry, T, "tpl", {"question": "Why?"}).messages == template.messages[-1:]


def test_render_validates_variables_first() -> None:
    registry = PromptRegistry()
    publish(registry)
    with pytest.raises(PromptVariableError) as caught:
        render(registry, T, "support", {"tone": 3, "extra": "x"})
    assert {p.name for p in caught.value.problems} == {"question", "tone", "extra"}
    with pytest.raises(PromptRenderError):
        render(registry, T, "support", {"question": "q" * 200}, max_chars=100)


FEW_SHOT = {
    "examples": [
        {"input": "refund my order", "output": "Refunds take 5 days."},
        {"input": "reset my password", "output": "Use the reset link."},
        {"input": "track my parcel", "output": "Track it online."},
    ],
    "k": 1,
    "select": "similarity",
}


def test_few_shot_pairs_follow_the_system_messages() -> None:
    registry = PromptRegistry()
    publish(registry, few_shot=FEW_SHOT, reasoning={"style": ["step_by_step", "answer_format"]})
    embedder = HashEmbedder()
    out = render(
        registry,
        T,
        "support",
        {"question": "how do I reset my password"},
        user_messages=CALLER,
        embed=embedder.embed,
    )
    roles = [m["role"] for m in out.messages]
    assert roles == ["system", "user", "assistant", "user", "user"]
    assert out.messages[1]["content"] == "reset my password"
    assert (
        out.messages[0]["content"].startswith("Context.\n\nThink")
        and "<answer>" in out.messages[0]["content"]
    )
    assert out.few_shot is not None and out.few_shot.method == "similarity" and out.notes == []
    fallback = render(registry, T, "support", {"question": "reset password"})
    assert fallback.messages[1]["content"] == "refund my order"  # the first k
    assert fallback.notes and "no embedder" in fallback.notes[0]


def test_prompt_spec_is_the_yaml_shape() -> None:
    spec = PromptSpec.model_validate({"name": "support", **BASE, "labels": ["prod"]})
    event = PromptRegistry().publish(T, spec.name, **spec.publish_fields())
    assert event.labels == ["prod"] and event.kind == "template"
    with pytest.raises(ValueError):
        PromptSpec.model_validate({"name": "x", "tempalte": "typo"})


@pytest.mark.parametrize("selector", ["²", "1" * 5000, "\u0661"])
def test_a_reference_that_only_looks_numeric_is_a_label_not_a_crash(selector: str) -> None:
    registry = PromptRegistry()
    registry.apply(registry.publish("acme", "greet", template="hi"))
    with pytest.raises(PromptLabelNotFoundError):
        registry.resolve("acme", f"greet@{selector}")
