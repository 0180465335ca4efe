"""The aiohttp adapter for `backend: openai` next to the SDK adapter, on answers the fake upstream
never gives: odd but real shapes (tool calls with unknown or null fields, missing usage, non-JSON
error pages, vLLM's and Ollama's error bodies, SSE with CRLF, comments and split lines), served
verbatim by a small loopback server. Both adapters read the same bytes and must agree.

Also what only the aiohttp adapter has: its session (kept alive across calls, one per event loop)
and its URL and headers. The contract both share is tests/connectors/test_inference_backends.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from sluicegate.connectors.inference_openai import OpenAICompatibleBackend
from sluicegate.connectors.inference_openai_http import OpenAIHttpBackend, env_proxy
from sluicegate.connectors.ports import Completion, Delta, InferenceBackend
from sluicegate.errors import BackendError
from sluicegate.settings import Deployment
from tests.connectors.test_inference_backends import make_task
from tests.fakes.openai_upstream import FakeOpenAIUpstream

pytestmark = pytest.mark.asyncio(loop_scope="session")

JSON = "application/json"
SSE = "text/event-stream"


@dataclass
class Canned:
    """One answer, sent as is; `piece` > 0 writes the body in pieces of that many bytes."""

    body: bytes
    status: int = 200
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    piece: int = 0
    cuts: tuple[int, ...] = ()  # or write it in pieces cut at these offsets
    tail_delay_s: float = 0.0  # wait before ending a body written in pieces


class CannedUpstream:
    """`POST /v1/chat/completions` answering the queued `Canned` answers in order."""

    def __init__(self) -> None:
        self.answers: deque[Canned] = deque()
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.peers: list[Any] = []  # the client's address and port of each request
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.headers.append(dict(request.headers))
        self.paths.append(request.path)
        self.peers.append(
            request.transport.get_extra_info("peername") if request.transport else None
        )
        answer = self.answers.popleft()
        if not answer.piece and not answer.cuts:
            return web.Response(
                status=answer.status,
                body=answer.body,
                headers={"Content-Type": answer.content_type, **answer.headers},
            )
        response = web.StreamResponse(
            status=answer.status, headers={"Content-Type": answer.content_type, **answer.headers}
        )
        await response.prepare(request)
        for piece in pieces(answer):
            await response.write(piece)
            if answer.cuts:  # the client reads each piece on its own, the cut where it is
                await asyncio.sleep(0.005)
        if answer.tail_delay_s:
            await asyncio.sleep(answer.tail_delay_s)
        await response.write_eof()
        return response


def pieces(answer: Canned) -> list[bytes]:
    body = answer.body
    if answer.cuts:
        bounds = [0, *answer.cuts, len(body)]
        return [body[a:b] for a, b in itertools.pairwise(bounds)]
    return [body[start : start + answer.piece] for start in range(0, len(body), answer.piece)]


@pytest_asyncio.fixture(loop_scope="session")
async def canned() -> AsyncIterator[CannedUpstream]:
    server = CannedUpstream()
    await server.start()
    yield server
    await server.stop()


def deployment(base_url: str | None, client: str = "aiohttp", **fields: Any) -> Deployment:
    return Deployment(
        name="d",
        backend="openai",
        provider_model="p",
        base_url=base_url,
        timeout_s=10.0,
        client=client,
        **fields,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def both(canned: CannedUpstream) -> AsyncIterator[dict[str, InferenceBackend]]:
    adapters: dict[str, InferenceBackend] = {
        "aiohttp": OpenAIHttpBackend(deployment=deployment(canned.base_url)),
        "sdk": OpenAICompatibleBackend(deployment=deployment(canned.base_url, "sdk")),
    }
    yield adapters
    for adapter in adapters.values():
        await adapter.aclose()
    canned.answers.clear()


async def complete_both(
    both: dict[str, InferenceBackend], canned: CannedUpstream, answer: Canned
) -> dict[str, Completion | BackendError]:
    """What each adapter makes of the same answer: its Completion, or the BackendError."""
    results: dict[str, Completion | BackendError] = {}
    for client, adapter in both.items():
        canned.answers.append(answer)
        try:
            results[client] = await adapter.complete(make_task())
        except BackendError as exc:
            results[client] = exc
    return results


async def stream_both(
    both: dict[str, InferenceBackend], canned: CannedUpstream, answer: Canned
) -> dict[str, tuple[list[Delta], tuple[Any, ...] | None]]:
    """Each adapter's deltas of the same stream, and its failure (class, retriable, text)."""
    results = {}
    for client, adapter in both.items():
        canned.answers.append(answer)
        deltas: list[Delta] = []
        failure = None
        try:
            async for delta in adapter.stream(make_task()):
                deltas.append(delta)
        except BackendError as exc:
            failure = (exc.error_class, exc.retriable, str(exc))
        results[client] = (deltas, failure)
    return results


def completion(message: dict[str, Any], **answer: Any) -> bytes:
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    body = {"id": "c-1", "object": "chat.completion", "model": "served", "choices": [choice]}
    body.update(answer)
    return json.dumps(body).encode()


# -- non-streaming answers ------------------------------------------------------------------

ODD_TOOL_CALLS = [
    # unknown fields, at both levels and inside them, with nulls at every depth
    {
        "index": 0,
        "type": "function",
        "id": "c1",
        "function": {"name": "f", "arguments": "{}", "extra": None, "x": {"a": None, "b": 1}},
        "z": None,
        "y": [None, {"q": None}],
    },
    {"type": "function", "function": {"name": "f"}, "id": None},  # null id, no arguments
    {"id": "c2", "type": "custom", "custom": {"name": "g", "input": "hi"}},
    {"id": "c3", "type": "weird", "function": {"name": "g", "arguments": "x"}, "w": 1},
    {"id": "c4", "function": {"name": "g", "arguments": "x"}},  # no type
    {
        "function": {"arguments": "x", "name": "g", "thought": "t"},
        "id": "c5",
        "type": "function",
        "extra_content": {"google": {"thought_signature": "s"}},
    },
]
ANSWERS = [
    pytest.param(
        completion(
            {"role": "assistant", "content": None, "tool_calls": ODD_TOOL_CALLS},
            usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        ),
        id="odd-tool-calls",
    ),
    pytest.param(completion({"role": "assistant", "content": "x"}), id="no-usage"),
    pytest.param(completion({"role": "assistant", "content": "x"}, usage=None), id="null-usage"),
    pytest.param(completion({"role": "assistant", "content": "x"}, model=None), id="null-model"),
    pytest.param(
        json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}
        ).encode(),
        id="no-finish-reason-no-model",
    ),
    pytest.param(completion({"role": "assistant", "content": ""}), id="empty-content"),
    pytest.param(
        completion({"role": "assistant", "content": "x", "tool_calls": []}), id="no-tool-calls"
    ),
    pytest.param(json.dumps({"id": "c", "choices": []}).encode(), id="no-choices"),
]


@pytest.mark.parametrize("body", ANSWERS)
async def test_both_adapters_read_an_answer_alike(
    both: dict[str, InferenceBackend], canned: CannedUpstream, body: bytes
) -> None:
    results = await complete_both(both, canned, Canned(body))
    aiohttp_result, sdk_result = results["aiohttp"], results["sdk"]
    if isinstance(sdk_result, BackendError):
        assert isinstance(aiohttp_result, BackendError)
        assert (aiohttp_result.error_class, str(aiohttp_result)) == (
            sdk_result.error_class,
            str(sdk_result),
        )
    else:
        assert aiohttp_result == sdk_result


async def test_the_defaults_of_a_sparse_answer(
    both: dict[str, InferenceBackend], canned: CannedUpstream
) -> None:
    body = json.dumps({"choices": [{"message": {"content": "x"}}]}).encode()
    results = await complete_both(both, canned, Canned(body))
    assert results["aiohttp"] == Completion(
        text="x", finish_reason="stop", prompt_tokens=0, completion_tokens=0, provider_model="p"
    )


@pytest.mark.parametrize(
    "body", [b"<html>ok</html>", b"{not json", b"[1, 2]"], ids=["html", "broken", "list"]
)
async def test_a_200_that_is_no_completion_is_an_unknown_failure(
    canned: CannedUpstream, body: bytes
) -> None:
    """The SDK adapter lets these escape as AttributeError or JSONDecodeError; this one says
    what happened, as a BackendError the router can act on."""
    adapter = OpenAIHttpBackend(deployment=deployment(canned.base_url))
    canned.answers.append(Canned(body, content_type="text/html"))
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.complete(make_task())
    finally:
        await adapter.aclose()
    assert (caught.value.error_class, caught.value.retriable) == ("unknown", False)


ERROR_BODIES = [
    pytest.param(Canned(b"<html>Bad gateway</html>", 502, "text/html"), id="html-502"),
    pytest.param(Canned(b"", 503, "text/plain"), id="empty-503"),
    pytest.param(
        Canned(b'{"error": "model \\"x\\" not found, context length"}', 400), id="ollama-string"
    ),
    pytest.param(
        Canned(
            json.dumps(
                {
                    "object": "error",
                    "message": "This model's maximum context length is 2048 tokens.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            ).encode(),
            400,
        ),
        id="vllm-flat",
    ),
    pytest.param(
        Canned(b'{"error": {"message": "bad value", "type": "BadRequestError", "code": 400}}', 400),
        id="numeric-code",
    ),
    pytest.param(Canned(b'{"error": {"message": "too big"}}', 413), id="413"),
    pytest.param(
        Canned(b'{"error": {"message": "slow down"}}', 429, headers={"retry-after-ms": "1500"}),
        id="429-retry-after-ms",
    ),
    pytest.param(Canned(b'{"error": {"message": "teapot"}}', 418), id="418"),
]


@pytest.mark.parametrize("answer", ERROR_BODIES)
async def test_both_adapters_classify_error_answers_alike(
    both: dict[str, InferenceBackend], canned: CannedUpstream, answer: Canned
) -> None:
    results = await complete_both(both, canned, answer)

    def seen(error: Completion | BackendError) -> tuple[Any, ...]:
        assert isinstance(error, BackendError)
        return (
            error.error_class,
            error.retriable,
            error.status_code,
            error.retry_after_s,
            str(error),
        )

    assert seen(results["aiohttp"]) == seen(results["sdk"])


# -- streams --------------------------------------------------------------------------------


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "s", "object": "chat.completion.chunk", "model": "served", "choices": [choice]}


USAGE = {
    "id": "s",
    "model": "served",
    "choices": [],
    "usage": {"prompt_tokens": 2, "completion_tokens": 3},
}


def sse(*events: dict[str, Any] | str, newline: str = "\n") -> bytes:
    lines = []
    for event in events:
        lines.append(event if isinstance(event, str) else f"data: {json.dumps(event)}")
        lines.append("")
    return (newline.join(lines) + newline).encode()


# One event in two `data:` lines, lines ended by CRLF; then the finish chunk.
MULTILINE_CRLF = (
    b'data: {"id": "s", "choices": [{"index": 0,\r\n'
    b'data: "delta": {"content": "ab"}}]}\r\n\r\n' + sse(chunk(finish="stop"), newline="\r\n")
)
# A line ended by CR, then one ended by LF: the LF ends the second line, it pairs with no CR.
MIXED_ENDS = (
    b'data: {"id": "s", "choices": [{"index": 0,\r'
    b'data: "delta": {"content": "ab"}}]}\n\n' + sse(chunk(finish="stop"))
)

STREAMS = [
    pytest.param(
        Canned(sse(chunk("a"), chunk(" b"), chunk(finish="stop"), USAGE, "data: [DONE]")),
        id="plain",
    ),
    pytest.param(
        Canned(
            sse(
                chunk("a"), chunk(" b"), chunk(finish="stop"), USAGE, "data: [DONE]", newline="\r\n"
            ),
            piece=1,
        ),
        id="crlf-byte-by-byte",
    ),
    pytest.param(
        Canned(sse(chunk("a"), chunk(finish="length"), "data: [DONE]", newline="\r"), piece=5),
        id="cr-only",
    ),
    pytest.param(Canned(sse(chunk("a"), chunk(finish="stop"), newline="\r")), id="cr-only-no-done"),
    pytest.param(
        Canned(MULTILINE_CRLF, cuts=(MULTILINE_CRLF.index(b"\r\n") + 1,)),
        id="crlf-cut-between-cr-and-lf",
    ),
    pytest.param(Canned(MIXED_ENDS, cuts=(MIXED_ENDS.index(b"\n"),)), id="cr-then-lf-ended-line"),
    pytest.param(
        Canned(sse(chunk("a"), chunk(finish="stop"), USAGE, newline="\r\n"), piece=3),
        id="crlf-split-no-done",
    ),
    pytest.param(
        Canned(
            sse(
                ": keep-alive",
                "event: message\nid: 1\ndata: " + json.dumps(chunk("a")),
                'data: {"id": "s", "choices": [{"index": 0,\ndata:  "delta": {"content": "b"}}]}',
                chunk(finish="stop"),
                "data: [DONE]",
            ),
            piece=7,
        ),
        id="comments-fields-multiline-data",
    ),
    pytest.param(Canned(sse(chunk("a"), chunk(finish="stop"), USAGE)), id="no-done-marker"),
    pytest.param(
        Canned(sse(chunk("a"), chunk(finish="stop"), "data: [DONE]", chunk("after"))),
        id="data-after-done",
    ),
    pytest.param(Canned(sse(chunk("a"), chunk(" b"))), id="cut-without-finish"),
    pytest.param(
        Canned(
            sse(chunk("a"), chunk(" b")) + b"data: " + json.dumps(chunk(finish="stop")).encode()
        ),
        id="unterminated-last-event",
    ),
    pytest.param(
        Canned(sse(chunk("a"), {"error": {"message": "overloaded", "type": "server_error"}})),
        id="error-event",
    ),
    pytest.param(Canned(sse(chunk("a"), {"error": "boom"})), id="error-event-string"),
    pytest.param(
        Canned(b'{"error": {"message": "nope", "code": "content_filter"}}', 400), id="http-400"
    ),
]


@pytest.mark.parametrize("answer", STREAMS)
async def test_both_adapters_read_a_stream_alike(
    both: dict[str, InferenceBackend], canned: CannedUpstream, answer: Canned
) -> None:
    results = await stream_both(both, canned, Canned(**{**answer.__dict__, "content_type": SSE}))
    assert results["aiohttp"] == results["sdk"]


async def test_a_long_sse_line_is_read_whole(canned: CannedUpstream) -> None:
    """aiohttp's `readline` refuses lines over 128 KiB; the SDK reads any length, so must this."""
    text = "x" * 400_000
    adapter = OpenAIHttpBackend(deployment=deployment(canned.base_url))
    body = sse(chunk(text), chunk(finish="stop"), "data: [DONE]")
    canned.answers.append(Canned(body, content_type=SSE, piece=65_536))
    try:
        deltas = [delta async for delta in adapter.stream(make_task())]
    finally:
        await adapter.aclose()
    assert [d.text for d in deltas] == [text, ""]


async def test_an_event_without_data_is_skipped(canned: CannedUpstream) -> None:
    """`event: ping` or `retry:` alone (keep-alives of some proxies) carry no JSON: skipped. (The
    SDK adapter fails there with a JSONDecodeError.)"""
    adapter = OpenAIHttpBackend(deployment=deployment(canned.base_url))
    body = sse("event: ping", chunk("a"), "retry: 10", chunk(finish="stop"), "data: [DONE]")
    canned.answers.append(Canned(body, content_type=SSE))
    try:
        deltas = [delta async for delta in adapter.stream(make_task())]
    finally:
        await adapter.aclose()
    assert [(d.text, d.finish_reason) for d in deltas] == [("a", None), ("", "stop")]


# -- the session, the URL, the headers ------------------------------------------------------


async def test_one_kept_alive_connection_serves_calls_and_streams(canned: CannedUpstream) -> None:
    adapter = OpenAIHttpBackend(deployment=deployment(canned.base_url))
    try:
        for _ in range(3):
            canned.answers.append(Canned(completion({"role": "assistant", "content": "x"})))
            await adapter.complete(make_task())
            body = sse(chunk("a"), chunk(finish="stop"), USAGE, "data: [DONE]")
            # the end of the body comes after `[DONE]`: read, it returns the connection
            canned.answers.append(Canned(body, content_type=SSE, piece=16, tail_delay_s=0.02))
            assert [d.text async for d in adapter.stream(make_task())] == ["a", ""]
    finally:
        await adapter.aclose()
    assert len(set(canned.peers[-6:])) == 1, canned.peers[-6:]


async def test_a_call_from_another_event_loop_gets_a_session_of_its_own() -> None:
    """An aiohttp session belongs to the loop that made it; the backend must not hand it to
    another one (here a loop in a worker thread, while the first still runs)."""
    server = FakeOpenAIUpstream.start_in_thread()
    adapter = OpenAIHttpBackend(deployment=deployment(server.base_url))

    async def in_other_loop() -> Completion:
        try:
            return await adapter.complete(make_task("over there"))
        finally:
            await adapter.aclose()

    try:
        here = await adapter.complete(make_task("here"))
        there = await asyncio.to_thread(asyncio.run, in_other_loop())
        again = await adapter.complete(make_task("here again"))
    finally:
        await adapter.aclose()
        server.stop()
    assert [here.text, there.text, again.text] == [
        "echo: here",
        "echo: over there",
        "echo: here again",
    ]


async def test_the_url_and_headers_match_the_sdk(
    canned: CannedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICEGATE_TEST_OPENAI_KEY", "sk-test-1")
    answer = completion({"role": "assistant", "content": "x"})
    for fields in ({}, {"api_key_env": "SLUICEGATE_TEST_OPENAI_KEY"}):
        for adapter in (
            OpenAIHttpBackend(deployment=deployment(f"{canned.base_url}/", **fields)),
            OpenAICompatibleBackend(deployment=deployment(f"{canned.base_url}/", "sdk", **fields)),
        ):
            canned.answers.append(Canned(answer))
            try:
                await adapter.complete(make_task())
            finally:
                await adapter.aclose()
    keys = [headers["Authorization"] for headers in canned.headers[-4:]]
    assert keys == ["Bearer unused", "Bearer unused", "Bearer sk-test-1", "Bearer sk-test-1"]
    assert canned.paths[-4:] == ["/v1/chat/completions"] * 4
    assert canned.headers[-4]["Content-Type"] == JSON
    assert canned.headers[-4]["User-Agent"].startswith("sluicegate/")


async def test_without_a_base_url_it_calls_openai() -> None:
    adapter = OpenAIHttpBackend(deployment=deployment(None))
    assert adapter._url == "https://api.openai.com/v1/chat/completions"
    await adapter.aclose()  # never used: nothing to close, and no error


def clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


async def test_the_proxy_environment_applies_like_it_does_to_the_sdk(
    canned: CannedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY names the loopback server as a proxy for a host that does not exist: both
    adapters must send their request through it (read once, when the backend is built)."""
    clear_proxies(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{canned.port}")
    answer = completion({"role": "assistant", "content": "via the proxy"})
    for client, cls in (("aiohttp", OpenAIHttpBackend), ("sdk", OpenAICompatibleBackend)):
        adapter = cls(deployment=deployment("http://upstream.invalid/v1", client))
        canned.answers.append(Canned(answer))
        try:
            assert (await adapter.complete(make_task())).text == "via the proxy", client
        finally:
            await adapter.aclose()
        assert canned.headers[-1]["Host"] == "upstream.invalid"


@pytest.mark.unit
async def test_env_proxy_reads_https_all_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://api.openai.com/v1/chat/completions"
    clear_proxies(monkeypatch)
    assert env_proxy(url) is None
    monkeypatch.setenv("ALL_PROXY", "http://all:3128")
    assert env_proxy(url) == "http://all:3128"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert env_proxy(url) == "http://proxy:3128"
    assert env_proxy("http://vllm:8000/v1/chat/completions") == "http://all:3128"
    monkeypatch.setenv("NO_PROXY", "localhost,.openai.com")
    assert env_proxy(url) is None
