"""A real bedrock-runtime server on loopback, for tests: boto3 is pointed at it with
`endpoint_url` and dummy credentials, and everything botocore does — SigV4 signing, the REST
JSON protocol, the AWS event-stream binary framing of ConverseStream — runs for real.

It answers `POST /model/{modelId}/converse` as JSON and `POST /model/{modelId}/converse-stream`
as `application/vnd.amazon.eventstream` frames (prelude, `:event-type` / `:content-type` /
`:message-type` headers, CRC32s), encoded here by `frame()`. Answers are built on the shapes of
tests/fixtures/providers/bedrock/ (hand-written from the AWS API reference and the botocore
service model, not captured from AWS). The reply is derived from the request: `echo: <last
user text>`, cut at a stop sequence or at `maxTokens` words, with usage counted in words. When
`toolChoice` forces a tool (`any` or `tool`) the reply is one `toolUse` of it instead.

The fake checks the request as strictly as the real API where a mapping bug would show: a SigV4
`Authorization` for service `bedrock` in the expected region and with the expected key,
`messages` non-empty, starting with a user turn and alternating, no empty content and no blank
text, images whose bytes are valid base64, `toolConfig` present whenever toolUse or toolResult
blocks are, each toolResult answering a toolUse of the previous turn, and inferenceConfig
ranges. A broken request gets Bedrock's 400 `ValidationException`.

Failures are scripted: every request takes the next `Behaviour` from a queue, and an empty queue
means success. Every request body, operation, model id and header set is recorded.

    async with FakeBedrockUpstream() as up:
        up.script(Behaviour.error(429, "ThrottlingException"))
        ... up.endpoint_url ...
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers" / "bedrock"

ACCESS_KEY = "AKIAFAKEBEDROCKTEST1"
SECRET_KEY = "fake-secret-key-for-the-loopback-bedrock"
REGION = "us-east-1"
IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
# The error a code stands for when a test scripts only a status.
STATUS_CODES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def load_json(name: str) -> Any:
    """A recorded fixture: a Converse answer, a stream transcript or an error."""
    return json.loads((FIXTURES / name).read_text())


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total and headers length), prelude CRC32,
    headers (all of type 7, string), payload, and the CRC32 of everything before it."""
    encoded = b"".join(
        struct.pack(">B", len(name))
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value))
        + value.encode()
        for name, value in headers.items()
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


def event_frame(event: str, data: dict[str, Any]) -> bytes:
    headers = {":event-type": event, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(data).encode())


def exception_frame(exception: str, message: str) -> bytes:
    """An exception inside a 200 stream: its type in camelCase, as ConverseStream names it."""
    headers = {
        ":exception-type": exception,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, json.dumps({"message": message}).encode())


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the fake does with one request. The default is an immediate success."""

    status: int = 200  # >= 400 answers a Bedrock error with this status
    code: str | None = None  # the error's type (x-amzn-ErrorType); by default from the status
    message: str | None = None  # the error's message
    retry_after: str | None = None  # a retry-after header on the error answer
    delay_s: float = 0.0  # wait before answering anything
    event_delay_s: float = 0.0  # wait between stream events
    drop_after_events: int | None = None  # abort the connection after this many stream events
    exception_after: int | None = None  # send an exception frame after this many stream events
    truncate_after: int | None = None  # end the stream cleanly after this many events
    reply: str | None = None  # answer this text instead of the echo
    stop_reason: str | None = None  # report this stopReason instead of the derived one
    fixture: str | None = None  # answer this recorded fixture verbatim

    @classmethod
    def error(
        cls,
        status: int,
        code: str | None = None,
        message: str | None = None,
        *,
        retry_after: str | float | None = None,
    ) -> Behaviour:
        return cls(
            status=status,
            code=code,
            message=message,
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
        """Close the connection: before answering, or after that many events of a stream."""
        return cls(drop_after_events=after_events)

    @classmethod
    def exception_mid_stream(
        cls, code: str = "throttlingException", message: str | None = None, *, after: int = 2
    ) -> Behaviour:
        """Start a 200 stream, then send an exception frame, as ConverseStream does."""
        return cls(exception_after=after, code=code, message=message)

    @classmethod
    def recorded(cls, fixture: str) -> Behaviour:
        """Answer a fixture: a Converse answer, a stream transcript or an error (its status)."""
        return cls(fixture=fixture)


class FakeBedrockUpstream(LoopbackServer):
    """The server. `endpoint_url` is valid between `start()` and `stop()`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_key: str = ACCESS_KEY,
        region: str = REGION,
    ) -> None:
        super().__init__(host=host, port=port)
        self.access_key = access_key
        self.region = region
        self.requests: list[dict[str, Any]] = []
        self.operations: list[tuple[str, str]] = []  # (operation, model id) per request
        self.headers: list[dict[str, str]] = []
        self._ids = itertools.count(1)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        self._script.clear()
        self.requests.clear()
        self.operations.clear()
        self.headers.clear()

    def routes(self, app: web.Application) -> None:
        # One catch-all route: a model id may be an ARN, whose `/` botocore sends as %2F.
        app.router.add_post("/{tail:.*}", self._handle)

    # -- the handler ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        request_id = f"00000000-0000-4000-8000-{next(self._ids):012d}"
        segments = request.raw_path.split("?", 1)[0].split("/")
        if len(segments) != 4 or segments[1] != "model":
            return _error(404, "UnknownOperationException", "Not Found", request_id)
        model_id, operation = unquote(segments[2]), segments[3]
        if operation not in ("converse", "converse-stream"):
            return _error(404, "UnknownOperationException", "Not Found", request_id)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "SerializationException", "Malformed JSON body.", request_id)
        self.requests.append(body)
        self.operations.append((operation, model_id))
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        behaviour = self._script.popleft() if self._script else Behaviour()
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        stream = operation == "converse-stream"
        if behaviour.drop_after_events == 0 or (
            behaviour.drop_after_events is not None and not stream
        ):
            return _drop(request)
        problem = self._check_signature(request)
        if problem is not None:
            return _error(403, "UnrecognizedClientException", problem, request_id)
        fixture = load_json(behaviour.fixture) if behaviour.fixture else None
        if isinstance(fixture, dict) and "status" in fixture:
            return _error(
                fixture["status"],
                fixture["type"],
                fixture["body"]["message"],
                request_id,
                retry_after=behaviour.retry_after,
            )
        if behaviour.status >= 400:
            code = behaviour.code or STATUS_CODES.get(behaviour.status, "InternalServerException")
            message = behaviour.message or f"fake upstream error {behaviour.status}"
            return _error(
                behaviour.status, code, message, request_id, retry_after=behaviour.retry_after
            )
        problem = _validate(body)
        if problem is not None:
            return _error(400, "ValidationException", problem, request_id)
        if fixture is not None:
            if stream:
                events = [(e["event"], e["data"]) for e in fixture]
                return await _write_events(request, events, behaviour, request_id)
            return web.json_response(fixture, headers=_ids(request_id))
        answer = _reply(body, request_id, behaviour)
        if stream:
            return await _write_events(request, _events(answer), behaviour, request_id)
        return web.json_response(answer, headers=_ids(request_id))

    def _check_signature(self, request: web.Request) -> str | None:
        """SigV4 as botocore sends it, for this key, region and the `bedrock` signing name."""
        authorization = request.headers.get("Authorization", "")
        expected = f"AWS4-HMAC-SHA256 Credential={self.access_key}/"
        if not authorization.startswith(expected) or "X-Amz-Date" not in request.headers:
            return "The security token included in the request is invalid."
        scope = authorization.removeprefix(expected).split(",", 1)[0]
        if scope.split("/")[1:] != [self.region, "bedrock", "aws4_request"]:
            return f"Credential should be scoped to a valid region and service: {scope}"
        return None


# -- validation, as strict as the real API where the adapter's mapping could go wrong -----


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Malformed input request: the body must be a JSON object."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "A conversation must start with a user message. Try again with a conversation."
    uses_tools = False
    tool_use_ids: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: must be user or assistant"
        if i == 0 and role != "user":
            return "A conversation must start with a user message. Try again with a conversation."
        if i and role == messages[i - 1]["role"]:
            return "A conversation must alternate between user and assistant roles."
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return f"The content field in the Message object at messages.{i} is empty."
        answered: set[str] = set()
        for block in content:
            problem = _check_block(block, i)
            if problem is not None:
                return problem
            if "toolUse" in block:
                uses_tools = True
                answered.add(block["toolUse"]["toolUseId"])
            if "toolResult" in block:
                uses_tools = True
                if block["toolResult"]["toolUseId"] not in tool_use_ids:
                    return (
                        f"messages.{i}: toolResult blocks must answer a toolUse block of the "
                        "previous turn"
                    )
        tool_use_ids = answered
    if uses_tools and "toolConfig" not in body:
        return (
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    for block in body.get("system") or []:
        if not block.get("text", "").strip():
            return "The text field in the SystemContentBlock object is blank."
    config = body.get("inferenceConfig") or {}
    for name in ("temperature", "topP"):
        if name in config and not 0 <= config[name] <= 1:
            return f"inferenceConfig.{name}: must be between 0 and 1"
    if "maxTokens" in config and config["maxTokens"] < 1:
        return "inferenceConfig.maxTokens: must be at least 1"
    return None


def _check_block(block: dict[str, Any], i: int) -> str | None:
    if "text" in block and not block["text"].strip():
        return f"The text field in the ContentBlock object at messages.{i} is blank."
    if "image" in block:
        image = block["image"]
        if image.get("format") not in IMAGE_FORMATS:
            return f"messages.{i}: image format must be one of png, jpeg, gif, webp"
        try:
            base64.b64decode(image["source"]["bytes"], validate=True)
        except (KeyError, binascii.Error, ValueError):
            return f"messages.{i}: image bytes are not valid base64"
    return None


# -- the reply -----------------------------------------------------------------------------


def _text(content: list[dict[str, Any]]) -> str:
    return " ".join(block["text"] for block in content if "text" in block)


def _forced_tool(body: dict[str, Any]) -> str | None:
    config = body.get("toolConfig") or {}
    choice, tools = config.get("toolChoice") or {}, config.get("tools") or []
    if "tool" in choice:
        return str(choice["tool"]["name"])
    if "any" in choice and tools:
        return str(tools[0]["toolSpec"]["name"])
    return None


def _reply(body: dict[str, Any], request_id: str, behaviour: Behaviour) -> dict[str, Any]:
    """A Converse answer on the shape of the recorded `converse_text.json`."""
    messages = body["messages"]
    prompt_tokens = sum(len(_text(m["content"]).split()) for m in messages)
    prompt_tokens += sum(len(b.get("text", "").split()) for b in body.get("system") or [])
    last_user = next((_text(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
    answer = load_json("converse_text.json")
    tool = _forced_tool(body)
    if tool is not None:
        call = {
            "toolUseId": f"tooluse_{request_id[-12:]}",
            "name": tool,
            "input": {"text": last_user},
        }
        content: list[dict[str, Any]] = [{"toolUse": call}]
        stop_reason, output_tokens = "tool_use", 1 + len(last_user.split())
    else:
        words = (behaviour.reply if behaviour.reply is not None else f"echo: {last_user}").split()
        config = body.get("inferenceConfig") or {}
        stop_reason = "end_turn"
        for stop in config.get("stopSequences") or []:
            if stop in words:
                words, stop_reason = words[: words.index(stop)], "stop_sequence"
                break
        if "maxTokens" in config and len(words) > config["maxTokens"]:
            words, stop_reason = words[: config["maxTokens"]], "max_tokens"
        content, output_tokens = [{"text": " ".join(words)}], len(words)
    answer["output"]["message"]["content"] = content
    answer["stopReason"] = behaviour.stop_reason or stop_reason
    answer["usage"] = {
        "inputTokens": prompt_tokens,
        "outputTokens": output_tokens,
        "totalTokens": prompt_tokens + output_tokens,
    }
    return answer


def _events(answer: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The stream events of `answer`, on the shape of the recorded `stream_*.json`: text
    blocks have no contentBlockStart, toolUse blocks start with their id and name."""
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    for index, block in enumerate(answer["output"]["message"]["content"]):
        if "text" in block:
            words = block["text"].split(" ")
            pieces = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
            deltas = [{"text": piece} for piece in pieces if piece]
        else:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            events.append(("contentBlockStart", {"start": start, "contentBlockIndex": index}))
            arguments = json.dumps(use["input"])
            half = len(arguments) // 2
            deltas = [
                {"toolUse": {"input": arguments[:half]}},
                {"toolUse": {"input": arguments[half:]}},
            ]
        events.extend(
            ("contentBlockDelta", {"delta": d, "contentBlockIndex": index}) for d in deltas
        )
        events.append(("contentBlockStop", {"contentBlockIndex": index}))
    events.append(("messageStop", {"stopReason": answer["stopReason"]}))
    events.append(("metadata", {"usage": answer["usage"], "metrics": {"latencyMs": 1}}))
    return events


# -- the wire --------------------------------------------------------------------------------


def _ids(request_id: str) -> dict[str, str]:
    return {"x-amzn-RequestId": request_id}


def _error(
    status: int, code: str, message: str, request_id: str, *, retry_after: str | None = None
) -> web.Response:
    """Bedrock's error answer: the type in `x-amzn-ErrorType`, `{"message"}` as the body."""
    headers = {
        **_ids(request_id),
        "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
    }
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return web.json_response({"message": message}, status=status, headers=headers)


def _drop(request: web.Request) -> web.Response:
    """Abort the TCP connection; the client sees it closed with no (or a cut) answer."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)


async def _write_events(
    request: web.Request,
    events: list[tuple[str, dict[str, Any]]],
    behaviour: Behaviour,
    request_id: str,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "application/vnd.amazon.eventstream", **_ids(request_id)}
    )
    await response.prepare(request)
    for i, (name, data) in enumerate(events):
        if behaviour.drop_after_events is not None and i >= behaviour.drop_after_events:
            _drop(request)
            return response
        if behaviour.truncate_after is not None and i >= behaviour.truncate_after:
            break
        if behaviour.exception_after is not None and i >= behaviour.exception_after:
            message = behaviour.message or "Too many tokens, please wait before trying again."
            await response.write(exception_frame(behaviour.code or "throttlingException", message))
            break
        if i and behaviour.event_delay_s:
            await asyncio.sleep(behaviour.event_delay_s)
        await response.write(event_frame(name, data))
    await response.write_eof()
    return response
