"""The inference stage streaming under an output guard: what reaches sg.stream, in what order."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sluicegate.connectors.ports import Completion, Delta
from sluicegate.errors import BackendError
from sluicegate.processors.guard_output import OutputGuard
from sluicegate.processors.inference import InferenceStage
from sluicegate.schemas.models import (
    InferenceResult,
    InferenceTask,
    RequestRejected,
    ResponseReady,
    Span,
    TokenChunk,
)
from sluicegate.settings import Deployment, GuardrailsSettings
from tests.builders import task

pytestmark = pytest.mark.unit

PHONE = "+1 415 555 2671"
ANSWER = (
    "Sure, happy to help with that request today. The number on the account is "
    f"{PHONE} and it was last verified in March, so it should still be current."
)
PRICED = {
    "local-smollm2": Deployment(
        name="local-smollm2",
        backend="openai",
        provider_model="p",
        input_usd_per_mtok=1.0,
        output_usd_per_mtok=2.0,
    )
}


class Streaming:
    """Streams `text` in pieces of `size` characters (a PII value lands across several)."""

    def __init__(self, text: str, *, size: int = 3, error: BackendError | None = None) -> None:
        self.text, self.size, self.error = text, size, error

    async def complete(self, task: InferenceTask) -> Completion:
        raise AssertionError("streaming only")

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        for i in range(0, len(self.text), self.size):
            yield Delta(text=self.text[i : i + self.size])
        if self.error:
            raise self.error
        yield Delta(text="", finish_reason="stop", prompt_tokens=5, completion_tokens=40)

    async def aclose(self) -> None:
        return None


def stage(backend: Streaming, **guardrails: Any) -> InferenceStage:
    settings = GuardrailsSettings(
        output_stream_window_chars=16, output_stream_overlap_chars=32, **guardrails
    )
    return InferenceStage(
        backends={"local-smollm2": backend},
        deployments=PRICED,
        output_guard=OutputGuard(settings=settings),
    )


async def collect(s: InferenceStage, t: InferenceTask) -> list:
    return [emit async for emit in s.run(t)]


def chunks(emits: list) -> list[TokenChunk]:
    return [e.event for e in emits if isinstance(e.event, TokenChunk)]


def finals(emits: list) -> list:
    return [e.event for e in emits if isinstance(e.event, ResponseReady | RequestRejected)]


async def test_masked_chunks_are_contiguous_and_add_up_to_the_journalled_answer() -> None:
    emits = await collect(stage(Streaming(ANSWER), output_pii_action="mask"), task(stream=True))
    streamed = chunks(emits)
    assert [c.index for c in streamed] == list(range(len(streamed)))  # the bridge's sequence
    assert all(c.finish_reason is None for c in streamed[:-1])
    assert streamed[-1].finish_reason == "stop" and streamed[-1].delta == ""
    text = "".join(c.delta for c in streamed)
    assert "555 2671" not in text and "[PHONE ***71]" in text
    [response] = finals(emits)
    assert isinstance(response, ResponseReady) and response.message.content == text
    guard_span = next(
        e.event for e in emits if isinstance(e.event, Span) and e.event.name == "output_guard"
    )
    assert int(guard_span.attributes["stream_holdback_checks"]) > 3
    assert len(streamed) > 3  # released window by window, not all at the end


async def test_a_block_mid_stream_ends_it_at_once_without_the_value() -> None:
    emits = await collect(stage(Streaming(ANSWER), output_pii_action="block"), task(stream=True))
    topics = [e.topic for e in emits]
    streamed = chunks(emits)
    assert streamed and topics.index("stream") < topics.index("responses")  # text before it went
    assert topics.index("responses") < topics.index("inference.results")  # the block, at once
    assert [c.index for c in streamed] == list(range(len(streamed)))
    assert all(c.finish_reason is None for c in streamed)  # no normal end: the error is the end
    text = "".join(c.delta for c in streamed)
    assert ANSWER.startswith(text) and len(text) <= ANSWER.index(PHONE)
    [final] = finals(emits)  # one final result, sent before the upstream was read to its end
    assert isinstance(final, RequestRejected) and final.code == "output_pii_detected"
    assert final.stage == "output_guard" and final.http_status == 502
    result = next(e.event for e in emits if isinstance(e.event, InferenceResult))
    assert result.usage.completion_tokens == 40  # still read to the end: the cost is known
    assert "cost" in topics and "cache" not in topics


async def test_a_block_only_the_whole_answer_shows_withholds_the_last_window() -> None:
    """Invalid JSON is only known at the end: the last window is never released."""
    fmt = json.dumps({"type": "json_object"})
    t = task(stream=True)
    t = t.model_copy(update={"params": t.params.model_copy(update={"response_format_json": fmt})})
    emits = await collect(
        stage(Streaming(ANSWER), output_pii_action="mask", json_schema_action="block"), t
    )
    [final] = finals(emits)
    assert isinstance(final, RequestRejected) and final.code == "invalid_json_output"
    text = "".join(c.delta for c in chunks(emits))
    assert len(text) < len(ANSWER) - 32 and not any(c.finish_reason for c in chunks(emits))


async def test_an_upstream_that_breaks_after_the_block_adds_no_second_answer() -> None:
    error = BackendError("cut", error_class="connection", retriable=True)
    backend = Streaming(ANSWER, error=error)
    emits = await collect(stage(backend, output_pii_action="block"), task(stream=True))
    [final] = finals(emits)
    assert isinstance(final, RequestRejected) and final.code == "output_pii_detected"
    assert not any(
        e.topic.startswith("inference.") and e.topic != "inference.results" for e in emits
    )


async def test_nothing_released_yet_means_a_broken_stream_is_an_ordinary_failure() -> None:
    error = BackendError("cut", error_class="connection", retriable=True)
    backend = Streaming(ANSWER[:40], error=error)  # under one window: nothing was released
    emits = await collect(stage(backend, output_pii_action="mask"), task(stream=True))
    assert chunks(emits) == []
    assert emits[-1].topic == "inference.default"  # retried: the caller has seen nothing


async def test_passthrough_streams_each_delta_as_it_comes() -> None:
    backend = Streaming(ANSWER)
    emits = await collect(
        stage(backend, output_pii_action="mask", output_stream_mode="passthrough"),
        task(stream=True),
    )
    streamed = chunks(emits)
    assert [c.delta for c in streamed[:-1]] == [ANSWER[i : i + 3] for i in range(0, len(ANSWER), 3)]
    [response] = finals(emits)
    assert "555 2671" not in (response.message.content or "")  # only the journal copy is masked
