"""The InferenceBackend adapter for OpenAI-compatible servers over a bare aiohttp session.

Why: the official `openai` SDK costs ~1.2 ms of client CPU per non-streaming call and ~3.3 ms
per stream (httpx, and pydantic models for every answer and chunk), this adapter ~0.11 ms and
~0.23 ms (`python -m bench.openai_client`); at 150 req/s the SDK was ~40% of the inference
worker's CPU. This adapter is the default for `backend: openai` (`client: aiohttp`); `client: sdk`
and every `azure` deployment keep the SDK adapter (inference_openai.py).

It behaves like the SDK adapter, on purpose and tested side by side
(tests/connectors/test_inference_backends.py): the body comes from the same function
(`chat_body`: `extra_body` merged into the top level like the SDK does), HTTP errors go through
the same classification (`status_error`, with the SDK's wording), `timeout_s` bounds connecting
and every wait for bytes like the SDK's `timeout=`, nothing is retried, and the Completion's
fields, `tool_calls_json` included, are those the SDK adapter builds from the same answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from sluicegate.connectors.inference_openai import chat_body, last_delta, status_error
from sluicegate.connectors.ports import Completion, Delta
from sluicegate.errors import BackendError
from sluicegate.schemas.models import InferenceTask
from sluicegate.settings import Deployment

# When a deployment names no `base_url`. (The SDK would first look at OPENAI_BASE_URL; the
# catalogue names its URLs itself, so this adapter does not.)
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Idle connections are dropped after this long, below the 5 s keep-alive of uvicorn-based
# servers (vLLM, most proxies), so a connection the server is closing is not picked up again.
_KEEPALIVE_S = 4.0
# How long to wait for the end of the body after `[DONE]` (the SDK waits 0.1 s too): read to its
# end, the connection goes back to the pool; a server that keeps it open only loses it.
_DRAIN_S = 0.1
_STREAM_ERROR = "An error occurred during streaming"  # the SDK's text for an error without one


def _user_agent() -> str:
    try:
        return f"sluicegate/{importlib.metadata.version('sluicegate')}"
    except importlib.metadata.PackageNotFoundError:
        return "sluicegate"


class OpenAIHttpBackend:
    """Calls `POST {base_url}/chat/completions` of one `openai` deployment with aiohttp.

    One `aiohttp.ClientSession` (keep-alive, no connection limit) per backend and event loop: it
    is created on the first call, in the loop that runs it, and replaced if a call comes from
    another loop, since an aiohttp session is bound to the loop it was created in.
    """

    def __init__(self, *, deployment: Deployment) -> None:
        self._deployment = deployment
        base_url = (deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._url = f"{base_url}/chat/completions"
        key = deployment.api_key
        # A server without auth (vLLM, Ollama) ignores the header; the SDK sends "unused" too.
        secret = key.get_secret_value() if key is not None else "unused"
        self._headers = {
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": _user_agent(),
        }
        # Like the SDK's `timeout=` (httpx: connect, read, write and pool each `timeout_s`): a
        # slow answer and a stalled stream both fail after `timeout_s` without a byte.
        timeout_s = deployment.timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._proxy = env_proxy(self._url)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def complete(self, task: InferenceTask) -> Completion:
        try:
            async with self._answer(chat_body(task, stream=False)) as response:
                payload = await response.read()
        except (aiohttp.ClientError, OSError) as exc:  # OSError includes TimeoutError
            raise _transport_error(exc) from exc
        return _completion(payload, task)

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        """Yield each content delta, then one Delta with finish_reason and usage."""
        state = _StreamState(model=task.provider_model)
        try:
            async with self._answer(chat_body(task, stream=True)) as response:
                async for data in _SseEvents(response.content):
                    if data.startswith(b"[DONE]"):
                        await _drain(response.content)
                        break
                    text = state.take(_event(data))
                    if text:
                        yield Delta(text=text)
        except (aiohttp.ClientError, OSError) as exc:  # OSError includes TimeoutError
            raise _transport_error(exc) from exc
        yield last_delta(
            state.finish_reason, state.prompt_tokens, state.completion_tokens, state.model
        )

    @contextlib.asynccontextmanager
    async def _answer(self, body: dict[str, Any]) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST the body; a 2xx answer is yielded, any other is raised as its BackendError."""
        async with self._http().post(
            self._url, data=_encode(body), headers=self._headers, proxy=self._proxy
        ) as response:
            if not 200 <= response.status < 300:
                raise await _status_error(response)
            yield response

    async def aclose(self) -> None:
        session, loop = self._session, self._loop
        self._session = self._loop = None
        if session is None or session.closed:
            return
        if loop is asyncio.get_running_loop():
            await session.close()
        else:
            _close_elsewhere(session, loop)

    def _http(self) -> aiohttp.ClientSession:
        """The session of the running loop, created on first use."""
        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and self._loop is loop and not session.closed:
            return session
        if session is not None and not session.closed:
            _close_elsewhere(session, self._loop)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        self._loop = loop
        return self._session


def _close_elsewhere(
    session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop | None
) -> None:
    """Close a session of another loop on that loop, if it still runs (best effort: a closed
    loop's connections are gone with it)."""
    if loop is not None and loop.is_running():
        asyncio.run_coroutine_threadsafe(session.close(), loop)


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY, ALL_PROXY and NO_PROXY name for `url`, as the SDK's httpx
    client (`trust_env`) uses them. Read once: aiohttp's own `trust_env` reads the environment on
    every request, which cost 0.36 ms of CPU per call, three times the rest of the call."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# -- non-streaming answers ------------------------------------------------------------------


def _completion(payload: bytes, task: InferenceTask) -> Completion:
    """The Completion of a 200 answer, field by field as the SDK adapter builds it."""
    try:
        answer = json.loads(payload)
    except ValueError as exc:
        raise BackendError(
            "the upstream answered 200 with a body that is not JSON", error_class="unknown"
        ) from exc
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices:
        raise BackendError("the upstream answered without choices", error_class="unknown")
    try:
        choice = choices[0]
        message = choice.get("message") or {}
        usage = answer.get("usage") or {}
        tool_calls = message.get("tool_calls")
        return Completion(
            text=message.get("content"),
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            provider_model=answer.get("model") or task.provider_model,
            tool_calls_json=json.dumps([_tool_call(c) for c in tool_calls]) if tool_calls else None,
        )
    except (AttributeError, TypeError) as exc:
        raise BackendError(
            f"the upstream answered in an unexpected shape: {exc}", error_class="unknown"
        ) from exc


# The SDK's tool-call models (openai/types/chat/chat_completion_message_*_tool_call.py) and their
# fields in declaration order: `model_dump(exclude_none=True)` writes those first, then unknown
# fields in arrival order, and drops None on these two levels only (not inside unknown fields).
_CALL_FIELDS = {"custom": ("id", "custom", "type")}
_FUNCTION_CALL_FIELDS = ("id", "function", "type")
_INNER_FIELDS = {"function": ("arguments", "name"), "custom": ("input", "name")}


def _tool_call(call: Any) -> Any:
    """One tool call as the SDK adapter renders it: `call.model_dump(mode="json",
    exclude_none=True)`, so both adapters give the same `tool_calls_json` for one answer."""
    if not isinstance(call, dict):
        return call
    fields = _CALL_FIELDS.get(call.get("type"), _FUNCTION_CALL_FIELDS)
    out = _as_sdk_model(call, fields)
    inner = fields[1]
    if isinstance(out.get(inner), dict):
        out[inner] = _as_sdk_model(out[inner], _INNER_FIELDS[inner])
    return out


def _as_sdk_model(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    ordered = {name: obj[name] for name in fields if name in obj}
    ordered.update(obj)  # unknown fields after, in arrival order
    return {name: value for name, value in ordered.items() if value is not None}


# -- streams --------------------------------------------------------------------------------


class _SseEvents:
    """The data of each server-sent event of a body, as bytes, decoded like the SDK's decoder:
    lines end in LF, CRLF or CR, a blank line ends an event, several `data:` lines join with LF,
    comments and other fields are skipped, an event unfinished at the end is dropped. No line
    size limit (aiohttp's `readline` has one)."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._rest = b""  # the start of a line whose end has not come yet
        self._skip_lf = False  # the last piece ended in CR: a LF first in the next one is its pair
        self._data: list[bytes] = []
        self._ready: deque[bytes] = deque()
        self._eof = False

    def __aiter__(self) -> _SseEvents:
        return self

    async def __anext__(self) -> bytes:
        while not self._ready:
            if self._eof:
                raise StopAsyncIteration
            piece = await self._content.readany()
            if piece:
                self._feed(piece)
            else:  # an unfinished line cannot finish an event: nothing is left to hand out
                self._eof = True
        return self._ready.popleft()

    def _feed(self, piece: bytes) -> None:
        if self._skip_lf and piece.startswith(b"\n"):
            piece = piece[1:]
        # bytes.splitlines splits on exactly LF, CRLF and CR, the SSE line ends.
        lines = (self._rest + piece).splitlines(keepends=True)
        ended = not lines or lines[-1].endswith((b"\n", b"\r"))
        self._rest = b"" if ended else lines.pop()
        self._skip_lf = ended and bool(lines) and lines[-1].endswith(b"\r")
        self._lines(lines)

    def _lines(self, lines: list[bytes]) -> None:
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                if self._data:
                    self._ready.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read what follows `[DONE]`, for at most `_DRAIN_S`; failures there change nothing."""
    try:
        async with asyncio.timeout(_DRAIN_S):
            while await content.readany():
                pass
    except (aiohttp.ClientError, OSError):
        pass


def _event(data: bytes) -> dict[str, Any]:
    """One event's JSON chunk; an in-band `{"error": ...}` event raises as the SDK adapter does
    (the SDK's `APIError`: class `unknown`, not retriable)."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise BackendError(
            f"the upstream sent a stream event that is not JSON: {data[:200]!r}",
            error_class="unknown",
        ) from exc
    if not isinstance(chunk, dict):
        raise BackendError(
            f"the upstream sent a stream event that is not an object: {data[:200]!r}",
            error_class="unknown",
        )
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = _STREAM_ERROR
        raise BackendError(f"the upstream failed: {message}", error_class="unknown")
    return chunk


@dataclass(slots=True)
class _StreamState:
    """What the chunks of one stream said so far, for its last Delta."""

    model: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def take(self, chunk: dict[str, Any]) -> str | None:
        """Note the chunk's model, usage and finish_reason; return its content, if any."""
        try:
            self.model = chunk.get("model") or self.model
            usage = chunk.get("usage")
            if usage is not None:
                self.prompt_tokens = usage.get("prompt_tokens") or 0
                self.completion_tokens = usage.get("completion_tokens") or 0
            choices = chunk.get("choices")
            if not choices:
                return None
            choice = choices[0]
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            return (choice.get("delta") or {}).get("content")
        except (AttributeError, TypeError) as exc:
            raise BackendError(
                f"the upstream sent a stream chunk in an unexpected shape: {exc}",
                error_class="unknown",
            ) from exc


# -- errors -------------------------------------------------------------------------------


async def _status_error(response: aiohttp.ClientResponse) -> BackendError:
    """The BackendError of a non-2xx answer, with the SDK adapter's class and wording."""
    text = (await response.read()).decode("utf-8", errors="replace")
    message, code, error_type = error_fields(response.status, text)
    return status_error(response.status, response.headers, message, code, error_type)


def error_fields(status: int, text: str) -> tuple[str, str | None, str | None]:
    """(message, code, type) of an error answer's body, read as the SDK reads it: the OpenAI
    error object (`{"error": {...}}`, or the body itself when it has no `error`), the message as
    `Error code: <status> - <error.message>`. A body that is not JSON gives just the status."""
    message = f"Error code: {status}"
    try:
        body = json.loads(text)
    except ValueError:
        return message, None, None
    error = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return message, None, None
    detail, code, error_type = error.get("message"), error.get("code"), error.get("type")
    if isinstance(detail, str) and detail:
        message += f" - {detail}"
    return (
        message,
        str(code) if code is not None else None,
        str(error_type) if error_type is not None else None,
    )


def _transport_error(exc: BaseException) -> BackendError:
    """A failure without an HTTP answer: a timeout, or a connection refused, dropped or cut."""
    # aiohttp's timeouts (ServerTimeoutError and its kin) subclass TimeoutError, itself an OSError.
    if isinstance(exc, TimeoutError):
        return BackendError(
            f"the upstream did not answer in time: {exc!r}", error_class="timeout", retriable=True
        )
    return BackendError(
        f"could not reach the upstream: {exc!r}", error_class="connection", retriable=True
    )
