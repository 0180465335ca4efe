"""The InferenceBackend adapter for Anthropic's Messages API, through the official `anthropic`
SDK.

The pipeline speaks OpenAI's chat format end to end, so this module is a translation in both
directions: an OpenAI-style InferenceTask becomes a `POST /v1/messages` body, and the Message
(or its event stream) becomes a Completion (or Deltas) with OpenAI's finish reasons and OpenAI
tool-call JSON. Callers and the router never learn which vendor answered.

As in the OpenAI adapter the SDK does not retry (`max_retries=0`): retries and fallbacks are the
router's decision, made from the BackendError raised here with the same error classes.

Sampling parameters depend on the API version. The SDK sends `anthropic-version: 2026-10-21`,
which refuses `temperature`, `top_p` and `top_k` with a 400 (even at their defaults), so under it
they are left out, like `seed`. A deployment that needs them pins the previous version with
`api_version: "2023-06-01"`, and then they are sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2  # the SDK's HTTP client; it lets read errors out of a stream unwrapped
from anthropic.types import Message

from sluicegate.connectors.inference_openai import retry_after_s
from sluicegate.connectors.openai_request import (
    bad_request,
    content_parts,
    conversation,
    decode_base64,
    function_tools,
    image_url,
    json_mode_instruction,
    openai_tool_call,
    parse_json,
    split_data_url,
    tool_calls,
    tool_choice,
)
from sluicegate.connectors.ports import Completion, Delta
from sluicegate.errors import BackendError
from sluicegate.schemas.models import ChatMessage, InferenceTask
from sluicegate.settings import Deployment

# Anthropic requires `max_tokens`; OpenAI callers usually leave it out.
DEFAULT_MAX_TOKENS = 1024
# The first API version that refuses temperature, top_p and top_k.
SAMPLING_REMOVED_IN = "2026-10-21"
_SAMPLING_FIELDS = frozenset({"temperature", "top_p", "top_k"})
# OpenAI accepts temperatures up to 2, Anthropic up to 1.
_MAX_TEMPERATURE = 1.0

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic-native body fields a caller may pass through `extra_json`; every other extra field is
# an OpenAI one (logit_bias, n, presence_penalty, ...) that Anthropic would reject outright.
_PASSTHROUGH_EXTRA = frozenset({"top_k", "thinking", "service_tier", "metadata", "output_config"})

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


# The status an `error.type` implies; an error event inside a 200 stream has no status of its own.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_CONTEXT_MARKERS = (
    "prompt is too long",
    "exceed context limit",
    "context window",
    "context length",
)
_POLICY_MARKERS = ("content filtering", "content policy", "usage policy")


class AnthropicBackend:
    """Calls `POST {base_url}/v1/messages` for one deployment of the catalogue."""

    def __init__(self, *, deployment: Deployment) -> None:
        self._deployment = deployment
        version = deployment.api_version
        # Whether the pinned API version (if any) still takes sampling parameters.
        self._sampling = version is not None and version < SAMPLING_REMOVED_IN
        key = deployment.api_key
        # An explicit key, even a placeholder, keeps the SDK from searching the environment and
        # profile files for credentials the catalogue never named; a missing key then surfaces
        # as the upstream's 401 (`auth`) on the first call.
        self._client = anthropic.AsyncAnthropic(
            api_key=key.get_secret_value() if key is not None else "unused",
            base_url=deployment.base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
            default_headers={"anthropic-version": version} if version else None,
        )

    async def complete(self, task: InferenceTask) -> Completion:
        request = _request(task, sampling=self._sampling)
        try:
            message: Message = await self._client.messages.create(**request, stream=False)
        except anthropic.AnthropicError as exc:
            raise _to_backend_error(exc) from exc
        except httpx2.TransportError as exc:
            raise _transport_error(exc) from exc
        texts = [block.text for block in message.content if block.type == "text"]
        calls = [
            _tool_call(block.id, block.name, block.input)
            for block in message.content
            if block.type == "tool_use"
        ]
        usage = message.usage
        return Completion(
            # OpenAI's convention: no content (null, not "") when the turn only calls tools.
            text="".join(texts) if texts or not calls else None,
            finish_reason=_finish_reason(message.stop_reason) or "stop",
            prompt_tokens=_prompt_tokens(
                usage.input_tokens,
                usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens,
            ),
            completion_tokens=usage.output_tokens,
            provider_model=message.model or task.provider_model,
            tool_calls_json=json.dumps(calls) if calls else None,
        )

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        """Yield each text delta, then one Delta with finish_reason and usage.

        `message_start` carries the input tokens and `message_delta` the (cumulative) output
        tokens and the stop reason. Tool-call input (`input_json_delta`) is not streamed: a
        Delta carries text only, as with the OpenAI adapter; the finish reason still says
        `tool_calls`.
        """
        request = _request(task, sampling=self._sampling)
        finish_reason: str | None = None
        input_tokens = output_tokens = 0
        cache_creation: int | None = None
        cache_read: int | None = None
        model = task.provider_model
        try:
            events = await self._client.messages.create(**request, stream=True)
            async with events:
                async for event in events:
                    if event.type == "message_start":
                        started = event.message
                        model = started.model or model
                        input_tokens = started.usage.input_tokens
                        output_tokens = started.usage.output_tokens
                        cache_creation = started.usage.cache_creation_input_tokens
                        cache_read = started.usage.cache_read_input_tokens
                    elif event.type == "content_block_delta":
                        if event.delta.type == "text_delta" and event.delta.text:
                            yield Delta(text=event.delta.text)
                    elif event.type == "message_delta":
                        finish_reason = _finish_reason(event.delta.stop_reason) or finish_reason
                        usage = event.usage
                        output_tokens = usage.output_tokens
                        if usage.input_tokens is not None:
                            input_tokens = usage.input_tokens
                        if usage.cache_creation_input_tokens is not None:
                            cache_creation = usage.cache_creation_input_tokens
                        if usage.cache_read_input_tokens is not None:
                            cache_read = usage.cache_read_input_tokens
        except anthropic.AnthropicError as exc:
            raise _to_backend_error(exc) from exc
        except httpx2.TransportError as exc:
            # The SDK wraps transport errors of the request, not of reading the event stream.
            raise _transport_error(exc) from exc
        if finish_reason is None:
            # A stream that ends without a stop reason was cut: never pass it off as complete.
            raise BackendError(
                "the upstream stream ended without a stop_reason",
                error_class="connection",
                retriable=True,
            )
        yield Delta(
            text="",
            finish_reason=finish_reason,
            prompt_tokens=_prompt_tokens(input_tokens, cache_creation, cache_read),
            completion_tokens=output_tokens,
            provider_model=model,
        )

    async def aclose(self) -> None:
        await self._client.close()


# -- the response -------------------------------------------------------------------------


def _finish_reason(stop_reason: str | None) -> str | None:
    """OpenAI's finish_reason for Anthropic's stop_reason; an unknown one reads as `stop`."""
    if stop_reason is None:
        return None
    return _FINISH_REASONS.get(stop_reason, "stop")


def _prompt_tokens(input_tokens: int, cache_creation: int | None, cache_read: int | None) -> int:
    """All prompt tokens, cached or not.

    Anthropic's `input_tokens` leaves out the tokens written to or read from the prompt cache,
    while OpenAI's `prompt_tokens` (what cost and rate limits are computed from) includes them.
    """
    return input_tokens + (cache_creation or 0) + (cache_read or 0)


def _tool_call(call_id: str, name: str, arguments: object) -> dict[str, Any]:
    """A `tool_use` block as an OpenAI tool call."""
    return openai_tool_call(call_id, name, arguments)


# -- the request --------------------------------------------------------------------------


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI `image_url` part as an Anthropic image block.

    A data URL is sent inline (`source.type: base64`); an http(s) URL by reference
    (`source.type: url`), which Anthropic fetches itself.
    """
    url = image_url(part)
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if not url.startswith("data:"):
        raise bad_request("an image_url must be an http(s) URL or a base64 data URL")
    media_type, data = split_data_url(url)
    if media_type not in _IMAGE_MEDIA_TYPES:
        raise bad_request(f"Anthropic does not take images of type {media_type!r}")
    decode_base64(data)
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _content_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """The text and image blocks of a message's content (plain text or OpenAI parts)."""
    return [
        {"type": "text", "text": part} if isinstance(part, str) else _image_block(part)
        for part in content_parts(message, "Anthropic")
    ]


def _tool_use_blocks(tool_calls_json: str) -> list[dict[str, Any]]:
    """An assistant's OpenAI tool calls as `tool_use` blocks."""
    return [
        {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        for call in tool_calls(tool_calls_json)
    ]


def _tool_result_block(message: ChatMessage) -> dict[str, Any]:
    if not message.tool_call_id:
        raise bad_request("a role=tool message needs tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = _content_blocks(message)
    if content:
        only_text = len(content) == 1 and content[0]["type"] == "text"
        block["content"] = content[0]["text"] if only_text else content
    return block


def _system_text(message: ChatMessage) -> str:
    blocks = _content_blocks(message)
    if any(block["type"] != "text" for block in blocks):
        raise bad_request("a system message may only hold text")
    return "\n\n".join(block["text"] for block in blocks)


def _conversation(messages: list[ChatMessage]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Anthropic messages) of an OpenAI conversation."""
    return conversation(
        messages,
        provider="Anthropic",
        content=_content_blocks,
        tool_uses=_tool_use_blocks,
        tool_result=_tool_result_block,
        system_text=_system_text,
    )


def _tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools as Anthropic tools (`parameters` becomes `input_schema`)."""
    out: list[dict[str, Any]] = []
    for tool in function_tools(tools, "Anthropic"):
        converted: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
        if tool.description:
            converted["description"] = tool.description
        out.append(converted)
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    """OpenAI's tool_choice as Anthropic's: auto, none, required -> any, a function -> tool."""
    kind, name = tool_choice(choice, "Anthropic")
    if kind == "function":
        return {"type": "tool", "name": name}
    return {"type": "any" if kind == "required" else kind}


def _json_mode_instruction(response_format: Any) -> str | None:
    return json_mode_instruction(response_format, "Anthropic")


def _request(task: InferenceTask, *, sampling: bool) -> dict[str, Any]:
    """The keyword arguments of `messages.create`, except `stream`.

    OpenAI-only extra fields (`logit_bias`, `n`, penalties, ...) and `seed` are dropped rather
    than refused: a request written for OpenAI must still run when routing falls back to Claude.
    For the same reason `temperature`, `top_p` and `top_k` are dropped unless `sampling` says
    the API version takes them (the SDK has no arguments for them: they go in the extra body).
    """
    params = task.params
    system, turns = _conversation(task.messages)
    request: dict[str, Any] = {
        "model": task.provider_model,
        "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": turns,
    }
    if params.stop:
        request["stop_sequences"] = list(params.stop)
    if params.response_format_json is not None:
        instruction = _json_mode_instruction(
            parse_json(params.response_format_json, "response_format_json")
        )
        if instruction:
            system.append(instruction)
    if system:
        request["system"] = "\n\n".join(system)
    extra: dict[str, Any] = {}
    if params.extra_json is not None:
        extra = parse_json(params.extra_json, "extra_json")
        if not isinstance(extra, dict):
            raise bad_request("extra_json must be a JSON object")
    if params.tools_json is not None:
        tools = _tools(parse_json(params.tools_json, "tools_json"))
        if tools:
            request["tools"] = tools
    if params.tool_choice_json is not None and "tools" in request:
        request["tool_choice"] = _tool_choice(
            parse_json(params.tool_choice_json, "tool_choice_json")
        )
    if extra.get("parallel_tool_calls") is False and "tools" in request:
        choice = request.setdefault("tool_choice", {"type": "auto"})
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    body = {name: value for name, value in extra.items() if name in _PASSTHROUGH_EXTRA}
    if sampling:
        if params.temperature is not None:
            body["temperature"] = min(max(params.temperature, 0.0), _MAX_TEMPERATURE)
        if params.top_p is not None:
            body["top_p"] = params.top_p
    else:
        body = {name: value for name, value in body.items() if name not in _SAMPLING_FIELDS}
    if isinstance(extra.get("user"), str):
        # OpenAI's end-user id; Anthropic takes it as metadata.user_id (for abuse detection).
        metadata = body.get("metadata")
        body["metadata"] = {"user_id": extra["user"], **(metadata or {})}
    if body:
        request["extra_body"] = body
    return request


# -- errors -------------------------------------------------------------------------------


def _status_class(status: int, error: anthropic.APIStatusError) -> tuple[str, bool]:
    """(error_class, retriable) of an error answer with this (possibly implied) status."""
    if status == 429:
        # A spend cap is a 429 too, but waiting will not lift it until the next month.
        spend_cap = "spend_limit" in (error.error_code or "")
        return "rate_limited", not spend_cap
    if status >= 500:  # 529 `overloaded_error` included
        return "server_error", True
    if status in (401, 402, 403):
        # 402 (billing) is a credentials problem like the others: this key cannot be used.
        return "auth", False
    if status in (400, 413, 422):
        text = f"{error.api_message or error.message}".lower()
        if any(marker in text for marker in _CONTEXT_MARKERS):
            return "context_too_long", False
        if any(marker in text for marker in _POLICY_MARKERS):
            return "content_policy", False
        return "bad_request", False
    return "unknown", False


def _transport_error(exc: httpx2.TransportError) -> BackendError:
    """A transport error the SDK let through unwrapped: a stall past the timeout or a cut."""
    if isinstance(exc, httpx2.TimeoutException):
        return BackendError(
            f"the upstream stream stalled: {exc!r}", error_class="timeout", retriable=True
        )
    return BackendError(
        f"the upstream stream broke off: {exc!r}", error_class="connection", retriable=True
    )


def _to_backend_error(exc: anthropic.AnthropicError) -> BackendError:
    """The one translation of SDK exceptions into the gateway's error classes."""
    # APITimeoutError subclasses APIConnectionError, so it is tested first.
    if isinstance(exc, anthropic.APITimeoutError):
        return BackendError(
            f"the upstream did not answer in time: {exc}", error_class="timeout", retriable=True
        )
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__ or exc
        return BackendError(
            f"could not reach the upstream: {cause!r}", error_class="connection", retriable=True
        )
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status < 400:
            # An `error` event inside a stream that began with 200: its type names the status.
            status = _ERROR_TYPE_STATUS.get(exc.type or "", 500)
        error_class, retriable = _status_class(status, exc)
        return BackendError(
            f"the upstream answered {status}: {exc.api_message or exc.message}",
            error_class=error_class,
            status_code=status,
            retriable=retriable,
            retry_after_s=retry_after_s(exc.response.headers) if retriable else None,
        )
    return BackendError(f"the upstream failed: {exc}", error_class="unknown")
