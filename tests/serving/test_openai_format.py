from __future__ import annotations

import json

import pytest

from sluicegate.serving.openai_format import InvalidRequest, parse_chat_request, render_completion
from tests.builders import envelope

pytestmark = pytest.mark.unit


def parse(body: object):
    return parse_chat_request(body, **envelope())


def test_typed_fields_and_passthrough() -> None:
    event = parse(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
            "temperature": 0.2,
            "max_completion_tokens": 9,
            "stop": "END",
            "seed": 3,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "logit_bias": {"1": 2},
            "stream": True,
            "stream_options": {"include_usage": True},
            "metadata": {"team": "a"},
        }
    )
    assert event.messages[1].content == "hi" and event.messages[1].content_parts_json is None
    assert event.params.temperature == 0.2 and event.params.max_tokens == 9
    assert event.params.stop == ["END"] and event.params.seed == 3
    assert json.loads(event.params.tools_json)[0]["function"]["name"] == "f"
    assert json.loads(event.params.extra_json) == {
        "logit_bias": {"1": 2},
        "stream_options": {"include_usage": True},
    }
    assert event.stream and event.metadata == {"team": "a"}


def test_image_parts_are_kept_whole() -> None:
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    event = parse({"model": "m", "messages": [{"role": "user", "content": parts}]})
    assert json.loads(event.messages[0].content_parts_json) == parts


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "temperature",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
    ],
)
def test_invalid_bodies_name_the_offending_param(body: object, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(body)
    assert raised.value.param == param


def test_render_completion_is_openai_shaped() -> None:
    from sluicegate.schemas.models import ChatMessage, ResponseReady, TokenUsage

    response = ResponseReady(
        **envelope(),
        model="m",
        deployment="d",
        provider_model="p",
        message=ChatMessage(role="assistant", content="hey"),
        finish_reason="stop",
        latency_ms=1.0,
        usage=TokenUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
    )
    body = render_completion(response)
    assert body["object"] == "chat.completion" and body["id"].endswith(response.request_id)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hey"}
    assert body["usage"]["total_tokens"] == 3
