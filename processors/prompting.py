"""Prompt references on the request path: `extra_body.sluicegate.prompt` → rendered messages.

A caller names a registered prompt (`support@prod`, `support@3`, `support@1.2.0` or `support`)
and its variables; admission renders it before routing, so the context-window check, the
limits, the guardrails and the cache all see the prompt as the model will. The journal
(sg.requests) keeps what the caller sent — the reference and the variables — so a replay can
render the same request against another version; the InferenceTask carries the rendered
messages and `prompt_ref` (`name@<version>`), which every later event (ResponseReady,
CostEntry) repeats, so analytics can group answers by prompt version.

A live A/B test (`prompts.experiments`) replaces the referenced label by one of its variants,
chosen by a stable hash of the user (or the request), before rendering.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sluicegate.processors.eval_stats import assign_variant
from sluicegate.processors.request_options import request_options
from sluicegate.schemas.models import ChatMessage, RequestReceived
from sluicegate.settings import PromptExperiment, PromptSettings


class PromptRequestError(Exception):
    """The request's prompt reference cannot be rendered: a 400 with `code`."""

    def __init__(self, code: str, message: str, *, http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class Rendered(Protocol):
    """What a renderer returns: the messages the model sees and the version that made them."""

    @property
    def messages(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def prompt_ref(self) -> str: ...


# (tenant_id, ref, variables, the caller's own messages) → rendered; raises with `.code`.
Renderer = Callable[[str, str, Mapping[str, Any], list[dict[str, Any]]], Rendered]


@dataclass(frozen=True, slots=True)
class PromptReference:
    ref: str
    variables: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Prompted:
    """The request as rendered, the version used, and what the admission span records."""

    request: RequestReceived
    prompt_ref: str
    attributes: dict[str, str] = field(default_factory=dict)


def prompt_reference(request: RequestReceived) -> PromptReference | None:
    """The caller's `{"prompt": ..., "variables": {...}}`, strictly validated; None if absent."""
    extra_json = request.params.extra_json
    if not extra_json or '"prompt"' not in extra_json:  # cheap: most requests name none
        return None
    options = request_options(extra_json)  # routing reports malformed extra fields
    if options.get("prompt") is None:
        return None
    ref = options["prompt"]
    if not isinstance(ref, str) or not ref.strip():
        raise PromptRequestError("invalid_prompt_reference", "`prompt` must be `name[@ref]`")
    variables = options.get("variables") or {}
    if not isinstance(variables, dict):
        raise PromptRequestError("invalid_prompt_variables", "`variables` must be an object")
    return PromptReference(ref.strip(), variables)


def experiment_for(
    experiments: Sequence[PromptExperiment], tenant_id: str, ref: str
) -> PromptExperiment | None:
    name, _, label = ref.partition("@")
    for experiment in experiments:
        if experiment.prompt != name or (label or "default") != experiment.label:
            continue
        if experiment.tenant_id is None or experiment.tenant_id == tenant_id:
            return experiment
    return None


def _message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    return [message.model_dump(exclude_none=True) for message in messages]


def _chat_message(message: Mapping[str, Any]) -> ChatMessage:
    return ChatMessage(**{k: message[k] for k in ChatMessage.model_fields if k in message})


_NOT_FOUND = frozenset({"prompt_not_found", "prompt_version_not_found", "prompt_label_not_found"})


def registry_renderer(registry: Any, *, embed: Any = None) -> Renderer:
    """A renderer over the registry (processors/prompt_registry.py): its typed errors become
    the caller's 404 (no such prompt, version or label) or 400 (bad variables, a template that
    fails to render)."""
    from sluicegate.processors.prompt_registry import ExampleEmbeddings, render
    from sluicegate.processors.prompt_templates import PromptError

    embeddings = ExampleEmbeddings()

    def rendered(
        tenant_id: str, ref: str, variables: Mapping[str, Any], messages: list[dict[str, Any]]
    ) -> Rendered:
        try:
            return render(
                registry,
                tenant_id,
                ref,
                variables,
                user_messages=messages,
                embed=embed,
                embeddings=embeddings,
            )
        except PromptError as error:
            status = 404 if error.code in _NOT_FOUND else getattr(error, "http_status", 400)
            raise PromptRequestError(error.code, error.message, http_status=status) from None

    return rendered


class PromptStage:
    """RequestReceived → the request with its prompt rendered, or None when it names none."""

    def __init__(self, *, renderer: Renderer, settings: PromptSettings) -> None:
        self._render = renderer
        self._settings = settings

    def run(self, request: RequestReceived) -> Prompted | None:
        reference = prompt_reference(request)
        if reference is None:
            return None
        ref = reference.ref
        attributes: dict[str, str] = {}
        experiment = experiment_for(self._settings.experiments, request.tenant_id, ref)
        if experiment is not None:
            by_user = experiment.split_by == "user" and request.user
            unit = request.user if by_user else request.request_id
            variant = assign_variant(str(unit), experiment.variants, experiment.name)
            ref = f"{experiment.prompt}@{variant}"
            attributes |= {"experiment": experiment.name, "variant": variant}
        rendered = self._render(
            request.tenant_id, ref, reference.variables, _message_dicts(request.messages)
        )
        messages = [_chat_message(message) for message in rendered.messages]
        attributes["prompt_ref"] = rendered.prompt_ref
        return Prompted(
            request.model_copy(update={"messages": messages}), rendered.prompt_ref, attributes
        )
