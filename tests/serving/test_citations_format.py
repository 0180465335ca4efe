"""The `sluicegate.citations` extension field of chat completions (RAG)."""

from __future__ import annotations

import json

import openai
import pytest

from sluicegate.schemas.models import ChatMessage, ResponseReady, TokenChunk, TokenUsage
from sluicegate.serving.openai_format import render_chunk, render_completion
from tests.builders import envelope

pytestmark = pytest.mark.unit

CITATIONS = [{"number": 1, "doc_id": "guide.md", "title": "Guide", "chunk_ids": ["guide.md#c0"]}]
USAGE = TokenUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


def answer(citations: list | None) -> ResponseReady:
    return ResponseReady(
        **envelope(),
        model="chat",
        deployment="a",
        provider_model="m",
        message=ChatMessage(role="assistant", content="With backoff [1]."),
        finish_reason="stop",
        usage=USAGE,
        latency_ms=1.0,
        citations_json=json.dumps(citations) if citations is not None else None,
    )


def test_a_completion_carries_its_citations_and_the_sdk_keeps_them() -> None:
    body = render_completion(answer(CITATIONS))
    assert body["sluicegate"] == {"citations": CITATIONS}
    parsed = openai.types.chat.ChatCompletion.model_validate(body)
    assert parsed.model_extra["sluicegate"]["citations"][0]["doc_id"] == "guide.md"
    assert render_completion(answer([]))["sluicegate"] == {"citations": []}
    assert "sluicegate" not in render_completion(answer(None))


def test_the_last_chunk_of_a_stream_carries_them() -> None:
    last = TokenChunk(
        **envelope(),
        index=3,
        delta="",
        finish_reason="stop",
        usage=USAGE,
        model="chat",
        citations_json=json.dumps(CITATIONS),
    )
    assert render_chunk(last, created=0, first=False)["sluicegate"]["citations"] == CITATIONS
    middle = last.model_copy(update={"finish_reason": None, "citations_json": None})
    assert "sluicegate" not in render_chunk(middle, created=0, first=False)
