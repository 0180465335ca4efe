"""Reading the OpenAI-shaped parts of an InferenceTask, for adapters of APIs that are not OpenAI.

The journal keeps every request in OpenAI's shape (messages, tool calls, tools, tool_choice,
response_format, image parts). The Anthropic and Bedrock adapters both take it apart the same
way and differ only in the blocks they build from the pieces, so the reading, its validation
and its error messages live here once; each adapter keeps only its own output shape.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sluicegate.errors import BackendError
from sluicegate.schemas.models import ChatMessage

JSON_INSTRUCTION = "Respond with one valid JSON object and nothing else: no prose, no code fences."

Block = dict[str, Any]


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BackendError(f"{what} is not valid JSON: {exc}", error_class="bad_request") from exc


def bad_request(message: str) -> BackendError:
    return BackendError(message, error_class="bad_request")


# -- content ------------------------------------------------------------------------------


def content_parts(message: ChatMessage, provider: str) -> list[str | dict[str, Any]]:
    """A message's content as text (str) and image parts (the OpenAI `image_url` part).

    Empty text is left out: both APIs refuse blank text blocks.
    """
    if message.content_parts_json is None:
        return [message.content] if message.content else []
    parts = parse_json(message.content_parts_json, "content_parts_json")
    if isinstance(parts, str):
        return [parts] if parts else []
    if not isinstance(parts, list):
        raise bad_request("content_parts_json must be a list of content parts")
    out: list[str | dict[str, Any]] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                out.append(part["text"])
        elif kind == "image_url":
            out.append(part)
        else:
            raise bad_request(f"{provider} does not take content parts of type {kind!r}")
    return out


def image_url(part: dict[str, Any]) -> str:
    """The URL of an OpenAI `image_url` part (either `{"url": ...}` or the bare string)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad_request("an image_url part has no url")
    return url


def split_data_url(url: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL."""
    header, _, data = url.removeprefix("data:").partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64" or not data:
        raise bad_request("an image data URL must be base64-encoded (data:<type>;base64,<data>)")
    return media_type, data


def decode_base64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"an image data URL is not valid base64: {exc}") from exc


# -- tools --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


def tool_calls(tool_calls_json: str) -> list[ToolCall]:
    """An assistant's OpenAI tool calls, their arguments parsed back to JSON objects."""
    calls = parse_json(tool_calls_json, "tool_calls_json")
    if not isinstance(calls, list):
        raise bad_request("tool_calls_json must be a list of tool calls")
    out: list[ToolCall] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not call.get("id") or not function.get("name"):
            raise bad_request("a tool call needs an id and a function name")
        arguments = function.get("arguments") or "{}"
        parsed = (
            parse_json(arguments, "tool call arguments")
            if isinstance(arguments, str)
            else arguments
        )
        if not isinstance(parsed, dict):
            raise bad_request("tool call arguments must be a JSON object")
        out.append(ToolCall(call["id"], function["name"], parsed))
    return out


def openai_tool_call(call_id: str, name: str, arguments: object) -> dict[str, Any]:
    """A provider's tool-use block as an OpenAI tool call: the arguments become a JSON string."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    description: str | None
    parameters: dict[str, Any]


def function_tools(tools: Any, provider: str) -> list[FunctionTool]:
    """OpenAI function tools; a tool without parameters takes an empty object."""
    if not isinstance(tools, list):
        raise bad_request("tools_json must be a list of tools")
    out: list[FunctionTool] = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise bad_request(f"{provider} takes function tools only")
        if not function.get("name"):
            raise bad_request("a function tool needs a name")
        out.append(
            FunctionTool(
                function["name"],
                function.get("description") or None,
                function.get("parameters") or {"type": "object", "properties": {}},
            )
        )
    return out


ToolChoiceKind = Literal["auto", "none", "required", "function"]


def tool_choice(choice: Any, provider: str) -> tuple[ToolChoiceKind, str | None]:
    """OpenAI's tool_choice as (kind, function name for `function`)."""
    if choice in ("auto", "none", "required"):
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name:
            return "function", name
    raise bad_request(f"tool_choice {choice!r} has no {provider} equivalent")


# -- response format and the conversation -------------------------------------------------


def json_mode_instruction(response_format: Any, provider: str) -> str | None:
    """The system instruction that stands in for OpenAI's `response_format`.

    Neither API has a JSON mode that works across its models, so JSON output is asked for in
    the system prompt. That is a request, not a guarantee: callers must still parse defensively.
    """
    if not isinstance(response_format, dict):
        raise bad_request("response_format_json must be a JSON object")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSON_INSTRUCTION
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            return JSON_INSTRUCTION
        return f"{JSON_INSTRUCTION} It must validate against this JSON Schema: " + json.dumps(
            schema, separators=(",", ":")
        )
    raise bad_request(f"response_format type {kind!r} has no {provider} equivalent")


def conversation(
    messages: list[ChatMessage],
    *,
    provider: str,
    content: Callable[[ChatMessage], list[Block]],
    tool_uses: Callable[[str], list[Block]],
    tool_result: Callable[[ChatMessage], Block],
    system_text: Callable[[ChatMessage], str],
    drop_empty_turns: bool = False,
) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, alternating user/assistant turns) of an OpenAI conversation.

    System messages are lifted out wherever they stand, since both APIs take the system prompt
    apart from the turns. Tool results go into a user turn. Consecutive turns of one role are
    merged because both want user and assistant to alternate; merging keeps every block in
    order, so the results of parallel calls land in one user turn, ahead of any text.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            text = system_text(message)
            if text:
                system.append(text)
            continue
        if message.role == "user":
            role, blocks = "user", content(message)
        elif message.role == "assistant":
            role, blocks = "assistant", content(message)
            if message.tool_calls_json is not None:
                blocks += tool_uses(message.tool_calls_json)
        elif message.role == "tool":
            role, blocks = "user", [tool_result(message)]
        else:
            raise bad_request(f"{provider} does not take messages of role {message.role!r}")
        if drop_empty_turns and not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def text_messages(messages: list[ChatMessage], *, reader: str) -> list[dict[str, str]]:
    """Plain-text chat messages for a local chat template (llama.cpp, vLLM); multi-part
    content keeps its text parts, and anything else is refused as `bad_request` naming
    `reader` (e.g. "this local model")."""
    out = []
    for message in messages:
        content = message.content or ""
        if message.content_parts_json is not None:
            try:
                parts = json.loads(message.content_parts_json)
            except ValueError as exc:
                raise BackendError(
                    f"content_parts_json is not valid JSON: {exc}", error_class="bad_request"
                ) from exc
            if any(p.get("type") != "text" for p in parts):
                raise BackendError(f"{reader} reads text only", error_class="bad_request")
            content = "".join(p.get("text", "") for p in parts)
        out.append({"role": message.role, "content": content})
    return out
