"""A real Anthropic Messages API server on loopback, for tests.

It answers `POST /v1/messages`, as JSON or, when `stream` is set, as Anthropic's named SSE events
(message_start, content_block_start/delta/stop, ping, message_delta, message_stop). Answers are
built on the recorded shapes in tests/fixtures/providers/anthropic/, so what the adapter parses
here is what the real API sends. The reply is derived from the request: `echo: <last user
text>`, cut at a stop sequence or at `max_tokens` words, with usage counted in words. When the
request forces a tool (`tool_choice` `any` or `tool`) the reply is one `tool_use` of it instead.

The fake checks the request as strictly as the real API where a mapping bug would show: the
`anthropic-version` header, `model`, `max_tokens` and `messages` are required, roles must
alternate, text blocks must not be empty, and from API version 2026-10-21 on `temperature`,
`top_p` and `top_k` are refused; a broken request gets Anthropic's 400 `invalid_request_error`.

Failures are scripted: every request takes the next `Behaviour` from a queue, and an empty queue
means success. Every request body and its headers are recorded.

    async with FakeAnthropicUpstream() as up:
        up.script(Behaviour.error(429, retry_after="2"))
        ... up.base_url ...      # the SDK's base_url: no /v1, the SDK adds it
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers" / "anthropic"

# The API version from which temperature, top_p and top_k are refused with a 400.
SAMPLING_REMOVED_IN = "2026-10-21"

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def load_json(name: str) -> Any:
    """A recorded JSON fixture, e.g. `message_text.json`."""
    return json.loads((FIXTURES / name).read_text())


def load_sse(name: str) -> list[tuple[str, dict[str, Any]]]:
    """A recorded SSE transcript as (event name, data) pairs, in order."""
    events: list[tuple[str, dict[str, Any]]] = []
    for frame in (FIXTURES / name).read_text().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.strip().splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the fake does with one request. The default is an immediate success."""

    status: int = 200  # >= 400 answers an Anthropic error body with this status
    message: str | None = None  # the error's message
    error_type: str | None = None  # the error's type; by default derived from the status
    error_code: str | None = None  # error.details.error_code, e.g. enforced_spend_limit_reached
    retry_after: str | None = None  # the retry-after header of an error answer
    delay_s: float = 0.0  # wait before answering anything
    event_delay_s: float = 0.0  # wait between SSE events
    drop_after_events: int | None = None  # abort the connection after this many SSE events
    stream_error_after: int | None = None  # send an `error` event after this many SSE events
    reply: str | None = None  # answer this text instead of the echo
    stop_reason: str | None = None  # report this stop_reason instead of the derived one
    fixture: str | None = None  # answer this recorded fixture (.json or .sse) verbatim, with status

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        error_code: str | None = None,
        retry_after: str | float | None = None,
    ) -> Behaviour:
        """Answer `status` with an Anthropic error body (and a retry-after header if given)."""
        return cls(
            status=status,
            message=message,
            error_type=error_type,
            error_code=error_code,
            retry_after=None if retry_after is None else str(retry_after),
        )

    @classmethod
    def slow(cls, delay_s: float) -> Behaviour:
        return cls(delay_s=delay_s)

    @classmethod
    def slow_stream(cls, event_delay_s: float) -> Behaviour:
        return cls(event_delay_s=event_delay_s)

    @classmethod
    def drop(cls, after_events: int = 0) -> Behaviour:
        """Close the connection: before answering, or after that many SSE events of a stream."""
        return cls(drop_after_events=after_events)

    @classmethod
    def overloaded_mid_stream(cls, after_events: int = 2) -> Behaviour:
        """Start a 200 stream, then send an `overloaded_error` event, as the real API does."""
        return cls(stream_error_after=after_events, error_type="overloaded_error")

    @classmethod
    def recorded(
        cls, fixture: str, *, status: int = 200, retry_after: str | None = None
    ) -> Behaviour:
        """Answer a recorded fixture verbatim: a Message, an SSE transcript or an error body."""
        return cls(fixture=fixture, status=status, retry_after=retry_after)


class FakeAnthropicUpstream(LoopbackServer):
    """The server. `base_url` is valid between `start()` and `stop()`."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key  # when set, a request presenting any other key gets a 401
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        self._script.clear()
        self.requests.clear()
        self.headers.clear()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)

    # -- the handler ----------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        request_id = f"req_fake_{next(self._ids):06d}"
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "The request body is not valid JSON.", request_id)
        self.requests.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        behaviour = self._script.popleft() if self._script else Behaviour()
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        stream = isinstance(body, dict) and bool(body.get("stream"))
        if behaviour.drop_after_events == 0 or (
            behaviour.drop_after_events is not None and not stream
        ):
            return _drop(request)
        if self.api_key is not None and self.api_key not in _credentials(request):
            return _error(401, "invalid x-api-key", request_id)
        if behaviour.status >= 400 and behaviour.fixture is not None:
            headers = _ids(request_id)
            if behaviour.retry_after is not None:
                headers["retry-after"] = behaviour.retry_after
            body = load_json(behaviour.fixture)
            return web.json_response(body, status=behaviour.status, headers=headers)
        if behaviour.status >= 400:
            return _error(
                behaviour.status,
                behaviour.message,
                request_id,
                error_type=behaviour.error_type,
                error_code=behaviour.error_code,
                retry_after=behaviour.retry_after,
            )
        problem = _validate(body, request.headers.get("anthropic-version"))
        if problem is not None:
            return _error(400, problem, request_id)
        if behaviour.fixture is not None:
            if behaviour.fixture.endswith(".sse"):
                return await _write_events(request, load_sse(behaviour.fixture), behaviour)
            return web.json_response(load_json(behaviour.fixture), headers=_ids(request_id))
        message = _reply(body, f"msg_fake_{request_id[-6:]}", behaviour)
        if stream:
            return await _write_events(request, _events(message), behaviour)
        return web.json_response(message, headers=_ids(request_id))


# -- validation, as strict as the real API where the adapter's mapping could go wrong -----


def _validate(body: Any, version: str | None) -> str | None:
    if not version:
        return "anthropic-version: header is required"
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if version >= SAMPLING_REMOVED_IN:
        for field in ("temperature", "top_p", "top_k"):
            if field in body:
                return f"{field}: Extra inputs are not permitted"
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            return f"{field}: Field required"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i and message["role"] == messages[i - 1]["role"]:
            return "messages: roles must alternate between 'user' and 'assistant'"
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks or []:
            if block.get("type") == "text" and not block.get("text"):
                return f"messages.{i}: text content blocks must be non-empty"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or list"
    return None


# -- the reply -----------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(
        b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"
    )


def _forced_tool(body: dict[str, Any]) -> str | None:
    tools, choice = body.get("tools") or [], body.get("tool_choice") or {}
    if choice.get("type") == "tool":
        return str(choice.get("name"))
    if choice.get("type") == "any" and tools:
        return str(tools[0]["name"])
    return None


def _reply(body: dict[str, Any], message_id: str, behaviour: Behaviour) -> dict[str, Any]:
    """A Message on the shape of the recorded `message_text.json`."""
    messages = body["messages"]
    system = body.get("system")
    prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
    prompt_tokens += len(_text(system).split()) if system else 0
    last_user = next((_text(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
    message = load_json("message_text.json")
    message.update(id=message_id, model=body["model"], stop_sequence=None)
    tool = _forced_tool(body)
    if tool is not None:
        call = {
            "type": "tool_use",
            "id": f"toolu_{message_id}",
            "name": tool,
            "input": {"text": last_user},
        }
        message.update(content=[call], stop_reason="tool_use")
        output_tokens = 1 + len(last_user.split())
    else:
        words = (behaviour.reply if behaviour.reply is not None else f"echo: {last_user}").split()
        stop_reason = "end_turn"
        for stop in body.get("stop_sequences") or []:
            if stop in words:
                words, stop_reason = words[: words.index(stop)], "stop_sequence"
                message["stop_sequence"] = stop
                break
        if len(words) > body["max_tokens"]:
            words, stop_reason = words[: body["max_tokens"]], "max_tokens"
        message.update(content=[{"type": "text", "text": " ".join(words)}], stop_reason=stop_reason)
        output_tokens = len(words)
    if behaviour.stop_reason is not None:
        message["stop_reason"] = behaviour.stop_reason
    message["usage"].update(input_tokens=prompt_tokens, output_tokens=output_tokens)
    return message


def _events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of `message`, on the shape of the recorded `stream_*.sse` transcripts."""
    started = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    started["usage"] = {**message["usage"], "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": started}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            words = block["text"].split(" ")
            pieces = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
            deltas = [{"type": "text_delta", "text": piece} for piece in pieces if piece]
        else:
            start = {**block, "input": {}}
            arguments = json.dumps(block["input"])
            half = len(arguments) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": ""},
                {"type": "input_json_delta", "partial_json": arguments[:half]},
                {"type": "input_json_delta", "partial_json": arguments[half:]},
            ]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    usage = {"output_tokens": message["usage"]["output_tokens"]}
    events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# -- the wire --------------------------------------------------------------------------------


def _credentials(request: web.Request) -> set[str]:
    """The keys a request presents: `x-api-key`, or the `Authorization: Bearer` newer SDKs send."""
    keys = {request.headers.get("x-api-key", "")}
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        keys.add(authorization.removeprefix("Bearer "))
    return keys - {""}


def _ids(request_id: str) -> dict[str, str]:
    return {"request-id": request_id}


def _error(
    status: int,
    message: str | None,
    request_id: str,
    *,
    error_type: str | None = None,
    error_code: str | None = None,
    retry_after: str | None = None,
) -> web.Response:
    """Anthropic's error body: {"type": "error", "error": {type, message}, "request_id"}."""
    error: dict[str, Any] = {
        "type": error_type or ERROR_TYPES.get(status, "api_error"),
        "message": message or f"fake upstream error {status}",
    }
    if error_code is not None:
        error["details"] = {"error_code": error_code}
    headers = _ids(request_id)
    if retry_after is not None:
        headers["retry-after"] = retry_after
    body = {"type": "error", "error": error, "request_id": request_id}
    return web.json_response(body, status=status, headers=headers)


def _drop(request: web.Request) -> web.Response:
    """Abort the TCP connection; the client sees it closed with no (or a cut) answer."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)


async def _write_events(
    request: web.Request, events: list[tuple[str, dict[str, Any]]], behaviour: Behaviour
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for i, (name, data) in enumerate(events):
        if behaviour.drop_after_events is not None and i >= behaviour.drop_after_events:
            _drop(request)
            return response
        if behaviour.stream_error_after is not None and i >= behaviour.stream_error_after:
            error = {
                "type": behaviour.error_type or "overloaded_error",
                "message": behaviour.message or "Overloaded",
            }
            name, data = "error", {"type": "error", "error": error}
        if i and behaviour.event_delay_s:
            await asyncio.sleep(behaviour.event_delay_s)
        await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        if name == "error":
            break
    await response.write_eof()
    return response
