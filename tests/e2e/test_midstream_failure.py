"""Streams that die halfway, through the bridge with the official `openai` client (stream=True).

An upstream can die mid-stream three ways (tests/fakes/openai_upstream.py): abort the TCP
connection (`drop`), end the HTTP body cleanly without a finish chunk or `[DONE]` (`cut`), or send
an in-band error event (`error`). Each has a deployment `mid-<way>` on the second fake upstream,
behind an alias `gpt-mid-<way>` that falls back to `fake` (tests/conftest.py).

The rule: the caller gets the whole answer (a retry or the fallback, when the stream died before
any text reached it) or an explicit error (once text has reached it, a retry would repeat it) —
never a stream that ends normally with a truncated answer.

An inference worker can also die mid-stream: its task is redelivered and runs again from the
start, so the bridge sees the chunks it already relayed a second time. Those tests write the
TokenChunks of such a run themselves onto sg.stream for a request that nothing else answers.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.schemas.models import RequestReceived, TokenChunk, TokenUsage
from sluicegate.settings import Settings
from tests.conftest import CALLER_TOKEN, MIDSTREAM_WAYS
from tests.fakes.openai_upstream import Behaviour
from tests.topics_io import produce, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(90)]

# `k` SSE chunks of the fake: chunk 0 is the role, chunk 1 the first word, and so on.
AUTH = {"Authorization": f"Bearer {CALLER_TOKEN}"}
DIES = {"drop": Behaviour.drop, "cut": Behaviour.cut, "error": Behaviour.error_midstream}


@pytest.fixture(scope="module")
def client(bridge_url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{bridge_url}/v1", api_key=CALLER_TOKEN, max_retries=0, timeout=60
    )


@pytest.fixture(scope="module")
def serde(settings: Settings):
    return build_serde(settings)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def asked(fake: Any, provider_model: str, question: str) -> int:
    """How many chat requests for `provider_model` asked `question`."""
    return sum(
        1
        for body in list(fake.requests)
        if body.get("model") == provider_model and body["messages"][-1]["content"] == question
    )


def read_stream(client: openai.OpenAI, model: str, question: str) -> tuple[str, list[str | None]]:
    """The streamed text and the finish reasons of the chunks, as the SDK hands them out."""
    stream = client.chat.completions.create(model=model, messages=user(question), stream=True)
    text, finishes = [], []
    for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finishes.append(choice.finish_reason)
    return "".join(text), finishes


@pytest.mark.parametrize("way", MIDSTREAM_WAYS)
def test_a_stream_that_dies_before_any_text_still_gives_the_whole_answer(
    client: openai.OpenAI, upstream, upstream2, way: str
) -> None:
    question = f"died before any text by {way} {uuid.uuid4().hex[:6]}"
    upstream2.script(DIES[way](1))  # the role chunk only

    text, finishes = read_stream(client, f"gpt-mid-{way}", question)

    assert text == f"echo: {question}"
    assert finishes[-1] == "stop"
    assert asked(upstream2, f"mid-{way}-model", question) >= 1
    if way == "error":  # an in-band error is not retriable: the fallback answered
        assert asked(upstream, "fake-model", question) == 1
    else:  # a broken connection is retried on the same deployment, which then answers
        assert asked(upstream2, f"mid-{way}-model", question) == 2
        assert asked(upstream, "fake-model", question) == 0


@pytest.mark.parametrize("way", MIDSTREAM_WAYS)
def test_a_stream_that_dies_after_text_is_an_explicit_error_never_a_normal_finish(
    client: openai.OpenAI, upstream, upstream2, way: str
) -> None:
    question = f"died after some text by {way} one two three four five {uuid.uuid4().hex[:6]}"
    upstream2.script(DIES[way](3))  # the role chunk and two words

    received: list[str] = []
    finishes: list[str | None] = []
    with pytest.raises(openai.APIError) as raised:
        stream = client.chat.completions.create(
            model=f"gpt-mid-{way}", messages=user(question), stream=True
        )
        for chunk in stream:
            for choice in chunk.choices:
                received.append(choice.delta.content or "")
                finishes.append(choice.finish_reason)

    error = raised.value
    assert "broke" in error.message, error.message
    # Chunks travel on sg.stream, the rejection on sg.responses: when the rejection overtakes
    # them the caller gets a plain 502 before any chunk; otherwise the error event mid-stream.
    if isinstance(error, openai.APIStatusError):
        assert error.status_code == 502 and not received
    assert not any(finishes), "a broken stream must not end with a finish_reason"
    assert f"echo: {question}".startswith("".join(received))  # a prefix, nothing made up
    assert asked(upstream2, f"mid-{way}-model", question) == 1  # not retried: it would repeat
    time.sleep(1.0)  # a wrong fallback would have reached the other upstream by now
    assert asked(upstream, "fake-model", question) == 0


def test_the_raw_sse_of_a_broken_stream_ends_with_an_error_event(
    bridge_url: str, upstream2
) -> None:
    """What a hand-written SSE client sees: an error object, and no chunk with finish_reason."""
    question = f"raw broken stream a b c d e f {uuid.uuid4().hex[:6]}"
    upstream2.script(Behaviour.cut(3))
    with httpx.stream(
        "POST",
        f"{bridge_url}/v1/chat/completions",
        json={"model": "gpt-mid-cut", "messages": user(question), "stream": True},
        headers=AUTH,
        timeout=30,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    if response.status_code == 502:  # the rejection overtook the chunks: a plain HTTP error
        return
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    assert "error" in events[-1] and "broke" in events[-1]["error"]["message"]
    assert all(c["choices"][0]["finish_reason"] is None for c in events[:-1])


# -- an inference worker that died mid-stream: the task runs again from the start ---------------


def _journaled_request(settings: Settings, serde, marker: str) -> RequestReceived:
    """The RequestReceived the bridge wrote for the request whose prompt is `marker`."""

    def match(_key: bytes | None, value: bytes) -> bool:
        try:
            event = serde.decode(value)
        except Exception:
            return False
        return isinstance(event, RequestReceived) and event.messages[-1].content == marker

    _key, value = wait_for(settings, settings.topic("requests"), match, timeout_s=30)
    event = serde.decode(value)
    assert isinstance(event, RequestReceived)
    return event


def _chunk(request: RequestReceived, index: int, delta: str, finish: str | None = None):
    return TokenChunk(
        event_id=new_event_id(),
        occurred_at=now(),
        tenant_id=request.tenant_id,
        request_id=request.request_id,
        trace_id=request.trace_id or new_trace_id(),
        span_id=new_span_id(),
        producer="inference",
        index=index,
        delta=delta,
        finish_reason=finish,
        usage=TokenUsage(prompt_tokens=1, completion_tokens=3, total_tokens=4) if finish else None,
        model=request.model,
    )


def _stream_with_chunks(
    bridge_url: str, settings: Settings, serde, runs: list[list[tuple[int, str, str | None]]]
) -> list[dict[str, Any]]:
    """Stream a request to the alias that never answers, then write `runs` of chunks for it
    (each run a list of (index, delta, finish_reason)) and return the SSE events received."""
    import threading

    marker = f"replayed stream {uuid.uuid4().hex}"
    events: list[dict[str, Any]] = []

    def read() -> None:
        with httpx.stream(
            "POST",
            f"{bridge_url}/v1/chat/completions",
            json={"model": "blackhole", "messages": user(marker), "stream": True},
            headers={"X-Sluicegate-Timeout": "20", **AUTH},
            timeout=40,
        ) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))
                elif line == "data: [DONE]":
                    events.append({"done": True})

    reader = threading.Thread(target=read)
    reader.start()
    request = _journaled_request(settings, serde, marker)
    for run in runs:
        for index, delta, finish in run:
            produce(
                settings,
                settings.topic("stream"),
                request.request_id.encode(),
                serde.encode(_chunk(request, index, delta, finish)),
            )
    reader.join(45)
    assert not reader.is_alive()
    return events


def test_a_task_run_again_from_the_start_is_relayed_once(
    bridge_url: str, settings: Settings, serde, workers
) -> None:
    first = [(0, "echo:", None), (1, " one", None)]  # then the worker died
    again = [(0, "echo:", None), (1, " one", None), (2, " two", None), (3, "", "stop")]

    events = _stream_with_chunks(bridge_url, settings, serde, [first, again])

    chunks = [e for e in events if "choices" in e]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo: one two"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert events[-1] == {"done": True}


def test_a_run_again_that_differs_from_what_was_relayed_is_an_explicit_error(
    bridge_url: str, settings: Settings, serde, workers
) -> None:
    first = [(0, "echo:", None), (1, " one", None)]
    again = [(0, "echo:", None), (1, " uno", None), (2, " dos", None), (3, "", "stop")]

    events = _stream_with_chunks(bridge_url, settings, serde, [first, again])

    chunks = [e for e in events if "choices" in e]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo: one"
    assert not any(c["choices"][0]["finish_reason"] for c in chunks)
    errors = [e for e in events if "error" in e]
    assert errors and errors[0]["error"]["code"] == "stream_diverged"
