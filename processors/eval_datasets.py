"""Eval datasets: the YAML file a team keeps next to its prompts, and the cases in it.

A dataset is a name, a description, the matchers every case is scored by, and the cases. A
case's input is what the gateway is asked: either literal OpenAI chat ``messages`` or a
registered prompt (``prompt: name@label`` plus ``variables``), so a dataset can follow a prompt
through its versions without copying its text. ``expected`` is a string or an object (for
``field_accuracy`` and ``json_structure``). The format, with an example, is in docs/evals.md.

Matchers are kept as their config dicts here and built by
:func:`~sluicegate.processors.eval_matchers.build_matcher`; :func:`load_dataset` checks every
config up front, so a typo in a regex or an unknown option fails at load with the file and the
case named, not halfway through a paid run. A case's matcher replaces the dataset's default of
the same name (a matcher's name is its ``name`` or else its ``type``) and adds to the others;
``inherit_matchers: false`` drops the defaults for that case.

:func:`case_from_interaction` turns a recorded request and its answer into a case ("keep this
interaction as a test"): the recorded answer becomes ``expected``.

Errors: :class:`DatasetError` (a ``ValueError`` under ``SluicegateError``) with ``path`` and
``case_id`` when they are known.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sluicegate.errors import SluicegateError

__all__ = [
    "CaseInput",
    "DatasetError",
    "EvalCase",
    "EvalDataset",
    "case_from_interaction",
    "dump_dataset",
    "load_dataset",
    "matcher_name",
    "parse_dataset",
]

PROMPT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}@[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""``name@ref``: a registered prompt's name (the prompt registry's rule) and a label
(``production``), a version (``3``) or a semver (``1.2.0``)."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class DatasetError(SluicegateError, ValueError):
    """A dataset file or case that cannot be used; ``path`` and ``case_id`` say where."""

    def __init__(
        self, message: str, *, path: str | None = None, case_id: str | None = None
    ) -> None:
        where = ", ".join(
            part
            for part in (f"{path}" if path else "", f"case {case_id!r}" if case_id else "")
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.case_id = case_id


def matcher_name(config: Mapping[str, Any]) -> str:
    """The metric a matcher config reports under: its ``name``, else its ``type``."""
    return str(config.get("name") or config.get("type") or "")


class CaseInput(BaseModel):
    """What the gateway is asked: literal chat messages, or a registered prompt to render."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = Field(default=None, description="name@label of a registered prompt")
    variables: dict[str, Any] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _chat_shaped(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("messages is empty")
        for index, message in enumerate(value):
            if message.get("role") not in ROLES:
                raise ValueError(f"messages[{index}].role must be one of {sorted(ROLES)}")
            if "content" not in message:
                raise ValueError(f"messages[{index}] has no content")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_ref(cls, value: str | None) -> str | None:
        if value is not None and not PROMPT_REF.match(value):
            raise ValueError(f"prompt must be name@label, got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CaseInput:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("input needs exactly one of messages or prompt")
        if self.messages is not None and self.variables:
            raise ValueError("variables only go with prompt")
        return self

    def question(self) -> str:
        """The text a judge is shown as the question: the last user message, or the prompt
        reference with its variables (the runner may pass the rendered prompt instead)."""
        if self.messages is None:
            variables = json.dumps(self.variables, sort_keys=True, ensure_ascii=False)
            return f"(prompt {self.prompt} with variables {variables})"
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _text_of(message.get("content"))
        return _text_of(self.messages[-1].get("content"))


def _text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of a multi-part content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return "" if content is None else str(content)


def _typed_configs(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Matcher configs need a ``type``; the rest is checked by the matcher registry."""
    for index, config in enumerate(value):
        if not isinstance(config.get("type"), str):
            raise ValueError(f"matchers[{index}] has no type")
    return value


MatcherConfigs = Annotated[list[dict[str, Any]], AfterValidator(_typed_configs)]


class EvalCase(BaseModel):
    """One test case: the input, what a good answer looks like, and how it is scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    input: CaseInput
    expected: str | dict[str, Any] | list[Any] | None = None
    matchers: MatcherConfigs = Field(default_factory=list)
    inherit_matchers: bool = True
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class EvalDataset(BaseModel):
    """A named set of cases with the matchers every case is scored by unless it says not to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    matchers: MatcherConfigs = Field(default_factory=list)
    cases: list[EvalCase] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> EvalDataset:
        seen: set[str] = set()
        for case in self.cases:
            if case.id in seen:
                raise ValueError(f"case id {case.id!r} appears twice")
            seen.add(case.id)
        return self

    def matchers_for(self, case: EvalCase) -> list[dict[str, Any]]:
        """The matcher configs that score ``case``: the defaults (unless the case opts out),
        each replaced by the case's matcher of the same name, then the case's others."""
        own = {matcher_name(config): config for config in case.matchers}
        merged: list[dict[str, Any]] = []
        if case.inherit_matchers:
            merged = [own.pop(matcher_name(c), c) for c in self.matchers]
        merged.extend(c for c in case.matchers if matcher_name(c) in own)
        return merged

    def case(self, case_id: str) -> EvalCase:
        """The case with this id (``DatasetError`` if there is none)."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise DatasetError("no such case", case_id=case_id)


def load_dataset(path: str | Path, *, check_matchers: bool = True) -> EvalDataset:
    """Read and validate a dataset file; every error names the file and, when it is about a
    case, the case id. With ``check_matchers`` every matcher config is built once (without
    calling any model) so bad options fail here."""
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise DatasetError(f"cannot read: {error}", path=where) from error
    except yaml.YAMLError as error:
        raise DatasetError(f"not valid YAML: {error}", path=where) from error
    return parse_dataset(raw, path=where, check_matchers=check_matchers)


def parse_dataset(raw: Any, *, path: str | None = None, check_matchers: bool = True) -> EvalDataset:
    """Validate an already-parsed dataset document (what :func:`load_dataset` does after YAML)."""
    if not isinstance(raw, dict):
        raise DatasetError("a dataset is a mapping with name and cases", path=path)
    try:
        dataset = EvalDataset.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        loc = first["loc"]
        case_id = _case_id_at(raw, loc)
        field = ".".join(str(part) for part in loc)
        raise DatasetError(f"{field}: {first['msg']}", path=path, case_id=case_id) from error
    if check_matchers:
        _check_matchers(dataset, path)
    return dataset


def _case_id_at(raw: Mapping[str, Any], loc: Sequence[Any]) -> str | None:
    """The id of the case a validation error points into (its index if it has no id)."""
    if len(loc) < 2 or loc[0] != "cases" or not isinstance(loc[1], int):
        return None
    cases = raw.get("cases")
    if not isinstance(cases, list) or loc[1] >= len(cases):
        return None
    case = cases[loc[1]]
    if isinstance(case, dict) and case.get("id"):
        return str(case["id"])
    return f"#{loc[1]}"


def _check_matchers(dataset: EvalDataset, path: str | None) -> None:
    # Imported here: eval_matchers types its arguments with EvalCase from this module.
    from sluicegate.processors.eval_matchers import MatcherConfigError, validate_matcher_config

    for config in dataset.matchers:
        try:
            validate_matcher_config(config)
        except MatcherConfigError as error:
            raise DatasetError(f"matchers: {error}", path=path) from error
    for case in dataset.cases:
        for config in case.matchers:
            try:
                validate_matcher_config(config)
            except MatcherConfigError as error:
                raise DatasetError(f"matchers: {error}", path=path, case_id=case.id) from error


def dump_dataset(dataset: EvalDataset, path: str | Path | None = None) -> str:
    """The dataset as YAML (defaults left out so the file stays as short as a hand-written
    one); written to ``path`` when given. ``load_dataset`` reads it back equal."""
    document = dataset.model_dump(mode="json", exclude_defaults=True)
    document.setdefault("cases", [])
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    if yaml.safe_load(text) != document:
        # PyYAML writes a few line-break characters (U+0085, U+2028, U+2029) raw and reads them
        # back as whitespace; escaping all non-ASCII is uglier but exact.
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=False, width=100)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def case_from_interaction(
    request_messages: Sequence[Mapping[str, Any]],
    response_text: str,
    case_id: str,
    *,
    matcher: str = "semantic_similarity",
    threshold: float | None = None,
    tags: Iterable[str] = (),
    metadata: Mapping[str, Any] | None = None,
) -> EvalCase:
    """A case from a recorded interaction: the request's messages as input, the recorded answer
    as ``expected``, scored by ``matcher`` (``semantic_similarity`` by default, since a model
    rarely repeats itself word for word; ``exact`` for deterministic answers)."""
    if matcher not in {"semantic_similarity", "exact"}:
        raise DatasetError(
            f"matcher must be semantic_similarity or exact, got {matcher!r}", case_id=case_id
        )
    config: dict[str, Any] = {"type": matcher}
    if threshold is not None:
        config["threshold"] = threshold
    try:
        return EvalCase(
            id=case_id,
            input=CaseInput(messages=[dict(message) for message in request_messages]),
            expected=response_text,
            matchers=[config],
            tags=list(tags),
            metadata=dict(metadata or {}),
        )
    except ValidationError as error:
        raise DatasetError(str(error.errors()[0]["msg"]), case_id=case_id) from error
