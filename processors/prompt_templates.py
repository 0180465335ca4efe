"""Prompt templates: a sandboxed Jinja2 engine, typed variable declarations, and the errors of
the whole prompt registry.

A template is checked when it is published, not when the first request hits it: a syntax error,
a variable the template uses but does not declare, `include`/`import`/`extends` (there is no
loader: a template reaches nothing but its variables) or an attribute starting with `_` (the
usual first step of a sandbox escape) refuse the version. At render time the caller's values
are validated against the declarations first (type, required, default, enum; undeclared names
are an error too), so a wrong call is one `PromptVariableError` naming every bad variable, not
the first `UndefinedError` Jinja happens to hit. Rendering runs in Jinja's
`ImmutableSandboxedEnvironment` (no attribute writes, no mutating methods) with
`StrictUndefined`, autoescape off (prompts are not HTML), `*` on strings and lists bounded,
`range` steps budgeted per render and loops nested at most `MAX_LOOP_NESTING` deep, and the
output streamed against a size cap, so a hostile template cannot exhaust memory or spin.

The errors of the prompt registry, all here because this module is the bottom of its import
graph (every error has a `code` the API and the request path answer with, and `http_status`):

    PromptError (SluicegateError)            code, message, http_status
    ├── PromptInvalidError                   prompt_invalid (422): the version cannot be published
    │                                        (syntax, undeclared use, bad declaration, include
    │                                        cycle or depth, unknown reasoning style …)
    ├── PromptVariableError                  prompt_variables_invalid (400): the caller's values;
    │                                        `problems` names each variable and why
    ├── PromptRenderError                    prompt_unsafe / prompt_too_large (400): the sandbox
    │                                        refused an operation, or the output exceeds the cap
    ├── PromptNotFoundError                  prompt_not_found (404)
    ├── PromptVersionNotFoundError           prompt_version_not_found (404)
    ├── PromptLabelNotFoundError             prompt_label_not_found (404)
    └── NoChangeError                        prompt_no_change (409): nothing differs from the
                                             latest version, so no new version is made
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from jinja2 import (
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.environment import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError, safe_range

from sluicegate.errors import SluicegateError

MAX_OUTPUT_CHARS = 100_000  # per rendered message
MAX_TEMPLATE_CHARS = 64_000
MAX_RANGE_STEPS = 100_000  # `range` items per render, all loops together
MAX_LOOP_NESTING = 3
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ROLES = ("system", "user", "assistant")

VariableType = Literal["string", "integer", "number", "boolean", "array", "object"]
VARIABLE_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
}


# -- errors ------------------------------------------------------------------------------------


class PromptError(SluicegateError):
    """Root of the prompt registry's errors (tree in the module docstring)."""

    code = "prompt_error"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class PromptInvalidError(PromptError):
    code = "prompt_invalid"
    http_status = 422


@dataclass(frozen=True, slots=True)
class VariableProblem:
    """One bad variable: its name and what is wrong (missing, undeclared, type, enum)."""

    name: str
    reason: str


class PromptVariableError(PromptError):
    code = "prompt_variables_invalid"
    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        problems: tuple[VariableProblem, ...] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.problems = problems


class PromptRenderError(PromptError):
    code = "prompt_render_failed"
    http_status = 400


class PromptNotFoundError(PromptError):
    code = "prompt_not_found"
    http_status = 404


class PromptVersionNotFoundError(PromptError):
    code = "prompt_version_not_found"
    http_status = 404


class PromptLabelNotFoundError(PromptError):
    code = "prompt_label_not_found"
    http_status = 404


class NoChangeError(PromptError):
    code = "prompt_no_change"
    http_status = 409


# -- declarations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """A declared variable. Without `required`, a variable is required unless it has a
    default: a template should not render half-filled because someone forgot a value."""

    name: str
    type: VariableType = "string"
    required: bool = True
    default: Any = None
    description: str = ""
    enum: tuple[Any, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "required": self.required}
        if self.default is not None:
            out["default"] = self.default
        if self.description:
            out["description"] = self.description
        if self.enum is not None:
            out["enum"] = list(self.enum)
        return out


def _type_error(spec_type: str, value: Any) -> str | None:
    """Why `value` is not of `spec_type` (None when it is). bool is not a number here."""
    allowed = VARIABLE_TYPES[spec_type]
    if isinstance(value, bool) and spec_type != "boolean":
        return f"expected {spec_type}, got boolean"
    if not isinstance(value, allowed):
        return f"expected {spec_type}, got {_json_type(value)}"
    return None


def _json_type(value: Any) -> str:
    for name, kinds in VARIABLE_TYPES.items():
        if isinstance(value, kinds) and not (isinstance(value, bool) and name != "boolean"):
            return name
    return "null" if value is None else type(value).__name__


def parse_variables(raw: Mapping[str, Any] | None) -> dict[str, VariableSpec]:
    """Declarations as published (`name -> {type, required, default, description, enum}`),
    checked: a bad declaration is a PromptInvalidError naming each bad entry."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PromptInvalidError("`variables` must map variable names to declarations.")
    specs: dict[str, VariableSpec] = {}
    problems: list[str] = []
    for name, decl in raw.items():
        try:
            specs[name] = _declaration(name, decl)
        except ValueError as error:
            problems.append(f"`{name}`: {error}")
    if problems:
        raise PromptInvalidError("Invalid variable declarations: " + "; ".join(problems))
    return specs


def _declaration(name: str, decl: Any) -> VariableSpec:
    if not isinstance(name, str) or not VARIABLE_NAME.match(name):
        raise ValueError("not a variable name (letters, digits, `_`; not starting with a digit)")
    if decl is None:
        decl = {}
    if isinstance(decl, str):  # shorthand: `topic: string`
        decl = {"type": decl}
    if not isinstance(decl, Mapping):
        raise ValueError("a declaration is an object {type, required, default, description}")
    unknown = sorted(set(decl) - {"type", "required", "default", "description", "enum"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}")
    kind = decl.get("type", "string")
    if kind not in VARIABLE_TYPES:
        raise ValueError(f"type must be one of {sorted(VARIABLE_TYPES)}, not {kind!r}")
    default = decl.get("default")
    required = decl.get("required", default is None)
    if not isinstance(required, bool):
        raise ValueError("`required` must be true or false")
    enum = decl.get("enum")
    if enum is not None:
        if not isinstance(enum, list) or not enum:
            raise ValueError("`enum` must be a non-empty list")
        bad = [v for v in enum if _type_error(kind, v)]
        if bad:
            raise ValueError(f"`enum` values {bad!r} are not of type {kind}")
    if default is not None:
        reason = _type_error(kind, default)
        if reason:
            raise ValueError(f"default: {reason}")
        if enum is not None and default not in enum:
            raise ValueError(f"default {default!r} is not one of the enum")
    description = decl.get("description") or ""
    if not isinstance(description, str):
        raise ValueError("`description` must be a string")
    return VariableSpec(
        name=name,
        type=kind,
        required=required,
        default=default,
        description=description,
        enum=tuple(enum) if enum is not None else None,
    )


def variables_json(specs: Mapping[str, VariableSpec]) -> str | None:
    """The declarations as `variables_json` (sorted, so equal declarations compare equal)."""
    if not specs:
        return None
    return json.dumps({n: s.to_json() for n, s in sorted(specs.items())}, sort_keys=True)


def validate_values(
    declared: Mapping[str, VariableSpec], values: Mapping[str, Any]
) -> dict[str, Any]:
    """The values to render with: the caller's, checked against the declarations, with the
    defaults filled in. Every problem is collected before raising, so the caller fixes its
    call once. An optional variable without a default stays absent (`is defined` in Jinja)."""
    problems: list[VariableProblem] = []
    for name in sorted(set(values) - set(declared)):
        problems.append(VariableProblem(name, "not declared by the prompt"))
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        if name not in values or values[name] is None:
            if spec.default is not None:
                out[name] = spec.default
            elif spec.required:
                problems.append(VariableProblem(name, f"required ({spec.type}) and missing"))
            continue
        value = values[name]
        reason = _type_error(spec.type, value)
        if reason is None and spec.enum is not None and value not in spec.enum:
            reason = f"must be one of {list(spec.enum)!r}"
        if reason is not None:
            problems.append(VariableProblem(name, reason))
            continue
        out[name] = value
    if problems:
        listed = "; ".join(f"`{p.name}`: {p.reason}" for p in problems)
        raise PromptVariableError(f"Invalid prompt variables: {listed}", problems=tuple(problems))
    return out


# -- chat compositions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatPart:
    """One entry of a chat composition: a role and its template, or an included prompt."""

    role: str = ""
    template: str = ""
    include: str | None = None

    def to_json(self) -> dict[str, str]:
        if self.include is not None:
            return {"include": self.include}
        return {"role": self.role, "template": self.template}


def parse_messages(raw: Any) -> tuple[ChatPart, ...]:
    """A chat composition: a non-empty list of `{role, template}` or `{include: name@ref}`."""
    if not isinstance(raw, list) or not raw:
        raise PromptInvalidError("A chat prompt needs `messages`: a non-empty list.")
    parts: list[ChatPart] = []
    for index, entry in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(entry, Mapping):
            raise PromptInvalidError(f"{where} must be an object.")
        if "include" in entry:
            if set(entry) != {"include"} or not isinstance(entry["include"], str):
                raise PromptInvalidError(f"{where}: an include is only {{include: 'name@ref'}}.")
            parts.append(ChatPart(include=entry["include"].strip()))
            continue
        role, template = entry.get("role"), entry.get("template", entry.get("content"))
        if role not in ROLES:
            raise PromptInvalidError(f"{where}.role must be one of {list(ROLES)}.")
        if not isinstance(template, str):
            raise PromptInvalidError(f"{where}.template must be a string.")
        unknown = sorted(set(entry) - {"role", "template", "content"})
        if unknown:
            raise PromptInvalidError(f"{where}: unknown keys {unknown}.")
        parts.append(ChatPart(role=role, template=template))
    return tuple(parts)


# -- the engine --------------------------------------------------------------------------------


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, plus bounds on `*` (`'x' * 10**9` would allocate before any cap)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > MAX_OUTPUT_CHARS:
                        raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


# Steps of `range` left in the current render: nested loops multiply, and an empty loop body
# writes nothing the output cap would catch.
_RANGE_BUDGET: ContextVar[list[int]] = ContextVar("prompt_range_budget")


def _budgeted_range(*args: int) -> Iterator[int]:
    budget = _RANGE_BUDGET.get(None)
    for item in safe_range(*args):
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise SecurityError(f"loops ran more than {MAX_RANGE_STEPS} range steps")
        yield item


_ENV = _Environment(undefined=StrictUndefined, autoescape=False, loader=None)
_ENV.globals["range"] = _budgeted_range
_FORBIDDEN = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


@lru_cache(maxsize=2048)
def _compiled(source: str) -> Template:
    """Compiled templates by source: versions are immutable, so a text compiles once."""
    return _ENV.from_string(source)


def check_template(source: str, declared: Mapping[str, VariableSpec], *, where: str) -> set[str]:
    """Publish-time check of one template; returns the variables it uses. Refuses syntax
    errors, undeclared variables, include/import/extends and `_` attributes."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise PromptInvalidError(f"{where}: longer than {MAX_TEMPLATE_CHARS} characters.")
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as error:
        raise PromptInvalidError(
            f"{where}: template syntax error on line {error.lineno}: {error.message}"
        ) from None
    for node in tree.find_all(_FORBIDDEN):
        raise PromptInvalidError(
            f"{where}: `{type(node).__name__.lower()}` is not allowed (a template reaches only "
            "its variables; compose prompts with a chat `include`)."
        )
    for getattr_node in tree.find_all(nodes.Getattr):
        if getattr_node.attr.startswith("_"):
            raise PromptInvalidError(f"{where}: attribute `{getattr_node.attr}` is not allowed.")
    if _loop_depth(tree) > MAX_LOOP_NESTING:
        raise PromptInvalidError(f"{where}: loops nest deeper than {MAX_LOOP_NESTING}.")
    used = meta.find_undeclared_variables(tree)
    undeclared = sorted(used - set(declared))
    if undeclared:
        raise PromptInvalidError(
            f"{where}: uses undeclared variables {undeclared}; declare them under `variables`."
        )
    return used


def _loop_depth(node: nodes.Node) -> int:
    inner = max((_loop_depth(child) for child in node.iter_child_nodes()), default=0)
    return inner + 1 if isinstance(node, nodes.For) else inner


def render_template(
    source: str, values: Mapping[str, Any], *, max_chars: int = MAX_OUTPUT_CHARS
) -> str:
    """Render one template in the sandbox, with values already validated. The output is
    streamed and cut off at `max_chars`; sandbox refusals become PromptRenderError."""
    template = _compiled(source)
    pieces: list[str] = []
    size = 0
    token = _RANGE_BUDGET.set([MAX_RANGE_STEPS])
    try:
        for piece in template.generate(dict(values)):
            size += len(piece)
            if size > max_chars:
                raise PromptRenderError(
                    f"The rendered prompt exceeds {max_chars} characters.", code="prompt_too_large"
                )
            pieces.append(piece)
    except SecurityError as error:
        raise PromptRenderError(
            f"The template tried an unsafe operation: {error}", code="prompt_unsafe"
        ) from None
    except UndefinedError as error:  # an optional variable used without `is defined`
        raise PromptVariableError(f"Invalid prompt variables: {error.message}") from None
    except (TemplateError, TypeError, ValueError, ArithmeticError, RecursionError) as error:
        raise PromptRenderError(f"The template failed on these values: {error}") from None
    finally:
        _RANGE_BUDGET.reset(token)
    return "".join(pieces)
