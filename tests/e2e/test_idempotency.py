"""Idempotency-Key across bridges and bridge restarts, with the official `openai` client: two
bridge processes on one pipeline, the fake upstream counting the inference calls each key gets.
The key's claims and answers live on sg.idempotency (serving/idempotency.py), so whichever
bridge a retry lands on, and whenever, it gets the first answer and runs nothing again."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.processors.idempotency import CLAIM_GRACE_MS
from sluicegate.schemas.models import RequestReceived
from sluicegate.serving.topic_read import read_to_end
from sluicegate.settings import Settings
from tests.conftest import CALLER_TOKEN, Workers, _stop, free_port, start_bridge
from tests.fakes.openai_upstream import Behaviour

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@dataclass
class Bridges:
    """Two bridge processes, A and B, on the session's pipeline; either can be restarted."""

    settings: Settings
    logs: Path
    ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    processes: list[subprocess.Popen[bytes] | None] = field(default_factory=lambda: [None, None])
    starts: int = 0

    def start(self, which: int) -> None:
        self.starts += 1
        own = self.settings.model_copy(
            update={"bridge": self.settings.bridge.model_copy(update={"port": self.ports[which]})}
        )
        self.processes[which] = start_bridge(own, self.logs / f"bridge-{which}-{self.starts}.log")

    def stop(self, which: int, *, kill: bool = False) -> None:
        process = self.processes[which]
        if process is None:
            return
        if kill:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        else:
            _stop(process)
        self.processes[which] = None

    def url(self, which: int) -> str:
        return f"http://127.0.0.1:{self.ports[which]}/v1"

    def client(self, which: int) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url(which), api_key=CALLER_TOKEN, max_retries=0, timeout=60
        )

    def async_client(self, which: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.url(which), api_key=CALLER_TOKEN, max_retries=0, timeout=60
        )


@pytest.fixture(scope="module")
def bridges(
    settings: Settings, workers: Workers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridges]:
    pair = Bridges(settings, tmp_path_factory.mktemp("idempotency-logs"))
    try:
        pair.start(0)
        pair.start(1)
        yield pair
    finally:
        pair.stop(0)
        pair.stop(1)


def marker() -> str:
    return f"idem-{uuid.uuid4().hex[:12]}"


def inferences(upstream, text: str) -> int:
    """How many chat calls reached the fake upstream with `text` in them."""
    return sum(1 for body in upstream.requests if text in json.dumps(body))


def journaled(settings: Settings, key: str) -> list[str]:
    """The request ids journaled on sg.requests with this Idempotency-Key."""
    serde = build_serde(settings)
    found = []
    for batch in read_to_end(settings, settings.topic("requests"), timeout_s=10):
        for message in batch:
            event = serde.decode(message.value())
            if isinstance(event, RequestReceived) and event.idempotency_key == key:
                found.append(event.request_id)
    return found


def body(text: str) -> dict:
    return {"model": "gpt-fake", "messages": [{"role": "user", "content": text}]}


def streamed(client: openai.OpenAI, text: str, key: str) -> tuple[str, str, str | None]:
    """(completion id, content, finish_reason) of a streamed answer."""
    chunks = list(
        client.chat.completions.create(
            **body(text), stream=True, extra_headers={"Idempotency-Key": key}
        )
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1, ids
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(
        (c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason),
        None,
    )
    return ids.pop(), content, finish


def test_a_key_answered_on_one_bridge_is_replayed_by_the_other(bridges: Bridges, upstream) -> None:
    text = marker()
    key = {"Idempotency-Key": text}
    first = bridges.client(0).chat.completions.create(**body(text), extra_headers=key)
    second = bridges.client(1).chat.completions.create(**body(text), extra_headers=key)
    assert second.id == first.id
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.total_tokens == first.usage.total_tokens
    assert inferences(upstream, text) == 1


def test_a_streamed_answer_is_replayed_as_a_stream_by_the_other_bridge(
    bridges: Bridges, upstream
) -> None:
    text = f"{marker()} stream these words"
    first = streamed(bridges.client(0), text, text)
    second = streamed(bridges.client(1), text, text)
    assert second == first and first[2] == "stop"
    # The same key asked for JSON gets the same answer too (stream is not part of the key).
    third = bridges.client(0).chat.completions.create(
        **body(text), extra_headers={"Idempotency-Key": text}
    )
    assert (third.id, third.choices[0].message.content) == first[:2]
    assert inferences(upstream, text) == 1


def test_the_same_key_at_once_on_both_bridges_runs_once(
    bridges: Bridges, upstream, settings: Settings
) -> None:
    text = marker()
    upstream.script(Behaviour.slow(1.5))  # the one inference is still running when both wait

    async def both() -> list:
        clients = [bridges.async_client(0), bridges.async_client(1)]
        try:
            return await asyncio.gather(
                *(
                    c.chat.completions.create(**body(text), extra_headers={"Idempotency-Key": text})
                    for c in clients
                )
            )
        finally:
            for c in clients:
                await c.close()

    a, b = asyncio.run(both())
    assert a.id == b.id and a.choices[0].message.content == b.choices[0].message.content
    assert inferences(upstream, text) == 1
    assert [f"chatcmpl-{rid}" for rid in journaled(settings, text)] == [a.id]  # the loser: never


def test_a_restarted_bridge_still_replays(bridges: Bridges, upstream) -> None:
    text = marker()
    key = {"Idempotency-Key": text}
    first = bridges.client(0).chat.completions.create(**body(text), extra_headers=key)
    bridges.stop(0)
    bridges.start(0)
    again = bridges.client(0).chat.completions.create(**body(text), extra_headers=key)
    assert (again.id, again.choices[0].message.content) == (
        first.id,
        first.choices[0].message.content,
    )
    assert inferences(upstream, text) == 1


def test_a_retry_on_the_other_bridge_after_a_kill_gets_the_first_answer(
    bridges: Bridges, upstream, settings: Settings
) -> None:
    """Bridge A is kill -9'd while its request runs: nobody settles the key. The retry on B
    waits for A's claim and takes A's request's own answer from sg.responses."""
    text = marker()
    key = {"Idempotency-Key": text}
    upstream.script(Behaviour.slow(2.0))
    outcome: list[BaseException | int] = []

    def first_attempt() -> None:
        try:
            answer = httpx.post(
                f"{bridges.url(0)}/chat/completions",
                json=body(text),
                headers={"Authorization": f"Bearer {CALLER_TOKEN}", **key},
                timeout=60,
            )
            outcome.append(answer.status_code)
        except httpx.HTTPError as error:
            outcome.append(error)

    caller = threading.Thread(target=first_attempt)
    caller.start()
    deadline = time.monotonic() + 10
    while inferences(upstream, text) == 0:  # journaled, and now at the (slow) upstream
        assert time.monotonic() < deadline
        time.sleep(0.05)
    bridges.stop(0, kill=True)
    caller.join(10)
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome  # no answer reached it
    try:
        retried = bridges.client(1).chat.completions.create(**body(text), extra_headers=key)
        assert retried.choices[0].message.content.endswith(text)
        assert inferences(upstream, text) == 1
        # It is the killed bridge's request that answered: journaled once, under its id.
        assert [f"chatcmpl-{rid}" for rid in journaled(settings, text)] == [retried.id]
        # The key is settled now: a third try, on a new bridge A, gets the same answer at once.
        bridges.start(0)
        third = bridges.client(0).chat.completions.create(**body(text), extra_headers=key)
        assert third.id == retried.id
        assert inferences(upstream, text) == 1
    finally:
        if bridges.processes[0] is None:
            bridges.start(0)


def test_a_key_reused_with_another_body_is_refused_on_any_bridge(
    bridges: Bridges, upstream
) -> None:
    text = marker()
    key = {"Idempotency-Key": text}
    bridges.client(0).chat.completions.create(**body(text), extra_headers=key)
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        bridges.client(1).chat.completions.create(**body(f"{text} changed"), extra_headers=key)
    assert raised.value.code == "idempotency_key_reused"
    assert inferences(upstream, text) == 1


def test_a_failure_a_retry_may_cure_frees_the_key(bridges: Bridges, upstream2) -> None:
    """A stream that broke (502) is not the key's answer: the retry, on the other bridge,
    runs again and gets the whole answer."""
    text = f"{marker()} please stream quite a few words back to me"
    key = {"Idempotency-Key": text}
    upstream2.script(Behaviour.drop(after_chunks=3))
    with pytest.raises(openai.APIError) as raised:
        for _ in bridges.client(0).chat.completions.create(
            model="gpt-stream", messages=body(text)["messages"], stream=True, extra_headers=key
        ):
            pass
    assert "broke" in raised.value.message
    retried = bridges.client(1).chat.completions.create(
        model="gpt-stream", messages=body(text)["messages"], extra_headers=key
    )
    assert retried.choices[0].message.content.endswith(text)
    assert inferences(upstream2, text) == 2


def test_a_timed_out_request_holds_its_key_until_its_deadline(
    bridges: Bridges, settings: Settings
) -> None:
    """A 504 leaves the request journaled (its answer may still come), so its claim stays: a
    repeat waits for it (here past its own timeout: 409). Once the claim's deadline (the
    request's plus the grace) has passed, the next repeat claims the key and runs."""
    text = marker()
    key = {"Idempotency-Key": text, "X-Sluicegate-Timeout": "1"}
    hanging = {"model": "blackhole", "messages": body(text)["messages"]}
    with pytest.raises(openai.APIStatusError) as first:
        bridges.client(0).chat.completions.create(**hanging, extra_headers=key)
    assert first.value.status_code == 504
    with pytest.raises(openai.ConflictError) as waited:
        bridges.client(1).chat.completions.create(**hanging, extra_headers=key)
    assert waited.value.code == "idempotency_key_in_use"
    assert waited.value.response.headers["retry-after"] == "1"
    assert len(journaled(settings, text)) == 1
    time.sleep(CLAIM_GRACE_MS / 1000 + 0.5)
    with pytest.raises(openai.APIStatusError) as again:
        bridges.client(1).chat.completions.create(**hanging, extra_headers=key)
    assert again.value.status_code == 504
    assert len(journaled(settings, text)) == 2
