"""OpenAI's chat-completions wire format: parse a request body into RequestReceived, render
ResponseReady and TokenChunk back into exactly what the `openai` SDK parses, and the error JSON.

Pure functions, no I/O: the bridge calls them, tests call them directly.
"""

from __future__ import annotations

import json
from typing import Any

from sluicegate.schemas.models import (
    ChatMessage,
    RequestReceived,
    ResponseReady,
    SamplingParams,
    TokenChunk,
    TokenUsage,
)

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# Body fields mapped onto typed event fields; everything else rides along in extra_json.
_TYPED = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "user",
    "metadata",
    "n",
}


class InvalidRequest(Exception):
    """A body that OpenAI would answer with a 400; `param` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def error_body(
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidRequest(f"'{name}' must be a number between {lo} and {hi}.", param=name)
    return float(value)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    return value


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _message(index: int, raw: Any) -> ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidRequest(
            f"'{param}.role' must be one of {sorted(ROLES)}.", param=f"{param}.role"
        )
    content = raw.get("content")
    parts: str | None = None
    if isinstance(content, list):
        texts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        if len(texts) != len(content):
            parts = _json_or_none(content)
        content = "".join(texts)
    elif content is not None and not isinstance(content, str):
        raise InvalidRequest(
            f"'{param}.content' must be a string or a list of parts.", param=f"{param}.content"
        )
    if content is None and role != "assistant":
        raise InvalidRequest(
            f"'{param}.content' is required for role '{role}'.", param=f"{param}.content"
        )
    name = raw.get("name")
    return ChatMessage(
        role=role,
        content=content,
        name=name if isinstance(name, str) else None,
        tool_call_id=raw.get("tool_call_id"),
        tool_calls_json=_json_or_none(raw.get("tool_calls")),
        content_parts_json=parts,
    )


def parse_chat_request(body: Any, **envelope: Any) -> RequestReceived:
    """Validate an OpenAI chat body and build the journal event; `envelope` fills the rest."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    messages = [_message(i, m) for i, m in enumerate(raw_messages)]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if body.get("n") not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object.", param="metadata")
    extra = {k: v for k, v in body.items() if k not in _TYPED}
    if body.get("stream_options") is not None:
        extra["stream_options"] = body["stream_options"]
    params = SamplingParams(
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        max_tokens=_positive_int(body, "max_completion_tokens")
        or _positive_int(body, "max_tokens"),
        stop=stop or [],
        seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
        response_format_json=_json_or_none(body.get("response_format")),
        tools_json=_json_or_none(body.get("tools")),
        tool_choice_json=_json_or_none(body.get("tool_choice")),
        extra_json=_json_or_none(extra) if extra else None,
    )
    user = body.get("user")
    return RequestReceived(
        **envelope,
        model=model,
        messages=messages,
        params=params,
        stream=stream,
        user=user if isinstance(user, str) else None,
        metadata={str(k): str(v) for k, v in metadata.items()},
    )


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def _usage(usage: TokenUsage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def render_completion(response: ResponseReady) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": response.message.content}
    if response.message.tool_calls_json:
        message["tool_calls"] = json.loads(response.message.tool_calls_json)
    body = {
        "id": completion_id(response.request_id),
        "object": "chat.completion",
        "created": int(response.occurred_at.timestamp()),
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": response.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(response.usage),
        "system_fingerprint": response.deployment or None,
    }
    return _with_citations(body, response.citations_json)


def _with_citations(body: dict[str, Any], citations_json: str | None) -> dict[str, Any]:
    """The extension field `sluicegate.citations` (RAG: the numbered sources of the context the
    request was enriched with); the SDK keeps unknown fields (`completion.model_extra`)."""
    if citations_json is not None:
        body["sluicegate"] = {"citations": json.loads(citations_json)}
    return body


def render_chunk(chunk: TokenChunk, *, created: int, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": chunk.delta} if chunk.delta or first else {}
    if first:
        delta["role"] = "assistant"
    body = {
        "id": completion_id(chunk.request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": chunk.model,
        "choices": [
            {"index": 0, "delta": delta, "finish_reason": chunk.finish_reason, "logprobs": None}
        ],
    }
    return _with_citations(body, chunk.citations_json)


def render_usage_chunk(chunk: TokenChunk, usage: TokenUsage, *, created: int) -> dict[str, Any]:
    """The extra last chunk OpenAI sends when `stream_options.include_usage` is true."""
    return {
        "id": completion_id(chunk.request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": chunk.model,
        "choices": [],
        "usage": _usage(usage),
    }
