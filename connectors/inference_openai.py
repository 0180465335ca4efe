"""The InferenceBackend adapter for any OpenAI-compatible server (OpenAI, Azure OpenAI, vLLM,
llama.cpp's server, Ollama, ...), through the official `openai` SDK.

The SDK does not retry (`max_retries=0`): retries and fallbacks are the router's decision, made
from the `BackendError` this adapter raises. SDK exceptions become BackendError in one place,
`_to_backend_error`.

The lean aiohttp adapter for `backend: openai` (inference_openai_http.py) shares this module's
request building (`chat_request`, `chat_body`) and HTTP error classification (`status_error`),
so both send the same body and raise the same error classes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from sluicegate.connectors.openai_request import parse_json
from sluicegate.connectors.ports import Completion, Delta
from sluicegate.errors import BackendError, ConfigurationError
from sluicegate.schemas.models import ChatMessage, InferenceTask
from sluicegate.settings import Deployment

# Body fields the adapter owns; a caller's extra_json may not override them.
# `sluicegate` holds the gateway's own per-request options (routing, cache): never sent upstream.
_RESERVED_EXTRA = frozenset({"stream", "stream_options", "sluicegate"})
_CONTEXT_MARKERS = ("context length", "context_length", "context window", "context size")
_POLICY_CODES = ("content_filter", "content_policy")
# The newest GA data-plane version when this was written; it accepts `stream_options`, which the
# streaming usage report needs. A deployment pins another one with `api_version`.
AZURE_DEFAULT_API_VERSION = "2024-10-21"
# What a streaming call asks for: the usage of the whole answer in a last chunk.
STREAM_OPTIONS = {"include_usage": True}


class OpenAICompatibleBackend:
    """Calls `POST {base_url}/chat/completions` for one deployment of the catalogue.

    For `backend: azure` the same code runs over `AsyncAzureOpenAI`: Azure OpenAI speaks the
    same chat-completions body, and differs only in the URL
    (`{base_url}/openai/deployments/{provider_model}/chat/completions?api-version=...`) and the
    `api-key` header, both of which the SDK's Azure client owns.
    """

    def __init__(self, *, deployment: Deployment) -> None:
        self._deployment = deployment
        self._client = _client(deployment)

    async def complete(self, task: InferenceTask) -> Completion:
        request = chat_request(task)
        try:
            response: ChatCompletion = await self._client.chat.completions.create(
                **request, stream=False
            )
        except openai.OpenAIError as exc:
            raise _to_backend_error(exc) from exc
        if not response.choices:
            raise BackendError("the upstream answered without choices", error_class="unknown")
        choice = response.choices[0]
        tool_calls = choice.message.tool_calls
        usage = response.usage
        return Completion(
            text=choice.message.content,
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            provider_model=response.model or task.provider_model,
            tool_calls_json=(
                json.dumps([call.model_dump(mode="json", exclude_none=True) for call in tool_calls])
                if tool_calls
                else None
            ),
        )

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        """Yield each content delta, then one Delta with finish_reason and usage."""
        request = chat_request(task)
        finish_reason: str | None = None
        prompt_tokens = completion_tokens = 0
        model = task.provider_model
        try:
            chunks = await self._client.chat.completions.create(
                **request, stream=True, stream_options=STREAM_OPTIONS
            )
            async with chunks:
                async for chunk in chunks:
                    model = chunk.model or model
                    if chunk.usage is not None:
                        prompt_tokens = chunk.usage.prompt_tokens
                        completion_tokens = chunk.usage.completion_tokens
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    finish_reason = choice.finish_reason or finish_reason
                    if choice.delta.content:
                        yield Delta(text=choice.delta.content)
        except openai.OpenAIError as exc:
            raise _to_backend_error(exc) from exc
        yield last_delta(finish_reason, prompt_tokens, completion_tokens, model)

    async def aclose(self) -> None:
        await self._client.close()


def _client(deployment: Deployment) -> openai.AsyncOpenAI:
    """The SDK client of a deployment; `max_retries=0` because retrying is the router's job."""
    key = deployment.api_key
    # A server without auth (vLLM, Ollama) still needs some key for the SDK to send a request.
    api_key = key.get_secret_value() if key is not None else "unused"
    if deployment.backend != "azure":
        return openai.AsyncOpenAI(
            base_url=deployment.base_url,
            api_key=api_key,
            timeout=deployment.timeout_s,
            max_retries=0,
        )
    if not deployment.base_url:
        # Fail at start-up: without it the SDK would fall back to AZURE_OPENAI_ENDPOINT, an
        # environment variable the catalogue never named.
        raise ConfigurationError(
            f"deployment {deployment.name!r} (azure) needs `base_url`: the resource endpoint, "
            "e.g. https://<resource>.openai.azure.com"
        )
    return openai.AsyncAzureOpenAI(
        azure_endpoint=deployment.base_url,
        api_version=deployment.api_version or AZURE_DEFAULT_API_VERSION,
        api_key=api_key,
        timeout=deployment.timeout_s,
        max_retries=0,
    )


# -- the request --------------------------------------------------------------------------


def _message(message: ChatMessage) -> dict[str, Any]:
    """One ChatMessage as the OpenAI message object."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.content_parts_json is not None:
        out["content"] = parse_json(message.content_parts_json, "content_parts_json")
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls_json is not None:
        out["tool_calls"] = parse_json(message.tool_calls_json, "tool_calls_json")
    return out


def chat_request(task: InferenceTask) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create`, except `stream`: the one place the
    request is built. The caller's extra fields (minus the reserved ones) are in `extra_body`."""
    params = task.params
    request: dict[str, Any] = {
        "model": task.provider_model,
        "messages": [_message(m) for m in task.messages],
    }
    scalars = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "seed": params.seed,
    }
    request.update({name: value for name, value in scalars.items() if value is not None})
    if params.stop:
        request["stop"] = list(params.stop)
    encoded = {
        "response_format": params.response_format_json,
        "tools": params.tools_json,
        "tool_choice": params.tool_choice_json,
    }
    for name, text in encoded.items():
        if text is not None:
            request[name] = parse_json(text, f"{name}_json")
    if params.extra_json is not None:
        extra = parse_json(params.extra_json, "extra_json")
        if not isinstance(extra, dict):
            raise BackendError("extra_json must be a JSON object", error_class="bad_request")
        extra = {k: v for k, v in extra.items() if k not in _RESERVED_EXTRA}
        if extra:
            request["extra_body"] = extra
    return request


def chat_body(task: InferenceTask, *, stream: bool) -> dict[str, Any]:
    """The JSON body the SDK sends for `chat_request(task)`: `stream` (and, when streaming, the
    usage option), then `extra_body` merged into the top level, where it wins like in the SDK."""
    request = chat_request(task)
    extra = request.pop("extra_body", {})
    request["stream"] = stream
    if stream:
        request["stream_options"] = dict(STREAM_OPTIONS)
    request.update(extra)
    return request


def last_delta(
    finish_reason: str | None, prompt_tokens: int, completion_tokens: int, model: str
) -> Delta:
    """A stream's closing Delta (finish_reason and usage); both OpenAI adapters end with it.

    A stream that ended without saying why was cut: it is never passed off as complete.
    """
    if finish_reason is None:
        raise BackendError(
            "the upstream stream ended without a finish_reason",
            error_class="connection",
            retriable=True,
        )
    return Delta(
        text="",
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        provider_model=model,
    )


# -- errors -------------------------------------------------------------------------------


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date.

    Public because every HTTP provider speaks these headers: the Anthropic adapter reuses it.
    """
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def status_class(
    status: int, message: str, code: str | None, error_type: str | None
) -> tuple[str, bool]:
    """(error_class, retriable) of an HTTP error answer, from its status and its OpenAI error
    object's `message`, `code` and `type`."""
    if status == 429:
        return "rate_limited", True
    if status >= 500:
        return "server_error", True
    if status in (401, 403):
        return "auth", False
    if status in (400, 413, 422):
        code = str(code or "").lower()  # some servers (vLLM) send the status as a number
        text = f"{message} {code} {error_type or ''}".lower()
        if any(marker in text for marker in _CONTEXT_MARKERS):
            return "context_too_long", False
        if code.startswith(_POLICY_CODES):
            return "content_policy", False
        return "bad_request", False
    return "unknown", False


def status_error(
    status: int,
    headers: Mapping[str, str],
    message: str,
    code: str | None = None,
    error_type: str | None = None,
) -> BackendError:
    """The BackendError of an HTTP error answer; both OpenAI adapters raise through here.

    `message` is the SDK's form, `Error code: <status> - <error.message>`, so the two adapters
    also word their errors alike.
    """
    error_class, retriable = status_class(status, message, code, error_type)
    return BackendError(
        f"the upstream answered {status}: {message}",
        error_class=error_class,
        status_code=status,
        retriable=retriable,
        retry_after_s=retry_after_s(headers) if retriable else None,
    )


def _to_backend_error(exc: openai.OpenAIError) -> BackendError:
    """The one translation of SDK exceptions into the gateway's error classes."""
    # APITimeoutError subclasses APIConnectionError, so it is tested first.
    if isinstance(exc, openai.APITimeoutError):
        return BackendError(
            f"the upstream did not answer in time: {exc}", error_class="timeout", retriable=True
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return BackendError(
            f"could not reach the upstream: {cause!r}", error_class="connection", retriable=True
        )
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, exc.response.headers, exc.message, exc.code, exc.type)
    return BackendError(f"the upstream failed: {exc}", error_class="unknown")
