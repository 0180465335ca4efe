"""Routing: which deployment of a model alias serves one request, and in what order to fall back.

A pure, synchronous core meant to cost microseconds per decision, because admission runs it on
the hot path of every request. Everything that depends only on the catalogue is computed once in
`Router.__init__` (each alias's deployments pre-sorted for `priority` and `capability`, prices per
token, capability bitmasks); the capability filter is memoised per combination of needs (there
are only 16); a call to `route` then walks the alias's list once for context and health, and
sorts only for the two strategies whose order depends on the request (`cost`) or on live
health (`latency`).

Like resilience, it never reads a clock or global randomness: `now_ms` and the health view are
passed in, and `weighted` draws from an injected `random.Random`, so a replay with the same seed
takes the same decisions.

The request side is `needs_of`: what the request needs from a deployment (capabilities, an
estimate of its tokens) plus the caller's per-request override and priority class, read from
`params.extra_json["sluicegate"]`. A `batch` request (processors/priority.py) is routed by `cost`
unless it names a strategy: the cheapest capable deployment.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, get_args

from sluicegate.errors import ConfigurationError, SluicegateError
from sluicegate.processors.health import HealthSnapshot
from sluicegate.processors.priority import INTERACTIVE, InvalidPriority, Priority, parse_priority
from sluicegate.processors.request_options import OPTIONS_KEY
from sluicegate.schemas.models import ChatMessage, RequestReceived
from sluicegate.settings import Deployment, ModelAlias, RoutingStrategy, Settings

STRATEGIES: Final[frozenset[str]] = frozenset(get_args(RoutingStrategy))

# Token estimate (see `estimate_prompt_tokens` for why these numbers).
CHARS_PER_TOKEN: Final = 4
TOKENS_PER_MESSAGE: Final = 4
REPLY_PRIMING_TOKENS: Final = 3
IMAGE_TOKENS: Final = 765
DEFAULT_COMPLETION_TOKENS: Final = 256

OVERRIDE_KEY: Final = OPTIONS_KEY
# The `sluicegate` object carries every stage's per-request options; routing validates the whole
# object once, reads three of them (`deployment`, `strategy`, `priority`) and must not refuse the
# others (`cache`: the response cache's opt-in/opt-out; `knowledge_base`: enrichment's,
# processors/enrichment.py; `prompt` and `variables`: processors/prompting.py's).
_OVERRIDE_FIELDS: Final = frozenset(
    {"deployment", "strategy", "priority", "cache", "knowledge_base", "prompt", "variables"}
)
_JSON_MODES: Final = frozenset({"json_object", "json_schema"})

# Capability bits: a deployment is capable when (needs & ~caps) == 0.
_TOOLS: Final = 1
_JSON: Final = 2
_VISION: Final = 4
_STREAM: Final = 8
_CAPABILITY_BITS: Final = (
    (_TOOLS, "tools"),
    (_JSON, "json mode"),
    (_VISION, "vision"),
    (_STREAM, "streaming"),
)

_HTTP_STATUS: Final[Mapping[str, int]] = {
    "model_not_found": 404,
    "invalid_override": 400,
    "no_capable_deployment": 400,
    "all_breakers_open": 503,
}


class RoutingError(SluicegateError):
    """No deployment can be chosen for this request; carries what the bridge answers with.

    `code` is the machine-readable RequestRejected code, `http_status` and `error_type` are what
    the caller sees (OpenAI style), `skipped` says why each deployment of the alias was excluded
    (for the trace span), and `retry_after_s` is set for `all_breakers_open`: the time until the
    earliest breaker's cool-down ends, so the bridge can send a meaningful Retry-After.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        skipped: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = _HTTP_STATUS.get(code, 400)
        self.error_type = "server_error" if self.http_status >= 500 else "invalid_request_error"
        self.skipped: Mapping[str, str] = dict(skipped or {})
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class RouteNeeds:
    """What one request needs from a deployment, and what the caller asked for explicitly.

    `override_deployment` / `override_strategy` / `priority` come from
    `params.extra_json["sluicegate"]` (the bridge maps its routing headers into the same place).
    """

    prompt_tokens: int
    completion_tokens: int = DEFAULT_COMPLETION_TOKENS
    tools: bool = False
    json_mode: bool = False
    vision: bool = False
    streaming: bool = False
    override_deployment: str | None = None
    override_strategy: RoutingStrategy | None = None
    priority: Priority = INTERACTIVE

    @property
    def tokens_needed(self) -> int:
        """Prompt plus expected completion: what a deployment's context window must hold."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def capability_mask(self) -> int:
        return (
            (_TOOLS if self.tools else 0)
            | (_JSON if self.json_mode else 0)
            | (_VISION if self.vision else 0)
            | (_STREAM if self.streaming else 0)
        )


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The deployment to call first and the ordered fallbacks for the resilience stage.

    `reason` is one human-readable line for the trace span; `skipped` maps every deployment of
    the alias that is not in `chain` to why. `priority` is the request's class: admission sends
    a `batch` task to the batch lane instead of the deployment's pool.
    """

    chain: tuple[str, ...]
    strategy: str
    reason: str
    skipped: Mapping[str, str]
    priority: Priority = INTERACTIVE

    @property
    def deployment(self) -> str:
        return self.chain[0]

    @property
    def fallbacks(self) -> tuple[str, ...]:
        return self.chain[1:]


# -- the request side -----------------------------------------------------------------------------


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """A cheap over-the-thumb token count: ceil(chars / 4) + 4 per message + 3.

    No tokenizer on purpose: tiktoken fetches its encodings at run time (this deployment may be
    offline), and every provider tokenizes differently anyway, so an exact count for one model
    would still be an estimate for the others. Four characters per token is the usual average
    for English with OpenAI's and Llama's BPEs; 4 tokens per message stand for the role and the
    separators of the chat template, 3 for the priming of the reply (OpenAI's cookbook counts
    3-4 and 3). The estimate is low for CJK text and dense code (closer to 1-3 chars per token),
    which only matters near the edge of a context window; the provider's real count is settled
    later from the usage it reports.

    Multi-part content counts its text parts by characters and each image as 765 tokens, the
    price of one high-detail 1024x1024 image at OpenAI: counting the base64 payload would put a
    small photo at hundreds of thousands of tokens and exclude every deployment.
    """
    tokens, _ = _scan_messages(messages)
    return tokens


def _scan_messages(messages: Sequence[ChatMessage]) -> tuple[int, bool]:
    """(estimated prompt tokens, whether any message carries an image): one pass for both."""
    chars = 0
    images = 0
    for message in messages:
        if message.content:
            chars += len(message.content)
        if message.name:
            chars += len(message.name)
        if message.tool_calls_json:
            chars += len(message.tool_calls_json)
        if message.content_parts_json:
            part_chars, part_images = _scan_parts(message.content_parts_json)
            chars += part_chars
            images += part_images
    tokens = -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)
    return tokens + REPLY_PRIMING_TOKENS + IMAGE_TOKENS * images, images > 0


def _scan_parts(parts_json: str) -> tuple[int, int]:
    """(text characters, image count) of OpenAI multi-part content.

    Lenient by design: the bridge validated the body, and routing is no place to reject it, so
    JSON that does not parse counts as text and as an image if it mentions one.
    """
    try:
        parts = json.loads(parts_json)
    except ValueError:
        return len(parts_json), int('"image_url"' in parts_json)
    if not isinstance(parts, list):
        return len(parts_json), 0
    chars = 0
    images = 0
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "image_url":
            images += 1
        elif kind == "text" and isinstance(part.get("text"), str):
            chars += len(part["text"])
    return chars, images


def needs_of(
    request: RequestReceived, *, default_completion_tokens: int = DEFAULT_COMPLETION_TOKENS
) -> RouteNeeds:
    """What `request` needs from a deployment; raises RoutingError("invalid_override").

    The tool definitions are counted into the prompt (providers inject them into it), and a
    request without `max_tokens` still reserves `default_completion_tokens` so that a prompt
    that just fits a window is not routed where no room is left for the answer.
    """
    params = request.params
    prompt_tokens, vision = _scan_messages(request.messages)
    tools = _has_tools(params.tools_json)
    if tools and params.tools_json is not None:
        prompt_tokens += -(-len(params.tools_json) // CHARS_PER_TOKEN)
    deployment, strategy, priority = _override(params.extra_json)
    max_tokens = params.max_tokens
    return RouteNeeds(
        prompt_tokens=prompt_tokens,
        completion_tokens=max_tokens
        if max_tokens and max_tokens > 0
        else default_completion_tokens,
        tools=tools,
        json_mode=_json_mode(params.response_format_json),
        vision=vision,
        streaming=request.stream,
        override_deployment=deployment,
        override_strategy=strategy,
        priority=priority,
    )


def _has_tools(tools_json: str | None) -> bool:
    """Set and not an empty list: `"tools": []` asks for no tool support."""
    return tools_json is not None and tools_json.strip() not in ("", "[]", "null")


def _json_mode(response_format_json: str | None) -> bool:
    """`response_format` of type json_object or json_schema; `text` (or garbage) is not."""
    if not response_format_json:
        return False
    try:
        response_format = json.loads(response_format_json)
    except ValueError:
        return False
    return isinstance(response_format, dict) and response_format.get("type") in _JSON_MODES


def _override(
    extra_json: str | None,
) -> tuple[str | None, RoutingStrategy | None, Priority]:
    """The caller's `{"deployment": ..., "strategy": ..., "priority": ...}`, strictly validated.

    Strict (unknown keys are errors too) because an override that is silently ignored, say a
    misspelt key, routes the request somewhere the caller did not ask for without telling them.
    """
    if not extra_json or OVERRIDE_KEY not in extra_json:  # cheap: most requests have none
        return None, None, INTERACTIVE
    try:
        extra = json.loads(extra_json)
    except ValueError as error:
        raise RoutingError("invalid_override", f"extra body fields are not JSON: {error}") from None
    if not isinstance(extra, dict) or OVERRIDE_KEY not in extra:
        return None, None, INTERACTIVE
    override: Any = extra[OVERRIDE_KEY]
    if override is None:
        return None, None, INTERACTIVE
    if not isinstance(override, dict):
        raise RoutingError(
            "invalid_override",
            f"`{OVERRIDE_KEY}` must be an object of per-request options, e.g. `deployment`",
        )
    unknown = set(override) - _OVERRIDE_FIELDS
    if unknown:
        raise RoutingError(
            "invalid_override",
            f"unknown `{OVERRIDE_KEY}` fields {sorted(unknown)}; known: {sorted(_OVERRIDE_FIELDS)}",
        )
    deployment = override.get("deployment")
    if deployment is not None and (not isinstance(deployment, str) or not deployment):
        raise RoutingError("invalid_override", "`deployment` must be a non-empty string")
    strategy = override.get("strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise RoutingError(
            "invalid_override",
            f"unknown routing strategy {strategy!r}; known: {sorted(STRATEGIES)}",
        )
    try:
        priority = parse_priority(override.get("priority"))
    except InvalidPriority as error:
        raise RoutingError("invalid_override", str(error)) from None
    return deployment, strategy, priority


# -- the catalogue side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One deployment of an alias, reduced to what routing reads."""

    name: str
    order: int  # position in the alias's list: the tie-breaker after priority
    priority: int
    context_window: int
    caps: int
    capability_count: int
    input_usd_per_token: float
    output_usd_per_token: float
    weight: float


@dataclass(frozen=True, slots=True)
class _Capable:
    """An alias's deployments filtered by one combination of needed capabilities."""

    by_priority: tuple[_Candidate, ...]
    by_capability: tuple[_Candidate, ...]
    skipped: Mapping[str, str]


class _AliasPlan:
    """Per-alias data precomputed at start-up, plus the memoised capability filters."""

    __slots__ = ("by_capability", "by_priority", "capable_by_mask", "name", "names", "strategy")

    def __init__(self, alias: ModelAlias, deployments: Mapping[str, Deployment]) -> None:
        self.name = alias.name
        self.strategy: str = alias.strategy
        candidates: list[_Candidate] = []
        for order, name in enumerate(dict.fromkeys(alias.deployments)):  # dedupe, keep order
            deployment = deployments.get(name)
            if deployment is None:
                raise ConfigurationError(f"model {alias.name!r} names unknown deployment {name!r}")
            caps = _caps_of(deployment)
            candidates.append(
                _Candidate(
                    name=name,
                    order=order,
                    priority=deployment.priority,
                    context_window=deployment.context_window,
                    caps=caps,
                    capability_count=caps.bit_count(),
                    input_usd_per_token=deployment.input_usd_per_mtok / 1_000_000,
                    output_usd_per_token=deployment.output_usd_per_mtok / 1_000_000,
                    weight=deployment.weight,
                )
            )
        self.names = frozenset(c.name for c in candidates)
        self.by_priority = tuple(sorted(candidates, key=lambda c: (c.priority, c.order)))
        self.by_capability = tuple(
            sorted(
                candidates,
                key=lambda c: (c.context_window, c.capability_count, c.priority, c.order),
            )
        )
        self.capable_by_mask: dict[int, _Capable] = {}

    def capable(self, mask: int) -> _Capable:
        """The deployments that have every capability in `mask`, computed once per mask."""
        found = self.capable_by_mask.get(mask)
        if found is None:
            skipped = {c.name: _missing(mask & ~c.caps) for c in self.by_priority if mask & ~c.caps}
            found = _Capable(
                by_priority=tuple(c for c in self.by_priority if not mask & ~c.caps),
                by_capability=tuple(c for c in self.by_capability if not mask & ~c.caps),
                skipped=skipped,
            )
            self.capable_by_mask[mask] = found
        return found


def _caps_of(deployment: Deployment) -> int:
    caps = deployment.capabilities
    return (
        (_TOOLS if caps.tools else 0)
        | (_JSON if caps.json_mode else 0)
        | (_VISION if caps.vision else 0)
        | (_STREAM if caps.streaming else 0)
    )


def _missing(bits: int) -> str:
    return ", ".join(f"no {label}" for bit, label in _CAPABILITY_BITS if bits & bit)


def _blocked(snapshot: HealthSnapshot | None, now_ms: int) -> str | None:
    """Why health excludes a deployment now, or None when it may be called.

    Open with the cool-down over is allowed (`HealthSnapshot.callable_at`): that call is the
    half-open probe. Half-open is stricter than `callable_at`, matching resilience's `may_call`:
    its `open_until_ms` is the lease of a probe already in flight, and routing new traffic
    there would defeat the probe that is meant to go alone.
    """
    if snapshot is None or snapshot.breaker == "closed":
        return None
    until = snapshot.open_until_ms
    if until is not None and now_ms >= until:
        return None
    if snapshot.breaker == "half_open":
        return "breaker half-open (probe in flight)"
    if until is None:
        return "breaker open"
    return f"breaker open ({until - now_ms} ms of cool-down left)"


class Router:
    """Orders an alias's deployments for one request: first choice, then fallbacks.

    Capability and context filters apply under every strategy, then health: a deployment whose
    breaker is open (and whose cool-down is not over) is skipped. The survivors are ordered by
    the alias's strategy, or the request's override:

    - `priority`: `Deployment.priority` ascending, then the alias's order;
    - `cost`: cheapest estimated USD for this request's tokens, ties by priority;
    - `latency`: lowest latency EWMA, ties by priority; unmeasured deployments go first;
    - `weighted`: first pick drawn by `Deployment.weight`, the rest by priority;
    - `capability`: least over-provisioned first (smallest fitting context window, then fewest
      capabilities), ties by priority.
    """

    def __init__(
        self,
        deployments: Mapping[str, Deployment],
        aliases: Mapping[str, ModelAlias],
        rng: random.Random | None = None,
    ) -> None:
        self._plans = {name: _AliasPlan(alias, deployments) for name, alias in aliases.items()}
        self._rng = rng if rng is not None else random.Random()

    @classmethod
    def from_settings(cls, settings: Settings, rng: random.Random | None = None) -> Router:
        return cls(
            {d.name: d for d in settings.deployments}, {m.name: m for m in settings.models}, rng
        )

    def route(
        self,
        alias_name: str,
        needs: RouteNeeds,
        health: Mapping[str, HealthSnapshot],
        now_ms: int,
    ) -> RouteDecision:
        """The decision for one request; raises RoutingError when nothing can serve it."""
        plan = self._plans.get(alias_name)
        if plan is None:
            raise RoutingError("model_not_found", f"The model `{alias_name}` does not exist.")
        pinned = needs.override_deployment
        if pinned is not None and pinned not in plan.names:
            raise RoutingError(
                "invalid_override",
                f"deployment {pinned!r} does not serve the model `{alias_name}`",
            )
        strategy = needs.override_strategy or (
            "cost" if needs.priority == "batch" else plan.strategy
        )
        if strategy not in STRATEGIES:  # needs_of validates; this guards hand-built needs
            raise RoutingError("invalid_override", f"unknown routing strategy {strategy!r}")

        capable = plan.capable(needs.capability_mask)
        skipped = dict(capable.skipped)
        ordered = capable.by_capability if strategy == "capability" else capable.by_priority
        needed = needs.tokens_needed
        usable: list[_Candidate] = []
        fits = 0
        snapshot_of = health.get
        for candidate in ordered:
            if candidate.context_window < needed:
                skipped[candidate.name] = f"context {candidate.context_window} < {needed} needed"
                continue
            fits += 1
            snapshot = snapshot_of(candidate.name)
            if snapshot is not None and snapshot.breaker != "closed":  # the rare, slower path
                why = _blocked(snapshot, now_ms)
                if why is not None:
                    skipped[candidate.name] = why
                    continue
            usable.append(candidate)

        if not usable:
            raise self._nothing_usable(alias_name, needs, fits, skipped, health, now_ms)

        if strategy == "cost":
            reason = self._by_cost(usable, needs)
        elif strategy == "latency":
            reason = self._by_latency(usable, health)
        elif strategy == "weighted":
            reason = self._by_weight(usable)
        elif strategy == "capability":
            reason = _capability_reason(usable, needs)
        else:
            reason = f"priority: {usable[0].name} (priority {usable[0].priority})"
        reason += f" among {len(usable)} capable"
        if skipped:
            reason += f", {len(skipped)} skipped"

        if pinned is not None:
            reason = self._pin(usable, pinned, skipped) + reason
        if needs.priority != INTERACTIVE:
            reason = f"{needs.priority}: {reason}"
        return RouteDecision(
            chain=tuple(c.name for c in usable),
            strategy=strategy,
            reason=reason,
            skipped=skipped,
            priority=needs.priority,
        )

    # -- strategies: reorder `usable` in place, return the head of the reason -------------------

    @staticmethod
    def _by_cost(usable: list[_Candidate], needs: RouteNeeds) -> str:
        prompt, completion = needs.prompt_tokens, needs.completion_tokens
        usable.sort(
            key=lambda c: prompt * c.input_usd_per_token + completion * c.output_usd_per_token
        )
        first = usable[0]
        usd = prompt * first.input_usd_per_token + completion * first.output_usd_per_token
        return f"cost: {first.name} cheapest (est. ${usd:.2g})"

    @staticmethod
    def _by_latency(usable: list[_Candidate], health: Mapping[str, HealthSnapshot]) -> str:
        """Lowest EWMA first, but never-measured deployments ahead of all measured ones.

        A deployment without an observation would otherwise never be picked (no EWMA, no rank),
        so it would never get one: a new or recovered deployment would sit idle forever. Trying
        it once costs one possibly slow request and buys a measurement; its EWMA then ranks it
        like the others.
        """

        def ewma(candidate: _Candidate) -> float:
            snapshot = health.get(candidate.name)
            value = snapshot.latency_ewma_ms if snapshot is not None else None
            return -1.0 if value is None else value

        usable.sort(key=ewma)
        first = usable[0]
        latency = ewma(first)
        if latency < 0:
            return f"latency: {first.name} not measured yet, tried first to measure it"
        return f"latency: {first.name} fastest (ewma {latency:.0f} ms)"

    def _by_weight(self, usable: list[_Candidate]) -> str:
        """Draw the first pick by weight; keep the rest in priority order (they are fallbacks).

        Weight 0 takes no share of first picks but stays a fallback: weights split traffic, they
        do not disable a deployment (remove it from the alias for that).
        """
        total = 0.0
        for candidate in usable:
            total += candidate.weight
        if total <= 0:
            return f"weighted: all weights 0, {usable[0].name} by priority"
        point = self._rng.random() * total
        index = 0
        last_positive = 0
        for index, candidate in enumerate(usable):
            if candidate.weight > 0:
                last_positive = index
                point -= candidate.weight
                if point < 0:
                    break
        else:  # float rounding left a sliver: the last positive weight takes it
            index = last_positive
        first = usable.pop(index)
        usable.insert(0, first)
        return f"weighted: drew {first.name} (weight {first.weight:g} of {total:g})"

    @staticmethod
    def _pin(usable: list[_Candidate], pinned: str, skipped: Mapping[str, str]) -> str:
        """Move the caller's deployment to the front; a preference, not a hard pin.

        When it cannot serve the request (capability, context, breaker) the request still goes to
        the best other deployment, with the reason saying why the override was not honoured:
        serving the request beats failing it for a routing hint.
        """
        for index, candidate in enumerate(usable):
            if candidate.name == pinned:
                if index:
                    usable.insert(0, usable.pop(index))
                return f"override: {pinned} pinned; then "
        return f"override: {pinned} not usable ({skipped.get(pinned, '?')}); "

    @staticmethod
    def _nothing_usable(
        alias_name: str,
        needs: RouteNeeds,
        fits: int,
        skipped: Mapping[str, str],
        health: Mapping[str, HealthSnapshot],
        now_ms: int,
    ) -> RoutingError:
        detail = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        if not fits:
            return RoutingError(
                "no_capable_deployment",
                f"No deployment of `{alias_name}` can serve this request "
                f"({_describe(needs)}): {detail}",
                skipped=skipped,
            )
        waits = [
            snapshot.open_until_ms - now_ms
            for name in skipped
            if (snapshot := health.get(name)) is not None
            and snapshot.open_until_ms is not None
            and snapshot.open_until_ms > now_ms
        ]
        return RoutingError(
            "all_breakers_open",
            f"Every deployment of `{alias_name}` that can serve this request is unavailable: "
            f"{detail}",
            skipped=skipped,
            retry_after_s=min(waits) / 1000 if waits else None,
        )


def _capability_reason(usable: list[_Candidate], needs: RouteNeeds) -> str:
    first = usable[0]
    extra = (first.caps & ~needs.capability_mask).bit_count()
    return (
        f"capability: {first.name} least over-provisioned "
        f"(context {first.context_window}, {extra} extra capabilities)"
    )


def _describe(needs: RouteNeeds) -> str:
    wanted = [label for bit, label in _CAPABILITY_BITS if needs.capability_mask & bit]
    return f"{needs.tokens_needed} tokens" + (f", {', '.join(wanted)}" if wanted else "")
