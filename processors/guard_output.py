"""The output guard: what a model answered, checked before the caller (and the cache) get it.

Three filters, each producing facts the policy engine decides on (processors/policy.py):

* **PII leakage**: :func:`~sluicegate.processors.guard_pii.scan_pii` over the answer's text and
  over the string values of its tool-call arguments (parsed, so JSON escapes such as ``\\n``
  do not hide a value next to them, and written back as JSON, so a masked call still parses).
* **Banned topics**: :class:`~sluicegate.processors.guard_topics.TopicMatcher` over the text and
  the arguments; the tenant's topics only.
* **Structured output**: when the request asked for ``response_format`` ``json_schema``, the
  answer must parse and validate against the schema (jsonschema, the schema's own draft or
  2020-12; validators are cached per schema, and jsonschema-rs, when installed, answers the
  common "valid" case ~200x faster); for ``json_object`` it must parse as a JSON
  object. The error names the failing path (``$.user.address``) and what is wrong. Answers that
  call tools, and the ``text`` format, are not checked.

The decision is data (:class:`OutputDecision`): the possibly rewritten message, span attributes,
the policy decision (rule, action, reason), and a block (code, message, HTTP status) when the
answer must not be served. Nothing is skipped silently: a filter that is not needed by any
rule for the tenant is not run, and one that cannot run (an invalid schema) says so in the
attributes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import jsonschema
from jsonschema.exceptions import best_match

try:  # an optional accelerator: Rust, ~200x faster on the common case (a valid answer)
    import jsonschema_rs
except ImportError:  # pragma: no cover - depends on the environment
    jsonschema_rs = None  # type: ignore[assignment]

from sluicegate.processors.guard_pii import PiiFinding, pii_engine, redact, scan_pii
from sluicegate.processors.policy import Facts, PolicyDecision, PolicyEngine, Principal
from sluicegate.schemas.models import ChatMessage, InferenceTask, RequestReceived
from sluicegate.settings import GuardrailsSettings

__all__ = [
    "JsonCheck",
    "OutputBlock",
    "OutputContext",
    "OutputDecision",
    "OutputGuard",
    "TextVerdict",
    "check_json",
]

_MAX_ERROR = 300
OUTPUT_BLOCK_STATUS = 502
"""A withheld answer is the upstream's failure, not the caller's: 502 (type upstream_error)."""


@dataclass(frozen=True, slots=True)
class OutputContext:
    """What the guard needs to know about the request the answer is for."""

    tenant_id: str
    model: str
    response_format_json: str | None = None
    principal: Principal | None = None

    @classmethod
    def of(
        cls, source: InferenceTask | RequestReceived, principal: Principal | None = None
    ) -> OutputContext:
        return cls(
            tenant_id=source.tenant_id,
            model=source.model,
            response_format_json=source.params.response_format_json,
            principal=principal,
        )


@dataclass(frozen=True, slots=True)
class JsonCheck:
    """The structured-output verdict: ``error`` says where and what when ``valid`` is False."""

    expected: Literal["json_object", "json_schema"]
    valid: bool
    error: str | None = None
    schema_name: str | None = None


@dataclass(frozen=True, slots=True)
class OutputBlock:
    """The answer must not be served; the finish stage answers with this error instead."""

    code: str
    message: str
    http_status: int = OUTPUT_BLOCK_STATUS
    error_type: str = "upstream_error"


@dataclass(frozen=True, slots=True)
class OutputDecision:
    message: ChatMessage
    policy: PolicyDecision
    attributes: dict[str, str] = field(default_factory=dict)
    block: OutputBlock | None = None

    @property
    def rule(self) -> str:
        return self.policy.rule

    @property
    def rewritten(self) -> bool:
        return self.policy.rewrites


@dataclass(frozen=True, slots=True)
class TextVerdict:
    """The decision on a piece of an answer (its message is the piece, not rewritten), with
    where the PII found in it is: a streamed answer's hold-back releases text around these
    spans, never through one."""

    decision: OutputDecision
    findings: list[PiiFinding]

    @property
    def policy(self) -> PolicyDecision:
        return self.decision.policy

    @property
    def block(self) -> OutputBlock | None:
        return self.decision.block


class OutputGuard:
    """Checks a completion (text and tool calls) against the tenant's output rules."""

    def __init__(self, *, settings: GuardrailsSettings, engine: PolicyEngine | None = None) -> None:
        self._engine = engine or PolicyEngine.from_settings(settings)
        self._pii = pii_engine(settings)  # guardrails.pii_engine: builtin or presidio
        self.stream_mode = settings.output_stream_mode
        self.window_chars = settings.output_stream_window_chars
        self.overlap_chars = settings.output_stream_overlap_chars

    @property
    def active(self) -> bool:
        """Whether any tenant's output rules need checking (skip the guard entirely if not)."""
        return self._engine.active("output")

    def active_for(self, tenant: str) -> bool:
        return self._engine.needs("output", tenant).any

    def applies_to(self, context: OutputContext) -> bool:
        """Whether this answer has anything to check: JSON rules only matter when the request
        asked for structured output, so plain answers under JSON-only rules skip the guard (and
        its span) entirely."""
        needs = self._engine.needs("output", context.tenant_id)
        if needs.pii_kinds or needs.topics or needs.texts or needs.injection:
            return True
        return needs.json and context.response_format_json is not None

    def holds_back(self, context: OutputContext) -> bool:
        """Whether a stream of this answer must be held back (guard_stream.py): in `holdback`
        mode, when a rule of the tenant's can block or rewrite on what the text holds. Flag-only
        and JSON-only rules have nothing to stop mid-stream, so their streams pass through."""
        if self.stream_mode != "holdback":
            return False
        needs = self._engine.needs("output", context.tenant_id)
        return needs.acts_on_text and bool(needs.pii_kinds or needs.topics or needs.texts)

    def check_text(self, text: str, context: OutputContext) -> TextVerdict:
        """The decision on a piece of an answer as it streams. Structured output is not checked
        (a piece of JSON is not JSON; the whole answer is checked at the end) and the text is
        not rewritten here: the caller rewrites what it releases, with `findings`."""
        message = ChatMessage(role="assistant", content=text)
        piece = OutputContext(context.tenant_id, context.model, None, context.principal)
        decision, pii = self._evaluate(message, piece, None, rewrite=False)
        return TextVerdict(decision, pii.get(text, []))

    def check(
        self, message: ChatMessage, context: OutputContext, *, finish_reason: str | None = None
    ) -> OutputDecision:
        return self._evaluate(message, context, finish_reason, rewrite=True)[0]

    def _evaluate(
        self,
        message: ChatMessage,
        context: OutputContext,
        finish_reason: str | None,
        *,
        rewrite: bool,
    ) -> tuple[OutputDecision, dict[str, list[PiiFinding]]]:
        principal = context.principal or Principal(tenant=context.tenant_id)
        needs = self._engine.needs("output", principal.tenant)
        text = message.content or ""
        calls = _parse_calls(message.tool_calls_json)
        attributes: dict[str, str] = {}

        pii: dict[str, list[PiiFinding]] = {}
        if needs.pii_kinds:
            scan = self._pii.scan
            pii = {s: scan(s, needs.pii_kinds) for s in {text, *_arg_strings(calls)} if s}
        counts = Counter(f.kind for found in pii.values() for f in found)
        if counts:
            attributes["output_pii"] = ",".join(f"{k}:{n}" for k, n in sorted(counts.items()))

        topics = ()
        if needs.topics:
            whole = "\n".join([text, *_arg_strings(calls)])
            topics = self._engine.topic_matcher.match(whole, tenant=principal.tenant)
            if topics:
                attributes["topics"] = ",".join(t.name for t in topics)
                attributes["topic_terms"] = "; ".join(t.explain() for t in topics)

        check = None
        if needs.json and not calls:
            try:
                check = check_json(text, context.response_format_json, finish_reason)
            except ValueError as error:  # the request's schema, not the answer, is at fault
                attributes["json_check"] = f"skipped: {error}"
            if check is not None:
                attributes["json_valid"] = str(check.valid).lower()
                if check.error:
                    attributes["json_error"] = check.error

        facts = Facts(
            principal=principal,
            model=context.model,
            pii=dict(counts),
            topics=topics,
            json_valid=check.valid if check is not None else None,
            json_error=check.error if check is not None else None,
            texts=(text, *_arg_strings(calls)) if needs.texts else (),
        )
        decision = self._engine.evaluate("output", facts)
        attributes.update(decision.attributes())
        if counts:
            attributes["output_pii_action"] = decision.action
        if decision.blocked:
            block = OutputBlock(decision.code or "policy_violation", decision.message or "")
            return OutputDecision(message, decision, attributes, block), pii
        if decision.rewrites and rewrite:
            message = _rewritten(message, calls, decision, pii)
        return OutputDecision(message, decision, attributes), pii


# ----------------------------------------------------------------------------- JSON


def check_json(
    text: str | None, response_format_json: str | None, finish_reason: str | None = None
) -> JsonCheck | None:
    """Check ``text`` against the request's ``response_format``; None when it asked for none.

    Raises ValueError when the response_format itself is unusable (not JSON, or a schema that
    is not a valid JSON Schema): that is the request's fault and says nothing of the answer.
    """
    if not response_format_json:
        return None
    fmt = _format(response_format_json)
    if isinstance(fmt, str):
        raise ValueError(fmt)
    if fmt is None:
        return None
    kind, name, validator, fast = fmt
    hint = " (cut short: finish_reason=length)" if finish_reason == "length" else ""
    try:
        document = json.loads(text or "")
    except ValueError as error:
        fenced = " (wrapped in a ``` code fence)" if (text or "").lstrip().startswith("```") else ""
        return JsonCheck(kind, False, f"not valid JSON: {error}{fenced}{hint}", name)
    if validator is None:
        if not isinstance(document, dict):
            return JsonCheck(kind, False, f"$: expected a JSON object, got {_kind(document)}", name)
        return JsonCheck(kind, True, schema_name=name)
    if fast is not None and fast.is_valid(document):
        return JsonCheck(kind, True, schema_name=name)
    error = best_match(validator.iter_errors(document))  # jsonschema has the last word
    if error is None:
        return JsonCheck(kind, True, schema_name=name)
    return JsonCheck(kind, False, _tidy(f"{error.json_path}: {error.message}") + hint, name)


_Format = tuple[Literal["json_object", "json_schema"], str | None, Any, Any]


@lru_cache(maxsize=256)
def _format(response_format_json: str) -> _Format | str | None:
    """The parsed response_format with its compiled validator, once per distinct string
    (an application sends the same one every time); a str is why it is unusable."""
    try:
        fmt = json.loads(response_format_json)
    except ValueError as error:
        return f"response_format is not JSON: {error}"
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    spec = spec if isinstance(spec, dict) else {}
    name = spec.get("name") if isinstance(spec.get("name"), str) else None
    schema = spec.get("schema")
    if schema is None:
        return kind, name, None, None
    if not isinstance(schema, dict):
        return "response_format json_schema.schema is not an object"
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as error:
        return f"the requested JSON schema is invalid: {error.message}"
    return kind, name, cls(schema), _fast_validator(schema)


def _fast_validator(schema: dict[str, Any]) -> Any:
    """jsonschema-rs for the yes-answer when installed (formats unasserted and no network, as
    in jsonschema); a "no" is always re-checked by jsonschema, which words the error."""
    if jsonschema_rs is None:
        return None
    try:
        return jsonschema_rs.validator_for(schema, validate_formats=False, offline=True)
    except Exception:  # any refusal just means no fast path
        return None


def _tidy(error: str) -> str:
    """jsonschema quotes the offending value: keep PII out of it (it goes to the caller and the
    trace) and keep it short (an enum error lists every allowed value)."""
    error = redact(error, scan_pii(error))
    return error if len(error) <= _MAX_ERROR else error[: _MAX_ERROR - 3] + "..."


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# ----------------------------------------------------------------------------- tool calls


def _parse_calls(tool_calls_json: str | None) -> list[dict[str, Any]]:
    if not tool_calls_json:
        return []
    try:
        calls = json.loads(tool_calls_json)
    except ValueError:
        return []
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _arguments(call: dict[str, Any]) -> str | None:
    function = call.get("function")
    args = function.get("arguments") if isinstance(function, dict) else None
    return args if isinstance(args, str) else None


def _arg_strings(calls: list[dict[str, Any]]) -> Iterator[str]:
    """Every string value inside the calls' arguments (the raw text when it is not JSON)."""
    for call in calls:
        args = _arguments(call)
        if args is None:
            continue
        try:
            yield from _strings(json.loads(args))
        except ValueError:
            yield args


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _rewritten(
    message: ChatMessage,
    calls: list[dict[str, Any]],
    decision: PolicyDecision,
    pii: dict[str, list[PiiFinding]],
) -> ChatMessage:
    def fix(s: str) -> str:
        return decision.rewrite(s, pii.get(s, ()))

    update: dict[str, Any] = {}
    if message.content:
        update["content"] = fix(message.content)
    if calls:
        for call in calls:
            args = _arguments(call)
            if args is None:
                continue
            try:
                parsed = json.loads(args)
            except ValueError:
                new = fix(args)
            else:
                mapped = _map_strings(parsed, fix)
                new = args if mapped == parsed else json.dumps(mapped, ensure_ascii=False)
            call["function"] = {**call["function"], "arguments": new}
        update["tool_calls_json"] = json.dumps(calls, ensure_ascii=False)
    return message.model_copy(update=update)
