"""The prompt registry: `PromptVersionPublished` records of sg.prompts folded into versions,
labels and compositions; the write side's event builders; and rendering.

**The log.** sg.prompts is compacted with one key per version (`prompt_key`:
`<tenant_id>/<prompt_name>@<version>`), so compaction keeps every version and, per version, its
latest record. Versions are immutable; only the labels a version holds change, by republishing
its record with the labels and a newer `labels_moved_at`. The fold is order-independent, so a
reader that sees records out of order (or after compaction) ends in the same state:

- per version, the record with the greatest `(labels_moved_at, occurred_at, event_id)` is kept
  (after compaction it is the only one left);
- a label belongs to the version whose kept record lists it with the greatest
  `(labels_moved_at, version)`. A rollback (`rollback`) republishes an older version with the
  label and a newer stamp; its previous holder is the version whose kept record lists the label
  with the next greatest stamp. A record republished for a label keeps only the labels its
  version still holds, so it never takes back a label that moved on.

**References.** `name@3` is version 3, `name@1.2.0` the version with that semver, `name@prod`
the holder of label `prod`, and a bare `name` the holder of `default` if any, else the latest.

**Versions.** `publish` builds the next version: it checks the prompt (templates, declarations,
includes, few-shot, reasoning: PromptInvalidError) and bumps the semver by the size of the
change from the latest version — variables added, removed or retyped, or the kind changed:
major; a template, the chat messages or the reasoning: minor; only the model, the few-shot
examples or variable descriptions/defaults: patch; nothing at all: `NoChangeError`, no
version. The builders return events; they do not fold them (the caller publishes, then applies).

**Rendering** (`render`): kind `system` → the rendered system message, then the caller's
messages; `template` → the caller's messages, then the rendered user message; `chat` → the
composed messages (includes resolved recursively, cycle-checked, at most
`MAX_INCLUDE_DEPTH` deep), then the caller's. Few-shot pairs go after the leading system
messages (processors/prompt_fewshot.py), reasoning instructions at the end of the system
message (processors/prompt_reasoning.py).
"""

from __future__ import annotations

import difflib
import json
import re
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sluicegate.processors.envelope import system_envelope
from sluicegate.processors.prompt_fewshot import (
    Embedder,
    ExampleEmbeddings,
    FewShotConfig,
    Selection,
    example_messages,
    parse_few_shot,
    select_examples,
)
from sluicegate.processors.prompt_reasoning import (
    ReasoningConfig,
    apply_reasoning,
    parse_reasoning,
)
from sluicegate.processors.prompt_templates import (
    MAX_OUTPUT_CHARS,
    ChatPart,
    NoChangeError,
    PromptError,
    PromptInvalidError,
    PromptLabelNotFoundError,
    PromptNotFoundError,
    PromptRenderError,
    PromptVariableError,
    PromptVersionNotFoundError,
    VariableSpec,
    check_template,
    parse_messages,
    parse_variables,
    render_template,
    validate_values,
    variables_json,
)
from sluicegate.schemas.models import PromptVersionPublished

__all__ = [
    "ExampleEmbeddings",
    "NoChangeError",
    "PromptError",
    "PromptInvalidError",
    "PromptLabelNotFoundError",
    "PromptNotFoundError",
    "PromptRegistry",
    "PromptRenderError",
    "PromptSpec",
    "PromptVariableError",
    "PromptVersion",
    "PromptVersionNotFoundError",
    "RenderedPrompt",
    "prompt_key",
    "render",
]

PRODUCER = "prompts"
KINDS = ("template", "system", "chat")
Kind = Literal["template", "system", "chat"]
Bump = Literal["major", "minor", "patch"]
DEFAULT_LABEL = "default"
MAX_INCLUDE_DEPTH = 8
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # never a number or a semver
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def prompt_key(event: PromptVersionPublished) -> str:
    """The record key on sg.prompts: one per version, so compaction keeps every version."""
    return f"{event.tenant_id}/{event.prompt_name}@{event.version}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _loads(raw: str | None) -> Any:
    return None if raw is None else json.loads(raw)


# -- a version ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptVersion:
    """One version as published, its JSON fields parsed."""

    tenant_id: str
    name: str
    version: int
    semver: str
    kind: Kind
    template: str
    messages: tuple[ChatPart, ...]
    variables: Mapping[str, VariableSpec]
    few_shot: FewShotConfig | None
    reasoning: ReasoningConfig | None
    model: str | None
    labels: tuple[str, ...]
    author: str | None
    change_note: str | None
    labels_moved_at: int
    published_at: datetime
    event: PromptVersionPublished = field(repr=False, compare=False)

    @property
    def ref(self) -> str:
        """`name@<version>`: what RequestAdmitted, CostEntry and analytics carry."""
        return f"{self.name}@{self.version}"

    @classmethod
    def from_event(cls, event: PromptVersionPublished) -> PromptVersion:
        if event.kind not in KINDS:
            raise PromptInvalidError(f"{event.prompt_name}@{event.version}: kind {event.kind!r}")
        try:
            messages = _loads(event.messages_json)
            variables = _loads(event.variables_json)
            few_shot = _loads(event.few_shot_json)
            reasoning = _loads(event.reasoning_json)
        except ValueError as error:
            raise PromptInvalidError(f"{event.prompt_name}@{event.version}: {error}") from None
        return cls(
            tenant_id=event.tenant_id,
            name=event.prompt_name,
            version=event.version,
            semver=event.semver or f"0.{event.version}.0",  # v1 records had no semver
            kind=event.kind,  # type: ignore[arg-type]
            template=event.template,
            messages=parse_messages(messages) if event.kind == "chat" else (),
            variables=parse_variables(variables),
            few_shot=parse_few_shot(few_shot),
            reasoning=parse_reasoning(reasoning),
            model=event.model,
            labels=tuple(dict.fromkeys(event.labels)),
            author=event.author,
            change_note=event.change_note,
            labels_moved_at=event.labels_moved_at,
            published_at=event.occurred_at,
            event=event,
        )

    def rank(self) -> tuple[int, int, str]:
        """Which record of this version wins: the newest label assignment."""
        return (self.labels_moved_at, _ms(self.published_at), self.event.event_id)

    def describe(self, held: Sequence[str] | None = None, *, full: bool = True) -> dict[str, Any]:
        """A JSON-able view for the CLI and the admin API; `held`: the labels this version
        holds now (its record may still list labels that moved on); `full`: with content."""
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "semver": self.semver,
            "prompt_ref": self.ref,
            "kind": self.kind,
            "model": self.model,
            "labels": sorted(held if held is not None else self.labels),
            "author": self.author,
            "change_note": self.change_note,
            "published_at": self.published_at.isoformat(),
        }
        if full:
            out |= {
                "template": self.template if self.kind != "chat" else None,
                "messages": [p.to_json() for p in self.messages] if self.kind == "chat" else None,
                "variables": {n: s.to_json() for n, s in self.variables.items()},
                "few_shot": _loads(self.few_shot.to_json()) if self.few_shot else None,
                "reasoning": _loads(self.reasoning.to_json()) if self.reasoning else None,
                "labels_moved_at": self.labels_moved_at,
            }
        return out

    def sections(self) -> dict[str, str]:
        """The content, field by field, as text to compare and diff (labels and notes are not
        content)."""

        def pretty(value: Any) -> str:
            return "" if value is None else json.dumps(value, indent=2, sort_keys=True)

        return {
            "kind": self.kind,
            "model": self.model or "",
            "template": self.template,
            "messages": pretty([p.to_json() for p in self.messages] or None),
            "variables": pretty({n: s.to_json() for n, s in self.variables.items()} or None),
            "few_shot": pretty(_loads(self.few_shot.to_json()) if self.few_shot else None),
            "reasoning": pretty(_loads(self.reasoning.to_json()) if self.reasoning else None),
        }


class PromptSpec(BaseModel):
    """A prompt as an author writes it: the YAML file of `sluicegate prompts create|update`
    and the body of `POST /admin/v1/prompts` (docs/prompts.md)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind = "template"
    template: str | None = None
    messages: list[dict[str, Any]] | None = None
    variables: dict[str, Any] | None = None
    few_shot: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    model: str | None = None
    labels: list[str] = Field(default_factory=list)
    change_note: str | None = None
    author: str | None = None
    bump: Bump | None = None

    def publish_fields(self) -> dict[str, Any]:
        """Keyword arguments of `PromptRegistry.publish` (all but tenant and name)."""
        return self.model_dump(exclude={"name"})


@dataclass(frozen=True, slots=True)
class _Prompt:
    """One prompt's folded state, swapped whole on every apply (readers never lock)."""

    versions: Mapping[int, PromptVersion]
    holders: Mapping[str, int]
    by_semver: Mapping[str, int]

    @classmethod
    def of(cls, versions: Mapping[int, PromptVersion]) -> _Prompt:
        best: dict[str, tuple[int, int]] = {}
        for v in versions.values():
            for label in v.labels:
                best[label] = max(best.get(label, (-1, -1)), (v.labels_moved_at, v.version))
        by_semver = {v.semver: n for n, v in sorted(versions.items())}
        return cls(dict(versions), {k: n for k, (_, n) in best.items()}, by_semver)

    @property
    def latest(self) -> PromptVersion:
        return self.versions[max(self.versions)]


def _bump_size(old: PromptVersion, new: PromptVersion) -> Bump | None:
    """How big the change from `old` to `new` is (None: no change)."""
    shape = {n: (s.type, s.required, s.enum) for n, s in new.variables.items()}
    old_shape = {n: (s.type, s.required, s.enum) for n, s in old.variables.items()}
    if old.kind != new.kind or shape != old_shape:
        return "major"
    a, b = old.sections(), new.sections()
    if any(a[f] != b[f] for f in ("template", "messages", "reasoning")):
        return "minor"
    if a != b:
        return "patch"
    return None


def _bumped(semver: str, size: Bump) -> str:
    match = SEMVER.match(semver)
    major, minor, patch = (int(g) for g in match.groups()) if match else (0, 0, 0)
    if size == "major":
        return f"{major + 1}.0.0"
    if size == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


# -- the registry ------------------------------------------------------------------------------


_VERSION_NUMBER = re.compile(r"[0-9]{1,9}")


class PromptRegistry:
    """The folded prompt topic. Thread-safe: a view's thread applies records while the event
    loop resolves and renders (each prompt's state is replaced whole, never mutated)."""

    def __init__(self) -> None:
        self._prompts: dict[tuple[str, str], _Prompt] = {}
        self._lock = threading.Lock()

    # -- the fold ------------------------------------------------------------------------------

    def apply(self, event: PromptVersionPublished) -> PromptVersion:
        """Fold one record (any order); returns it parsed. Raises PromptInvalidError on a
        record that does not parse (the view logs and skips it)."""
        version = PromptVersion.from_event(event)
        key = (event.tenant_id, event.prompt_name)
        with self._lock:
            current = self._prompts.get(key)
            versions = dict(current.versions) if current else {}
            kept = versions.get(version.version)
            if kept is None or version.rank() > kept.rank():
                versions[version.version] = version
                self._prompts[key] = _Prompt.of(versions)
        return version

    @property
    def is_empty(self) -> bool:
        return not self._prompts

    # -- reads ---------------------------------------------------------------------------------

    def _prompt(self, tenant_id: str, name: str) -> _Prompt:
        prompt = self._prompts.get((tenant_id, name))
        if prompt is None:
            raise PromptNotFoundError(f"No prompt `{name}`.")
        return prompt

    def names(self, tenant_id: str) -> list[str]:
        return sorted(name for tenant, name in list(self._prompts) if tenant == tenant_id)

    def versions(self, tenant_id: str, name: str) -> list[PromptVersion]:
        """Every version, oldest first."""
        prompt = self._prompt(tenant_id, name)
        return [prompt.versions[n] for n in sorted(prompt.versions)]

    def labels(self, tenant_id: str, name: str) -> dict[str, int]:
        """Label → the version holding it."""
        return dict(sorted(self._prompt(tenant_id, name).holders.items()))

    def held(self, version: PromptVersion) -> list[str]:
        """The labels `version` holds now."""
        holders = self._prompt(version.tenant_id, version.name).holders
        return sorted(label for label, n in holders.items() if n == version.version)

    def latest(self, tenant_id: str, name: str) -> PromptVersion:
        return self._prompt(tenant_id, name).latest

    def exists(self, tenant_id: str, name: str) -> bool:
        return (tenant_id, name) in self._prompts

    def resolve(self, tenant_id: str, ref: str) -> PromptVersion:
        """`name`, `name@<version>`, `name@<semver>` or `name@<label>` → the version."""
        name, _, selector = ref.strip().partition("@")
        prompt = self._prompt(tenant_id, name)
        if not selector:
            holder = prompt.holders.get(DEFAULT_LABEL)
            return prompt.versions[holder] if holder is not None else prompt.latest
        if _VERSION_NUMBER.fullmatch(selector):  # not str.isdigit: "²" is a digit to it
            found = prompt.versions.get(int(selector))
            if found is None:
                raise PromptVersionNotFoundError(f"`{name}` has no version {selector}.")
            return found
        if SEMVER.match(selector):
            number = prompt.by_semver.get(selector)
            if number is None:
                raise PromptVersionNotFoundError(f"`{name}` has no version {selector}.")
            return prompt.versions[number]
        holder = prompt.holders.get(selector)
        if holder is None:
            raise PromptLabelNotFoundError(f"No version of `{name}` is labelled `{selector}`.")
        return prompt.versions[holder]

    def diff(self, tenant_id: str, name: str, a: str | int, b: str | int) -> str:
        """A unified diff, field by field, of every content field that differs between two
        versions (references as in `resolve`, without the name); empty when none does."""
        old = self.resolve(tenant_id, f"{name}@{a}")
        new = self.resolve(tenant_id, f"{name}@{b}")
        before, after = old.sections(), new.sections()
        out: list[str] = []
        for section, text in before.items():
            if text == after[section]:
                continue
            out.extend(
                difflib.unified_diff(
                    text.splitlines(),
                    after[section].splitlines(),
                    fromfile=f"{old.ref} ({old.semver}) {section}",
                    tofile=f"{new.ref} ({new.semver}) {section}",
                    lineterm="",
                )
            )
        return "\n".join(out) + "\n" if out else ""

    # -- compositions --------------------------------------------------------------------------

    def compose(
        self, version: PromptVersion
    ) -> tuple[list[tuple[str, str]], dict[str, VariableSpec]]:
        """The version's (role, template) messages with includes resolved, and the variables
        of every prompt involved (one name declared two ways is a PromptInvalidError)."""
        declared: dict[str, VariableSpec] = {}
        parts = self._flatten(version, (version.name,), declared)
        return parts, declared

    def _flatten(
        self, version: PromptVersion, path: tuple[str, ...], declared: dict[str, VariableSpec]
    ) -> list[tuple[str, str]]:
        for name, spec in version.variables.items():
            other = declared.setdefault(name, spec)
            if (other.type, other.enum) != (spec.type, spec.enum):
                raise PromptInvalidError(
                    f"`{name}` is declared differently by `{version.name}` and an included prompt."
                )
        if version.kind != "chat":
            return [("system" if version.kind == "system" else "user", version.template)]
        parts: list[tuple[str, str]] = []
        for part in version.messages:
            if part.include is None:
                parts.append((part.role, part.template))
                continue
            target_name = part.include.partition("@")[0]
            if target_name in path:
                cycle = " → ".join([*path, target_name])
                raise PromptInvalidError(f"Include cycle: {cycle}.")
            if len(path) > MAX_INCLUDE_DEPTH:
                raise PromptInvalidError(f"Includes nest deeper than {MAX_INCLUDE_DEPTH}.")
            target = self.resolve(version.tenant_id, part.include)
            parts.extend(self._flatten(target, (*path, target.name), declared))
        return parts

    # -- the write side: event builders --------------------------------------------------------

    def publish(
        self,
        tenant_id: str,
        name: str,
        *,
        template: str | None = None,
        kind: Kind = "template",
        messages: Sequence[Mapping[str, Any]] | None = None,
        variables: Mapping[str, Any] | None = None,
        few_shot: Mapping[str, Any] | None = None,
        reasoning: Mapping[str, Any] | None = None,
        model: str | None = None,
        labels: Sequence[str] = (),
        author: str | None = None,
        change_note: str | None = None,
        bump: Bump | None = None,
        now_ms: int | None = None,
        producer: str = PRODUCER,
    ) -> PromptVersionPublished:
        """The next version of `name` (the first one when it is new), checked; the semver is
        bumped by the size of the change unless `bump` says. Raises PromptInvalidError,
        NoChangeError."""
        if not NAME.match(name):
            raise PromptInvalidError(
                f"`{name}` is not a prompt name (letters, digits, `_`, `.`, `-`; up to 128)."
            )
        if kind not in KINDS:
            raise PromptInvalidError(f"`kind` must be one of {list(KINDS)}.")
        _check_labels(labels)
        current = self._prompts.get((tenant_id, name))
        few_shot_config = parse_few_shot(few_shot)
        reasoning_config = parse_reasoning(reasoning)
        template_text, parts = _content_of(kind, template, messages)
        event = PromptVersionPublished(
            **{**system_envelope(producer=producer), "tenant_id": tenant_id},
            prompt_name=name,
            version=max(current.versions) + 1 if current else 1,
            template=template_text,
            model=model or None,
            labels=list(dict.fromkeys(labels)),
            semver="1.0.0",
            kind=kind,
            messages_json=json.dumps([p.to_json() for p in parts]) if parts else None,
            variables_json=variables_json(parse_variables(variables)),
            few_shot_json=few_shot_config.to_json() if few_shot_config else None,
            reasoning_json=reasoning_config.to_json() if reasoning_config else None,
            author=author,
            change_note=change_note,
            labels_moved_at=self._stamp(current, now_ms),
        )
        new = PromptVersion.from_event(event)
        self._check(new)
        if current is None:
            return event
        size = _bump_size(current.latest, new)
        if size is None:
            raise NoChangeError(
                f"`{name}` is unchanged from version {current.latest.version}; no new version "
                "was made (move labels with `label`)."
            )
        return event.model_copy(update={"semver": _bumped(current.latest.semver, bump or size)})

    def label(
        self,
        tenant_id: str,
        name: str,
        label: str,
        version: int,
        *,
        now_ms: int | None = None,
        producer: str = PRODUCER,
    ) -> PromptVersionPublished:
        """The record that moves `label` to `version` (its record republished with a newer
        stamp). NoChangeError when it holds the label already."""
        _check_labels([label])
        prompt = self._prompt(tenant_id, name)
        target = prompt.versions.get(version)
        if target is None:
            raise PromptVersionNotFoundError(f"`{name}` has no version {version}.")
        if prompt.holders.get(label) == version:
            raise NoChangeError(f"`{name}@{version}` holds `{label}` already.")
        return self._relabelled(prompt, target, label, now_ms, producer)

    def rollback(
        self,
        tenant_id: str,
        name: str,
        label: str = "prod",
        to: int | None = None,
        *,
        now_ms: int | None = None,
        producer: str = PRODUCER,
    ) -> PromptVersionPublished:
        """The record that gives `label` back to the version that held it before the current
        holder (or to version `to`)."""
        prompt = self._prompt(tenant_id, name)
        holder = prompt.holders.get(label)
        if holder is None:
            raise PromptLabelNotFoundError(f"No version of `{name}` is labelled `{label}`.")
        if to is None:
            earlier = [
                (v.labels_moved_at, v.version)
                for v in prompt.versions.values()
                if label in v.labels and v.version != holder
            ]
            if not earlier:
                raise PromptVersionNotFoundError(
                    f"No earlier holder of `{label}` on `{name}` is on record; name the version."
                )
            to = max(earlier)[1]
        return self.label(tenant_id, name, label, to, now_ms=now_ms, producer=producer)

    def _relabelled(
        self,
        prompt: _Prompt,
        target: PromptVersion,
        label: str,
        now_ms: int | None,
        producer: str,
    ) -> PromptVersionPublished:
        held = [lb for lb, n in prompt.holders.items() if n == target.version]
        envelope = {**system_envelope(producer=producer), "tenant_id": target.tenant_id}
        return target.event.model_copy(
            update={
                **envelope,
                "labels": list(dict.fromkeys([*sorted(held), label])),
                "labels_moved_at": self._stamp(prompt, now_ms),
            }
        )

    @staticmethod
    def _stamp(prompt: _Prompt | None, now_ms: int | None) -> int:
        """Now, but after every stamp on record: a writer whose clock lags still moves the
        label (it saw the current holders, so its assignment is the newest)."""
        now = _now_ms() if now_ms is None else now_ms
        if prompt is None:
            return now
        return max([now, *(v.labels_moved_at + 1 for v in prompt.versions.values())])

    def _check(self, version: PromptVersion) -> None:
        """Publish-time checks of a new version: every template against its declarations,
        includes resolvable and acyclic."""
        if version.kind == "chat":
            for index, part in enumerate(version.messages):
                if part.include is None:
                    check_template(part.template, version.variables, where=f"messages[{index}]")
            try:
                self.compose(version)
            except (PromptNotFoundError, PromptVersionNotFoundError, PromptLabelNotFoundError) as e:
                raise PromptInvalidError(f"An include does not resolve: {e.message}") from None
        else:
            check_template(version.template, version.variables, where="template")


def _content_of(
    kind: str, template: str | None, messages: Sequence[Mapping[str, Any]] | None
) -> tuple[str, tuple[ChatPart, ...]]:
    """The `template` field and the chat parts of a new version (a chat prompt has messages
    and an empty template; the others a template and no messages)."""
    if kind == "chat":
        if template:
            raise PromptInvalidError("A chat prompt has `messages`, not `template`.")
        return "", parse_messages(list(messages) if messages is not None else None)
    if messages:
        raise PromptInvalidError(f"A {kind} prompt has a `template`, not `messages`.")
    if not isinstance(template, str) or not template.strip():
        raise PromptInvalidError(f"A {kind} prompt needs a non-empty `template`.")
    return template, ()


def _check_labels(labels: Sequence[str]) -> None:
    bad = [label for label in labels if not isinstance(label, str) or not LABEL.match(label)]
    if bad:
        raise PromptInvalidError(
            f"Labels {bad} are invalid: a letter, then letters, digits, `_` or `-`."
        )


# -- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """What a prompt renders to: the messages the model sees and the version that made them.
    `few_shot` says which examples were chosen and how (with the reason on a fallback)."""

    messages: list[dict[str, Any]]
    prompt_ref: str
    version: int
    semver: str
    name: str = ""
    model: str | None = None
    few_shot: Selection | None = None

    @property
    def notes(self) -> list[str]:
        return [self.few_shot.note] if self.few_shot and self.few_shot.note else []


def render(
    registry: PromptRegistry,
    tenant_id: str,
    ref: str,
    variables: Mapping[str, Any],
    *,
    user_messages: Sequence[Mapping[str, Any]] = (),
    embed: Embedder | None = None,
    embeddings: ExampleEmbeddings | None = None,
    max_chars: int = MAX_OUTPUT_CHARS,
) -> RenderedPrompt:
    """Resolve `ref`, validate `variables`, render every template in the sandbox and assemble
    the messages (module docstring). Raises the PromptError family."""
    version = registry.resolve(tenant_id, ref)
    parts, declared = registry.compose(version)
    values = validate_values(declared, variables)
    composed = [
        {"role": role, "content": render_template(source, values, max_chars=max_chars)}
        for role, source in parts
    ]
    callers = [dict(m) for m in user_messages]
    messages = [*callers, *composed] if version.kind == "template" else [*composed, *callers]
    selection = None
    if version.few_shot is not None:
        version_key: Hashable = (version.tenant_id, version.name, version.version)
        selection = select_examples(
            version.few_shot,
            _last_user_text(messages),
            embed=embed,
            version_key=version_key,
            cache=embeddings,
        )
        at = next((i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
        messages[at:at] = example_messages(selection.examples)
    return RenderedPrompt(
        messages=apply_reasoning(messages, version.reasoning),
        prompt_ref=version.ref,
        version=version.version,
        semver=version.semver,
        name=version.name,
        model=version.model,
        few_shot=selection,
    )


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return None
