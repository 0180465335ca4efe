"""A real OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

It answers `POST /v1/chat/completions` (JSON, or SSE in OpenAI's chunk format when `stream` is
set) and `GET /v1/models`. The reply is derived from the request: `echo: <last user message>`,
cut to `max_tokens` words, with usage counted in words. When the request forces a tool
(`tool_choice` "required" or a named function) the reply is one call of that tool instead.

Failures are scripted: every chat request takes the next `Behaviour` from a queue, and an empty
queue means success. Every chat request body is recorded in `requests`, and the time it came in
(`time.time()`) at the same index of `received_at`.

A stream can die halfway in three ways: `Behaviour.drop(k)` aborts the TCP connection after k
SSE chunks, `Behaviour.cut(k)` ends the HTTP body cleanly after k chunks with no finish chunk
and no `[DONE]`, `Behaviour.error_midstream(k)` sends an in-band `{"error": ...}` event.

Failures can also be random: with `fail_rate` > 0 a chat request that has no scripted behaviour
fails with `fail_status` (an OpenAI error body) with that probability, drawn from a
`random.Random(seed)`; `random_failures` counts them. Off by default.

    async with FakeOpenAIUpstream() as up:              # on the test's own loop
        up.script(Behaviour.error(429, retry_after="2"))
        ... up.base_url ...

    server = FakeOpenAIUpstream.start_in_thread()      # on a loop of its own
    server.stop()

    python -m tests.fakes.openai_upstream --port 9100 --delay-ms 0     # until killed
    python -m tests.fakes.openai_upstream --fail-rate 0.2 --fail-status 500 --seed 7
    python -m tests.fakes.openai_upstream --delay-ms 20 --chunk-delay-ms 20   # slow streams

A server in another process is scripted over HTTP: `POST /__fake__/script` with a list of
behaviours as JSON objects, `GET /__fake__/requests`, `POST /__fake__/reset`, and
`GET /__fake__/stats` (chat requests and random failures since the last reset).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the fake does with one chat request. The default is an immediate success.

    A scripted behaviour replaces the server's default one (and its `--delay-ms`) for that request.
    """

    status: int = 200  # >= 400 answers an OpenAI error body with this status
    message: str | None = None  # the error's message
    code: str | None = None  # the error's code, e.g. "context_length_exceeded"
    error_type: str | None = None  # the error's type; by default derived from the status
    retry_after: str | None = None  # the Retry-After header of an error answer
    delay_s: float = 0.0  # wait before answering anything
    chunk_delay_s: float = 0.0  # wait between SSE chunks
    drop_after_chunks: int | None = None  # abort the connection after this many SSE chunks
    # End the stream cleanly after this many SSE chunks: no finish chunk, no `[DONE]`, the HTTP
    # body complete (a proxy or server that gave up); `error_after_chunks` sends an in-band error
    # event instead, as OpenAI does when it fails mid-stream.
    end_after_chunks: int | None = None
    error_after_chunks: int | None = None
    reply: str | None = None  # answer this text instead of the echo
    # Stream the reply's text in pieces of this many characters instead of word by word, so a
    # value can be split anywhere, even inside a word (tests of the output guard's hold-back).
    chunk_chars: int | None = None
    omit_usage: bool = False  # no usage chunk even when stream_options.include_usage is set

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        error_type: str | None = None,
        retry_after: str | float | None = None,
    ) -> Behaviour:
        """Answer `status` with an OpenAI error body (and a Retry-After header if given)."""
        return cls(
            status=status,
            message=message,
            code=code,
            error_type=error_type,
            retry_after=None if retry_after is None else str(retry_after),
        )

    @classmethod
    def slow(cls, delay_s: float) -> Behaviour:
        """Wait `delay_s` before sending anything."""
        return cls(delay_s=delay_s)

    @classmethod
    def slow_stream(cls, chunk_delay_s: float) -> Behaviour:
        """Stream normally, waiting `chunk_delay_s` between chunks."""
        return cls(chunk_delay_s=chunk_delay_s)

    @classmethod
    def drop(cls, after_chunks: int = 0) -> Behaviour:
        """Close the connection: before answering, or after that many SSE chunks of a stream."""
        return cls(drop_after_chunks=after_chunks)

    @classmethod
    def cut(cls, after_chunks: int) -> Behaviour:
        """End the stream after that many SSE chunks, cleanly, without a finish chunk."""
        return cls(end_after_chunks=after_chunks)

    @classmethod
    def error_midstream(cls, after_chunks: int, message: str | None = None) -> Behaviour:
        """After that many SSE chunks, an in-band `{"error": ...}` event, then the end."""
        return cls(error_after_chunks=after_chunks, message=message)

    def to_json(self) -> dict[str, Any]:
        """The JSON object `POST /__fake__/script` takes for this behaviour."""
        return asdict(self)


class FakeOpenAIUpstream(LoopbackServer):
    """The server. `base_url` is valid between `start()` and `stop()`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "fake-model",
        delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        fail_rate: float = 0.0,
        fail_status: int = 500,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within [0, 1], not {fail_rate}")
        if fail_status < 400:
            raise ValueError(f"fail_status must be an error status (>= 400), not {fail_status}")
        super().__init__(host=host, port=port)
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self.fail_rate = fail_rate
        self.random_failures = 0  # chat requests failed at random since the last reset
        self._rng = random.Random(seed)
        self._random_failure = Behaviour(
            status=fail_status, message="fake upstream random failure", delay_s=delay_s
        )
        self._default = Behaviour(delay_s=delay_s, chunk_delay_s=chunk_delay_s)
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def reset(self) -> None:
        self._script.clear()
        self.requests.clear()
        self.received_at.clear()
        self.random_failures = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/__fake__/script", self._control_script)
        app.router.add_get("/__fake__/requests", self._control_requests)
        app.router.add_post("/__fake__/reset", self._control_reset)
        app.router.add_get("/__fake__/stats", self._control_stats)

    @classmethod
    def start_in_thread(cls, **kwargs: Any) -> UpstreamThread:
        """Serve from a daemon thread with its own event loop; returns once it listens."""
        return UpstreamThread(cls(**kwargs))

    # -- handlers -------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(Behaviour.error(400, "the body is not valid JSON"))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error_response(Behaviour.error(400, "'messages' is required"))
        self.requests.append(body)
        self.received_at.append(time.time())
        behaviour = self._script.popleft() if self._script else self._unscripted()
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        stream = bool(body.get("stream"))
        if behaviour.drop_after_chunks is not None and (
            behaviour.drop_after_chunks == 0 or not stream
        ):
            return _drop(request)
        if behaviour.status >= 400:
            return _error_response(behaviour)
        reply = _Reply.of(body, f"chatcmpl-fake-{next(self._ids)}", self.model, behaviour.reply)
        if stream:
            return await _stream(request, body, reply, behaviour)
        return web.json_response(reply.completion())

    def _unscripted(self) -> Behaviour:
        """The default behaviour, or a random failure (with probability `fail_rate`)."""
        if self.fail_rate and self._rng.random() < self.fail_rate:
            self.random_failures += 1
            return self._random_failure
        return self._default

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "sluicegate"}
        return web.json_response({"object": "list", "data": [model]})

    async def _control_script(self, request: web.Request) -> web.Response:
        items = await request.json()
        self.script(*(Behaviour(**item) for item in items))
        return web.json_response({"queued": len(self._script)})

    async def _control_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({})

    async def _control_stats(self, request: web.Request) -> web.Response:
        stats = {"requests": len(self.requests), "random_failures": self.random_failures}
        return web.json_response(stats)


class UpstreamThread:
    """A FakeOpenAIUpstream running on its own loop in a daemon thread."""

    def __init__(self, upstream: FakeOpenAIUpstream) -> None:
        self.upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fake-openai-upstream", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    @property
    def base_url(self) -> str:
        return self.upstream.base_url

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.upstream.requests

    @property
    def received_at(self) -> list[float]:
        return self.upstream.received_at

    def script(self, *behaviours: Behaviour) -> None:
        self.upstream.script(*behaviours)

    def reset(self) -> None:
        self.upstream.reset()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.upstream.start())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self.upstream.stop())
            self._loop.close()


# -- the reply ----------------------------------------------------------------------------


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The function name the request forces a call of, if any."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if isinstance(choice, dict):
        return str(choice.get("function", {}).get("name"))
    if choice == "required" and tools:
        return str(tools[0].get("function", {}).get("name"))
    return None


@dataclass(frozen=True, slots=True)
class _Reply:
    id: str
    model: str
    words: list[str]
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    prompt_tokens: int

    @classmethod
    def of(cls, body: dict[str, Any], id_: str, default_model: str, text: str | None) -> _Reply:
        messages = body["messages"]
        prompt_tokens = sum(len(_text(m).split()) for m in messages)
        last_user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
        model = str(body.get("model") or default_model)
        tool = _forced_tool(body)
        if tool is not None:
            arguments = json.dumps({"text": last_user})
            call = {
                "id": f"call_{id_}",
                "type": "function",
                "function": {"name": tool, "arguments": arguments},
            }
            return cls(id_, model, [], [call], "tool_calls", prompt_tokens)
        words = (text if text is not None else f"echo: {last_user}").split()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish_reason = "stop"
        if isinstance(limit, int) and len(words) > limit:
            words, finish_reason = words[:limit], "length"
        return cls(id_, model, words, None, finish_reason, prompt_tokens)

    @property
    def completion_tokens(self) -> int:
        if self.tool_calls:
            return sum(len(c["function"]["arguments"].split()) for c in self.tool_calls)
        return len(self.words)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.tool_calls else " ".join(self.words),
            "refusal": None,
        }
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage(),
        }

    def chunks(self, include_usage: bool, chunk_chars: int | None = None) -> list[dict[str, Any]]:
        """The stream's chunks, as OpenAI sends them (without the final `[DONE]`): a word each,
        or `chunk_chars` characters each."""
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if self.tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(self.tool_calls)]
            chunks.append(chunk({"tool_calls": calls}))
        pieces = [word if i == 0 else f" {word}" for i, word in enumerate(self.words)]
        if chunk_chars:
            text = "".join(pieces)
            pieces = [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]
        for piece in pieces:
            chunks.append(chunk({"content": piece}))
        chunks.append(chunk({}, self.finish_reason))
        if include_usage:
            last = chunk({})
            last["choices"], last["usage"] = [], self.usage()
            chunks.append(last)
        return chunks


# -- responses ----------------------------------------------------------------------------


def _error_response(behaviour: Behaviour) -> web.Response:
    status = behaviour.status
    default_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    error = {
        "message": behaviour.message or f"fake upstream error {status}",
        "type": behaviour.error_type or default_type,
        "param": None,
        "code": behaviour.code,
    }
    headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else None
    return web.json_response({"error": error}, status=status, headers=headers)


def _drop(request: web.Request) -> web.Response:
    """Abort the TCP connection; the client sees it closed with no (or a cut) answer."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)


async def _stream(
    request: web.Request, body: dict[str, Any], reply: _Reply, behaviour: Behaviour
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) and not behaviour.omit_usage
    for i, chunk in enumerate(reply.chunks(include_usage, behaviour.chunk_chars)):
        if behaviour.drop_after_chunks is not None and i >= behaviour.drop_after_chunks:
            _drop(request)
            return response
        if behaviour.error_after_chunks is not None and i >= behaviour.error_after_chunks:
            error = {"message": behaviour.message or "fake upstream failed mid-stream"}
            error |= {"type": "server_error", "param": None, "code": None}
            await response.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
            await response.write_eof()
            return response
        if behaviour.end_after_chunks is not None and i >= behaviour.end_after_chunks:
            await response.write_eof()
            return response
        if i and behaviour.chunk_delay_s:
            await asyncio.sleep(behaviour.chunk_delay_s)
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


# -- command line -------------------------------------------------------------------------


async def _serve(
    host: str,
    port: int,
    delay_s: float,
    model: str,
    fail_rate: float = 0.0,
    fail_status: int = 500,
    seed: int | None = None,
    chunk_delay_s: float = 0.0,
) -> None:
    async with FakeOpenAIUpstream(
        host=host,
        port=port,
        delay_s=delay_s,
        chunk_delay_s=chunk_delay_s,
        model=model,
        fail_rate=fail_rate,
        fail_status=fail_status,
        seed=seed,
    ) as up:
        failing = f", failing {fail_rate:.0%} with {fail_status}" if fail_rate else ""
        print(f"fake OpenAI upstream listening on {up.base_url}{failing}", flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency of every answer")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="wait between the SSE chunks of a stream"
    )
    parser.add_argument("--model", default="fake-model")
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="share of unscripted chat requests that fail at random (0..1)",
    )
    parser.add_argument(
        "--fail-status", type=int, default=500, help="HTTP status of a random failure"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random failures")
    args = parser.parse_args(argv)
    if not 0.0 <= args.fail_rate <= 1.0:
        parser.error("--fail-rate must be within [0, 1]")
    if args.fail_status < 400:
        parser.error("--fail-status must be >= 400")
    asyncio.run(
        _serve(
            args.host,
            args.port,
            args.delay_ms / 1000,
            args.model,
            args.fail_rate,
            args.fail_status,
            args.seed,
            args.chunk_delay_ms / 1000,
        )
    )


if __name__ == "__main__":
    main()
