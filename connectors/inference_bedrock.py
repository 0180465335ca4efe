"""The InferenceBackend adapter for AWS Bedrock's Converse and ConverseStream APIs, through
`boto3` (the `bedrock` extra).

Converse is Bedrock's one request shape for every chat model it hosts (Claude, Llama, Mistral,
Nova, ...), so a single adapter covers them all: an OpenAI-style InferenceTask becomes a
`POST /model/{modelId}/converse` body, and the answer (or its event stream) becomes a Completion
(or Deltas) with OpenAI's finish reasons and OpenAI tool-call JSON.

Why boto3 and not aioboto3: aioboto3 pins aiobotocore, which pins one exact botocore release,
and that pin fights every other AWS library in a deployment's environment; boto3 follows
botocore freely. boto3 is synchronous, so every call, and every read of the event stream, runs
on a thread pool owned by the backend: the event loop never blocks, and a slow stream holds a
thread of its own pool, never one of the loop's default executor that others rely on.

Credentials come from the standard AWS chain (environment, shared config and credentials files,
SSO, web identity, container and instance roles, `AWS_BEARER_TOKEN_BEDROCK`), never from the
catalogue: a deployment names only `region`, `provider_model` (a model id or an inference
profile ARN) and optionally `base_url` (an `endpoint_url` override, e.g. a VPC endpoint).

botocore does not retry (one attempt in total): retries and fallbacks are the router's decision,
made from the BackendError raised here with the same error classes as the other adapters.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

try:
    import boto3
    import urllib3.exceptions
    from botocore.config import Config
    from botocore.eventstream import ParserError as EventStreamParserError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        CredentialRetrievalError,
        HTTPClientError,
        NoAuthTokenError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
        PartialCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the bedrock backend needs boto3: pip install 'sluicegate[bedrock]'") from exc

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

# Calls (and open streams) one backend runs at once; also botocore's connection pool size, so a
# call never waits for a connection held by another. Above the worker's default concurrency.
MAX_CONCURRENT_CALLS = 64
# Connecting should take well under a second; a deployment's timeout_s is for the model.
CONNECT_TIMEOUT_S = 10.0

# OpenAI accepts temperatures up to 2; Converse takes 0..1 for every model.
_MAX_TEMPERATURE = 1.0

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# Converse-native request fields a caller may pass through `extra_json`; every other extra field
# is an OpenAI one (logit_bias, n, presence_penalty, ...) that Converse would reject outright.
_PASSTHROUGH_EXTRA = frozenset(
    {
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "guardrailConfig",
        "performanceConfig",
        "requestMetadata",
        "serviceTier",
    }
)

_IMAGE_FORMATS = {
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
}


# Error codes (compared lower-cased: an exception event inside a stream names its type in
# camelCase, `throttlingException`, where an HTTP error says `ThrottlingException`).
_RATE_LIMITED = frozenset({"throttlingexception", "toomanyrequestsexception"})
_QUOTA = frozenset({"servicequotaexceededexception"})
_SERVER_ERRORS = frozenset(
    {
        "internalserverexception",
        "serviceunavailableexception",
        "modelnotreadyexception",
        "modelerrorexception",
        "modelstreamerrorexception",
        "internalfailure",
        "serviceunavailable",
    }
)
_TIMEOUTS = frozenset({"modeltimeoutexception", "requesttimeout", "requesttimeoutexception"})
_AUTH = frozenset(
    {
        "accessdeniedexception",
        "unrecognizedclientexception",
        "expiredtoken",
        "expiredtokenexception",
        "invalidsignatureexception",
        "incompletesignature",
        "invalidclienttokenid",
        "missingauthenticationtoken",
        "missingauthenticationtokenexception",
        "signaturedoesnotmatch",
        "unauthorizedexception",
    }
)
_VALIDATION = frozenset({"validationexception", "badrequestexception"})
# The status an error code implies, for an exception event inside a 200 stream.
_CODE_STATUS = {
    "throttlingexception": 429,
    "internalserverexception": 500,
    "serviceunavailableexception": 503,
    "validationexception": 400,
    "modelstreamerrorexception": 424,
}
_CONTEXT_MARKERS = (
    "input is too long",
    "prompt is too long",
    "too many tokens",
    "too many input tokens",
    "context window",
    "context length",
    "context limit",
    "maximum context",
)
_POLICY_MARKERS = ("content filtering", "content policy", "usage policy", "blocked by")

_T = TypeVar("_T")
_END = object()  # what `next` answers when the event stream is exhausted

# What botocore, urllib3 (under a stream) and the event-stream decoder raise.
_SDK_ERRORS = (ClientError, BotoCoreError, urllib3.exceptions.HTTPError, EventStreamParserError)


class BedrockConverseBackend:
    """Calls Converse / ConverseStream on `bedrock-runtime` for one deployment of the catalogue.

    The boto3 client is made on the first call, on the backend's own thread: making it loads the
    service model from disk and may resolve a region from the AWS config files.
    """

    def __init__(self, *, deployment: Deployment) -> None:
        self._deployment = deployment
        self._executor = ThreadPoolExecutor(
            max_workers=MAX_CONCURRENT_CALLS, thread_name_prefix=f"bedrock-{deployment.name}"
        )
        self._client: Any = None
        self._client_lock = threading.Lock()

    async def complete(self, task: InferenceTask) -> Completion:
        request = _request(task)
        try:
            response = await self._run(self._call, "converse", request)
        except _SDK_ERRORS as exc:
            raise _to_backend_error(exc) from exc
        message = (response.get("output") or {}).get("message") or {}
        blocks = message.get("content") or []
        texts = [block["text"] for block in blocks if "text" in block]
        calls = [
            _tool_call(use["toolUseId"], use["name"], use.get("input"))
            for use in (block["toolUse"] for block in blocks if "toolUse" in block)
        ]
        usage = response.get("usage") or {}
        return Completion(
            # OpenAI's convention: no content (null, not "") when the turn only calls tools.
            text="".join(texts) if texts or not calls else None,
            finish_reason=_finish_reason(response.get("stopReason")) or "stop",
            prompt_tokens=_prompt_tokens(usage),
            completion_tokens=int(usage.get("outputTokens") or 0),
            # Converse does not name the model that answered: the id called is the best we have.
            provider_model=task.provider_model,
            tool_calls_json=json.dumps(calls) if calls else None,
        )

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        """Yield each text delta, then one Delta with finish_reason and usage.

        `messageStop` carries the stop reason and the `metadata` event after it the usage.
        Tool-call input (`delta.toolUse`) is not streamed: a Delta carries text only, as with the
        other adapters; the finish reason still says `tool_calls`. Each read of the event stream
        runs on the backend's pool; closing this generator early closes the HTTP stream.
        """
        request = _request(task)
        try:
            response = await self._run(self._call, "converse_stream", request)
        except _SDK_ERRORS as exc:
            raise _to_backend_error(exc) from exc
        events = response["stream"]
        iterator: Iterator[dict[str, Any]] = iter(events)
        finish_reason: str | None = None
        usage: dict[str, Any] = {}
        try:
            while True:
                try:
                    event = await self._run(next, iterator, _END)
                except _SDK_ERRORS as exc:
                    raise _to_backend_error(exc) from exc
                if event is _END:
                    break
                if "contentBlockDelta" in event:
                    text = (event["contentBlockDelta"].get("delta") or {}).get("text")
                    if text:
                        yield Delta(text=text)
                elif "messageStop" in event:
                    reason = event["messageStop"].get("stopReason")
                    finish_reason = _finish_reason(reason) or "stop"
                elif "metadata" in event:
                    usage = event["metadata"].get("usage") or usage
        finally:
            events.close()
        if finish_reason is None:
            # A stream that ends without messageStop was cut: never pass it off as complete.
            raise BackendError(
                "the upstream stream ended without a stopReason",
                error_class="connection",
                retriable=True,
            )
        yield Delta(
            text="",
            finish_reason=finish_reason,
            prompt_tokens=_prompt_tokens(usage),
            completion_tokens=int(usage.get("outputTokens") or 0),
            provider_model=task.provider_model,
        )

    async def aclose(self) -> None:
        """Release the pool and the client's connections; calls still running finish first."""
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    # -- the threads ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        """One API call, on a pool thread. Signing resolves credentials here, off the loop."""
        result: dict[str, Any] = getattr(self._client_once(), operation)(**request)
        return result

    def _client_once(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = _make_client(self._deployment)
            return self._client

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _make_client(deployment: Deployment) -> Any:
    """A `bedrock-runtime` client of its own session: boto3's default session is not
    thread-safe, and a session per backend keeps deployments in different regions apart."""
    session = boto3.session.Session(region_name=deployment.region)
    config = Config(
        # One attempt in total. (`max_attempts` counts retries after the first attempt.)
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=min(CONNECT_TIMEOUT_S, deployment.timeout_s),
        read_timeout=deployment.timeout_s,
        max_pool_connections=MAX_CONCURRENT_CALLS,
        user_agent_extra="sluicegate",
    )
    return session.client("bedrock-runtime", endpoint_url=deployment.base_url, config=config)


# -- the response -------------------------------------------------------------------------


def _finish_reason(stop_reason: str | None) -> str | None:
    """OpenAI's finish_reason for Converse's stopReason; an unknown one reads as `stop`."""
    if stop_reason is None:
        return None
    return _FINISH_REASONS.get(stop_reason, "stop")


def _prompt_tokens(usage: dict[str, Any]) -> int:
    """All prompt tokens, cached or not.

    With prompt caching `inputTokens` leaves out the tokens read from or written to the cache,
    while OpenAI's `prompt_tokens` (what cost and rate limits are computed from) includes them.
    """
    return sum(
        int(usage.get(name) or 0)
        for name in ("inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
    )


def _tool_call(call_id: str, name: str, arguments: object) -> dict[str, Any]:
    """A `toolUse` block as an OpenAI tool call (a missing input reads as no arguments)."""
    return openai_tool_call(call_id, name, arguments or {})


# -- the request --------------------------------------------------------------------------


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI `image_url` part as a Converse image block: the bytes of a base64 data URL.

    Converse takes images inline (or from S3) only; it cannot fetch an http(s) URL, and
    fetching it here would make the gateway an open proxy, so such a request is refused.
    """
    url = image_url(part)
    if url.startswith(("http://", "https://")):
        # `unsupported`, not bad_request: a deployment on another provider can take the URL.
        raise BackendError(
            "Bedrock Converse does not fetch image URLs: send the image as a data URL",
            error_class="unsupported",
        )
    if not url.startswith("data:"):
        raise bad_request("an image_url must be a base64 data URL")
    media_type, data = split_data_url(url)
    image_format = _IMAGE_FORMATS.get(media_type)
    if image_format is None:
        raise bad_request(f"Bedrock does not take images of type {media_type!r}")
    # boto3 base64-encodes blobs itself: it is given the bytes.
    return {"image": {"format": image_format, "source": {"bytes": decode_base64(data)}}}


def _content_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """The text and image blocks of a message's content (plain text or OpenAI parts)."""
    return [
        {"text": part} if isinstance(part, str) else _image_block(part)
        for part in content_parts(message, "Bedrock Converse")
    ]


def _tool_use_blocks(tool_calls_json: str) -> list[dict[str, Any]]:
    """An assistant's OpenAI tool calls as `toolUse` blocks."""
    return [
        {"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}}
        for call in tool_calls(tool_calls_json)
    ]


def _tool_result_block(message: ChatMessage) -> dict[str, Any]:
    """A role=tool message as a `toolResult` block; its text and images become its content."""
    if not message.tool_call_id:
        raise bad_request("a role=tool message needs tool_call_id")
    return {
        "toolResult": {
            "toolUseId": message.tool_call_id,
            # `content` is required; an empty result is sent as no blocks rather than a blank
            # text block, which Converse refuses.
            "content": _content_blocks(message),
        }
    }


def _system_text(message: ChatMessage) -> str:
    blocks = _content_blocks(message)
    if any("text" not in block for block in blocks):
        raise bad_request("a system message may only hold text")
    return "\n\n".join(block["text"] for block in blocks)


def _conversation(messages: list[ChatMessage]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Converse messages) of an OpenAI conversation. A turn with no block at
    all (an empty assistant message) is left out: Converse refuses it."""
    return conversation(
        messages,
        provider="Bedrock Converse",
        content=_content_blocks,
        tool_uses=_tool_use_blocks,
        tool_result=_tool_result_block,
        system_text=_system_text,
        drop_empty_turns=True,
    )


def _tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools as Converse `toolSpec`s (`parameters` becomes `inputSchema.json`)."""
    out: list[dict[str, Any]] = []
    for tool in function_tools(tools, "Bedrock Converse"):
        spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": tool.parameters}}
        if tool.description:
            spec["description"] = tool.description
        out.append({"toolSpec": spec})
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    """OpenAI's tool_choice as Converse's: auto, required -> any, a function -> tool.

    `none` has no Converse equivalent; None tells the caller to leave the tools out instead.
    """
    kind, name = tool_choice(choice, "Bedrock Converse")
    if kind == "none":
        return None
    if kind == "function":
        return {"tool": {"name": name}}
    return {"any": {}} if kind == "required" else {"auto": {}}


def _uses_tools(turns: list[dict[str, Any]]) -> bool:
    return any(
        "toolUse" in block or "toolResult" in block for turn in turns for block in turn["content"]
    )


def _json_mode_instruction(response_format: Any) -> str | None:
    return json_mode_instruction(response_format, "Bedrock Converse")


def _request(task: InferenceTask) -> dict[str, Any]:
    """The keyword arguments of `converse` / `converse_stream`.

    OpenAI-only extra fields (`logit_bias`, `n`, penalties, `parallel_tool_calls`, ...) and
    `seed` are dropped rather than refused: a request written for OpenAI must still run when
    routing falls back to Bedrock. `max_tokens` is left to the model's default when unset.
    """
    params = task.params
    system, turns = _conversation(task.messages)
    request: dict[str, Any] = {"modelId": task.provider_model, "messages": turns}
    inference: dict[str, Any] = {}
    if params.max_tokens is not None:
        inference["maxTokens"] = params.max_tokens
    if params.temperature is not None:
        inference["temperature"] = min(max(params.temperature, 0.0), _MAX_TEMPERATURE)
    if params.top_p is not None:
        inference["topP"] = params.top_p
    if params.stop:
        inference["stopSequences"] = list(params.stop)
    if inference:
        request["inferenceConfig"] = inference
    if params.response_format_json is not None:
        instruction = _json_mode_instruction(
            parse_json(params.response_format_json, "response_format_json")
        )
        if instruction:
            system.append(instruction)
    if system:
        request["system"] = [{"text": text} for text in system]
    tools: list[dict[str, Any]] = []
    if params.tools_json is not None:
        tools = _tools(parse_json(params.tools_json, "tools_json"))
    if tools:
        choice: dict[str, Any] | None = {"auto": {}}
        if params.tool_choice_json is not None:
            choice = _tool_choice(parse_json(params.tool_choice_json, "tool_choice_json"))
        if choice is not None:
            request["toolConfig"] = {"tools": tools, "toolChoice": choice}
        elif _uses_tools(turns):
            # tool_choice none: Converse still wants the tools declared when the conversation
            # holds toolUse or toolResult blocks, so they are sent without a choice (auto).
            request["toolConfig"] = {"tools": tools}
    if params.extra_json is not None:
        extra = parse_json(params.extra_json, "extra_json")
        if not isinstance(extra, dict):
            raise bad_request("extra_json must be a JSON object")
        request.update({name: v for name, v in extra.items() if name in _PASSTHROUGH_EXTRA})
    return request


# -- errors -------------------------------------------------------------------------------


def _client_error(exc: ClientError) -> BackendError:
    """An error answer (or an exception event inside a stream) as an error class."""
    error = exc.response.get("Error") or {}
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or exc)
    metadata = exc.response.get("ResponseMetadata") or {}
    key = code.lower()
    status = metadata.get("HTTPStatusCode") or _CODE_STATUS.get(key)
    headers = metadata.get("HTTPHeaders") or {}
    retriable = False
    if key in _RATE_LIMITED:
        error_class, retriable = "rate_limited", True
    elif key in _QUOTA:
        # An account quota (not a rate): waiting will not lift it, another deployment might.
        error_class = "rate_limited"
    elif key in _SERVER_ERRORS:
        error_class, retriable = "server_error", True
    elif key in _TIMEOUTS:
        error_class, retriable = "timeout", True
    elif key in _AUTH:
        error_class = "auth"
    elif key in _VALIDATION:
        text = message.lower()
        if any(marker in text for marker in _CONTEXT_MARKERS):
            error_class = "context_too_long"
        elif any(marker in text for marker in _POLICY_MARKERS):
            error_class = "content_policy"
        else:
            error_class = "bad_request"
    elif isinstance(status, int) and status >= 500:
        error_class, retriable = "server_error", True
    elif status == 429:
        error_class, retriable = "rate_limited", True
    else:  # ResourceNotFoundException (a wrong model id or region), ConflictException, ...
        error_class = "unknown"
    return BackendError(
        f"Bedrock answered {code or status}: {message}",
        error_class=error_class,
        status_code=status if isinstance(status, int) else None,
        retriable=retriable,
        retry_after_s=retry_after_s(headers) if retriable else None,
    )


def _to_backend_error(exc: Exception) -> BackendError:
    """The one translation of botocore (and, under a stream, urllib3) exceptions into the
    gateway's error classes."""
    if isinstance(exc, ClientError):  # EventStreamError (mid-stream) included
        return _client_error(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return BackendError(
            "no usable AWS credentials for Bedrock: the standard AWS chain (environment, "
            f"profile, SSO, web identity, instance or container role) found none ({exc})",
            error_class="auth",
        )
    if isinstance(exc, NoAuthTokenError):
        return BackendError(f"no usable Bedrock bearer token: {exc}", error_class="auth")
    if isinstance(exc, NoRegionError):
        # A configuration problem of this deployment only: another deployment may serve.
        return BackendError(
            "no AWS region for Bedrock: set the deployment's `region` or AWS_REGION",
            error_class="auth",
        )
    if isinstance(exc, ParamValidationError):
        return BackendError(f"Bedrock refused the request: {exc}", error_class="bad_request")
    # ConnectTimeoutError subclasses botocore's ConnectionError, so timeouts are tested first.
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError | urllib3.exceptions.TimeoutError):
        return BackendError(
            f"Bedrock did not answer in time: {exc}", error_class="timeout", retriable=True
        )
    if isinstance(exc, BotoConnectionError):  # EndpointConnectionError, a proxy, TLS
        return BackendError(
            f"could not reach Bedrock: {exc}", error_class="connection", retriable=True
        )
    if isinstance(exc, HTTPClientError | urllib3.exceptions.HTTPError | EventStreamParserError):
        # ConnectionClosedError, a stream cut mid-frame (ProtocolError), a corrupt frame.
        return BackendError(
            f"the connection to Bedrock broke: {exc!r}", error_class="connection", retriable=True
        )
    return BackendError(f"Bedrock failed: {exc!r}", error_class="unknown")
