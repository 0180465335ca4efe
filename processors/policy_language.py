"""The policy language: per-tenant YAML rules, parsed and validated into typed models.

A rule says when it matches and what happens; `load_policy` turns YAML into a `Policy` with
errors that name the line and the rule, and `default_rules` writes the GuardrailsSettings as
rules (named ``settings.*``), so a deployment without a policy file behaves as its settings say.
The engine that evaluates rules is processors/policy.py; docs/guardrails.md has the language
with examples.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sluicegate.errors import ConfigurationError
from sluicegate.processors.guard_pii import KINDS
from sluicegate.settings import BannedTopic, GuardrailsSettings

Stage = Literal["input", "output"]
Action = Literal["allow", "redact", "mask", "block", "flag"]
DECIDING = frozenset({"allow", "redact", "mask", "block"})
REGEX_PLACEHOLDER = "[REDACTED]"
_PLACEHOLDERS = frozenset(
    {"rule", "pii", "topics", "injection_score", "injection_signals", "json_error", "model"}
)
DEFAULT_MESSAGES = {
    "prompt_injection": "The request was refused: it looks like a prompt-injection attempt "
    "({injection_signals}).",
    "pii_detected": "The request was refused: it contains personal data or secrets ({pii}). "
    "Remove them and try again.",
    "output_pii_detected": "The model's answer was withheld: it contained personal data or "
    "secrets ({pii}).",
    "banned_topic": "The model's answer was withheld: it touches a topic that is not allowed "
    "here ({topics}).",
    "invalid_json_output": "The model's answer does not match the requested response_format: "
    "{json_error}",
}


class PolicyError(ConfigurationError):
    """A policy file that cannot be used; ``issues`` says where (line, rule) and what."""

    def __init__(self, source: str, issues: Sequence[PolicyIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__("\n".join(issue.render(source) for issue in self.issues))


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    message: str
    line: int | None = None
    rule: str | None = None
    location: str = ""

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        rule = f" rule {self.rule!r}" if self.rule else ""
        loc = f" ({self.location})" if self.location else ""
        return f"{where}:{rule}{loc} {self.message}"


# ----------------------------------------------------------------------------- the language


class Condition(BaseModel):
    """``when``: every condition given must hold; absent conditions always hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Stage | None = None
    models: list[str] | None = Field(default=None, description="Model aliases, globs allowed.")
    roles: list[str] | None = None
    attributes: dict[str, str | list[str]] | None = None
    pii: list[str] | Literal["any"] | None = None
    injection_score_gte: float | None = Field(default=None, ge=0, le=1)
    topics: list[str] | Literal["any"] | None = None
    regex: str | None = None
    json_invalid: bool | None = None

    @field_validator("pii")
    @classmethod
    def _known_kinds(cls, kinds: list[str] | str | None) -> list[str] | str | None:
        if isinstance(kinds, list):
            unknown = sorted(set(kinds) - KINDS)
            if unknown:
                raise ValueError(f"unknown PII kind(s) {unknown} (known: {sorted(KINDS)})")
        return kinds

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"regex does not compile: {error}") from None
        return pattern


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    when: Condition = Condition()
    action: Action
    message: str | None = Field(default=None, description="For block; {placeholders} allowed.")
    code: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,63}$")

    @field_validator("message")
    @classmethod
    def _known_placeholders(cls, message: str | None) -> str | None:
        if message is not None:
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(message) if f is not None}
            except ValueError as error:
                raise ValueError(f"message is not a valid template: {error}") from None
            unknown = sorted(names - _PLACEHOLDERS)
            if unknown:
                raise ValueError(
                    f"unknown placeholder(s) {unknown} (known: {sorted(_PLACEHOLDERS)})"
                )
        return message


class TenantPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inherit: bool = Field(default=True, description="Whether the shared rules follow these.")
    rules: list[Rule] = Field(default_factory=list)


class Policy(BaseModel):
    """A policy file: topic definitions, shared rules, and per-tenant rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    topics: list[BannedTopic] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        names = [r.name for r in self.rules] + [
            r.name for tenant in self.tenants.values() for r in tenant.rules
        ]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique in a policy: {repeated}")
        return self


# ----------------------------------------------------------------------------- loading


class _Located(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers its 1-based line."""

    line: int = 0


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_located(loader: _LineLoader, node: yaml.MappingNode) -> Iterable[_Located]:
    data = _Located()
    data.line = node.start_mark.line + 1
    yield data
    data.update(loader.construct_mapping(node))


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_located)  # type: ignore[arg-type]


def load_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and validate a policy; every problem is reported with its line and rule name."""
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(source, [PolicyIssue(f"not valid YAML: {problem}", line)]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(source, [PolicyIssue("expected a mapping (version, topics, rules)", 1)])
    try:
        return Policy.model_validate(raw)
    except ValidationError as error:
        raise PolicyError(source, [_issue(raw, e) for e in error.errors()]) from None


def load_policy_file(path: Path) -> Policy:
    try:
        text = path.expanduser().read_text()
    except OSError as error:
        raise PolicyError(str(path), [PolicyIssue(f"cannot read: {error}")]) from None
    return load_policy(text, source=str(path))


def _issue(raw: Any, error: Mapping[str, Any]) -> PolicyIssue:
    """Walk the error's location through the raw YAML to find the line and the rule's name."""
    node, line, rule = raw, getattr(raw, "line", None), None
    steps: list[str] = []
    previous: Any = None
    for key in error["loc"]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
            if previous == "rules" and isinstance(node, dict):
                rule = str(node.get("name")) if node.get("name") else f"#{key + 1}"
        else:
            continue  # pydantic's union branch names ("list[str]") are not in the YAML
        steps.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        line = getattr(node, "line", None) or line
        previous = key
    message = str(error["msg"]).removeprefix("Value error, ")
    return PolicyIssue(message, line, rule, "".join(steps).lstrip("."))


# ----------------------------------------------------------------------------- settings


def default_rules(settings: GuardrailsSettings) -> list[Rule]:
    """The rules the guardrail settings imply: today's behaviour, as a policy.

    Blocks come first (injection, then PII, as the input guard always checked them), flags
    next, rewrites last, so a mask never hides a block further down.
    """
    rules: list[Rule] = []
    threshold = settings.injection_threshold
    inp_kinds = settings.pii_kinds if settings.pii_kinds is not None else "any"
    out_kinds = settings.output_pii_kinds if settings.output_pii_kinds is not None else "any"

    def add(name: str, action: Action, code: str | None = None, **when: Any) -> None:
        rules.append(
            Rule(name=f"settings.{name}", when=Condition(**when), action=action, code=code)
        )

    if settings.injection_action != "off":
        code = "prompt_injection" if settings.injection_action == "block" else None
        add("injection", settings.injection_action, code, stage="input",
            injection_score_gte=threshold)  # fmt: skip
    if settings.pii_action == "block":
        add("pii", "block", "pii_detected", stage="input", pii=inp_kinds)
    if settings.output_pii_action == "block":
        add("output_pii", "block", "output_pii_detected", stage="output", pii=out_kinds)
    if settings.banned_topics and settings.topic_action != "off":
        add("topics", settings.topic_action, "banned_topic", stage="output", topics="any")
    if settings.json_schema_action != "off":
        add("json", settings.json_schema_action, "invalid_json_output", stage="output",
            json_invalid=True)  # fmt: skip
    if settings.pii_action in ("mask", "redact"):
        add("pii", settings.pii_action, stage="input", pii=inp_kinds)
    if settings.output_pii_action in ("mask", "redact"):
        add("output_pii", settings.output_pii_action, stage="output", pii=out_kinds)
    return rules
