"""The soak's load: an open loop of chat requests spread over the bridges, every request with a
unique marker and an Idempotency-Key, retried with the same key when it got no answer.

Request i is sent at `start + i / rate` whatever happened to the earlier ones (open loop), to
bridge i mod n; a retry goes to the next bridge (as a load balancer would send it). A share of
the requests stream (SSE). The fake upstream echoes the last user message, so the client knows
the exact answer to expect and checks every 2xx against it: a truncated, repeated or mixed-up
answer is caught here even when the HTTP exchange looked fine.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from bench.soak.verify import ClientAttempt

RETRY_STATUSES = frozenset({0, 500, 502, 503})  # no answer, or not journaled / not processed
STREAM_ERROR = 520  # a stream that ended with an explicit error event (the HTTP status was 200)
_REQUEST_IN_MESSAGE = re.compile(r"request ([0-9a-f-]{36})")


@dataclass(frozen=True)
class LoadPlan:
    rate: float
    seconds: float
    seed: int
    model: str
    bridges: Sequence[str]  # base URLs, http://127.0.0.1:port
    stream_share: float = 0.3
    # >1 spreads requests over tenants (X-Sluicegate-Tenant), hence over sg.requests partitions;
    # an anonymous caller may only act on the default tenant, so the soak uses 1.
    tenants: int = 1
    max_attempts: int = 4
    attempt_timeout_s: float = 150.0

    @property
    def count(self) -> int:
        return int(self.rate * self.seconds)


def prompt_of(key: str) -> str:
    return f"{key} alpha beta gamma delta"


def expected_answer(key: str) -> str:
    """What the fake upstream answers to `prompt_of(key)`."""
    return f"echo: {prompt_of(key)}"


async def run_load(
    plan: LoadPlan,
    chaos_now: Callable[[], bool],
    progress: Callable[[int, int], None] | None = None,
) -> list[ClientAttempt]:
    """Send `plan.count` requests; returns every attempt once all are finished."""
    rng = random.Random(plan.seed)
    streams = [rng.random() < plan.stream_share for _ in range(plan.count)]
    attempts: list[ClientAttempt] = []
    timeout = aiohttp.ClientTimeout(total=plan.attempt_timeout_s)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.monotonic()
        running: set[asyncio.Task[None]] = set()
        for i in range(plan.count):
            delay = start + i / plan.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key = f"soak-{plan.seed}-{i:06d}"
            task = asyncio.create_task(_one(session, plan, key, i, streams[i], attempts, chaos_now))
            running.add(task)
            task.add_done_callback(running.discard)
            if progress is not None and i % max(1, int(plan.rate * 10)) == 0:
                progress(i, len(running))
        if running:
            await asyncio.wait(running)
    return attempts


async def _one(
    session: aiohttp.ClientSession,
    plan: LoadPlan,
    key: str,
    index: int,
    stream: bool,
    out: list[ClientAttempt],
    chaos_now: Callable[[], bool],
) -> None:
    body = {
        "model": plan.model,
        "messages": [{"role": "user", "content": prompt_of(key)}],
        "stream": stream,
    }
    headers = {"Idempotency-Key": key}
    if plan.tenants > 1:
        headers["X-Sluicegate-Tenant"] = f"tenant-{index % plan.tenants}"
    for attempt in range(1, plan.max_attempts + 1):
        bridge = plan.bridges[(index + attempt - 1) % len(plan.bridges)]
        sent_at = time.time()
        t0 = time.monotonic()
        chaos = chaos_now()
        try:
            status, request_id, ok, error = await _send(
                session, f"{bridge}/v1/chat/completions", body, headers, key, stream
            )
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            status, request_id, ok, error = 0, None, None, f"{type(exc).__name__}: {exc}"
        latency = time.monotonic() - t0
        out.append(
            ClientAttempt(
                key=key,
                attempt=attempt,
                bridge=bridge,
                status=status,
                request_id=request_id,
                stream=stream,
                content_ok=ok,
                error=error,
                latency_s=latency,
                sent_at=sent_at,
                during_chaos=chaos or chaos_now(),
            )
        )
        if status not in RETRY_STATUSES:
            return
        await asyncio.sleep(min(4.0, 0.5 * 2 ** (attempt - 1)))


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, object],
    headers: dict[str, str],
    key: str,
    stream: bool,
) -> tuple[int, str | None, bool | None, str | None]:
    """(status, request_id, content_ok, error) of one attempt."""
    async with session.post(url, json=body, headers=headers) as response:
        status = response.status
        if status != 200 or not stream or "text/event-stream" not in response.content_type:
            raw = await response.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                return status, None, None, raw[:200].decode(errors="replace")
            if status == 200:
                text = payload["choices"][0]["message"]["content"]
                ok = (
                    text == expected_answer(key)
                    and payload["choices"][0]["finish_reason"] == "stop"
                )
                return status, _request_id(payload.get("id")), ok, None
            message = str(payload.get("error", {}).get("message", ""))
            found = _REQUEST_IN_MESSAGE.search(message)
            return status, found.group(1) if found else None, None, message[:300]
        parts: list[str] = []
        finish: str | None = None
        request_id: str | None = None
        done = False
        buffer = b""
        async for data in response.content.iter_any():
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    continue
                text = event[6:]
                if text == b"[DONE]":
                    done = True
                    continue
                chunk = json.loads(text)
                if "error" in chunk:
                    message = str(chunk["error"].get("message", ""))
                    return STREAM_ERROR, request_id, None, f"stream error event: {message[:300]}"
                request_id = request_id or _request_id(chunk.get("id"))
                for choice in chunk.get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
                    finish = choice.get("finish_reason") or finish
        if not done:
            # The body ended without [DONE]: the connection was cut (a killed bridge).
            return 0, request_id, None, f"stream cut after {len(parts)} chunks"
        ok = "".join(parts) == expected_answer(key) and finish == "stop"
        return 200, request_id, ok, None if ok else f"streamed {''.join(parts)!r} ({finish})"


def _request_id(completion_id: object) -> str | None:
    if isinstance(completion_id, str) and completion_id.startswith("chatcmpl-"):
        return completion_id.removeprefix("chatcmpl-")
    return None
