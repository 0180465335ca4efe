"""The `sluicegate` command against the real broker and worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sluicegate.settings import Settings
from tests.conftest import settings_env

pytestmark = pytest.mark.integration


def run_cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "sluicegate.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_topics_lists_the_catalogue(settings: Settings, topics: list[str]) -> None:
    result = run_cli(settings, "topics")
    assert result.returncode == 0, result.stderr
    assert f"{settings.topic('requests')} " in result.stdout
    assert "exists" in result.stdout and "RequestReceived" in result.stdout


def test_send_publishes_a_request_that_tail_shows_answered(
    settings: Settings, worker, tmp_path: Path
) -> None:
    body = tmp_path / "request.json"
    body.write_text(
        json.dumps({"model": "gpt-fake", "messages": [{"role": "user", "content": "from the cli"}]})
    )
    sent = run_cli(settings, "send", str(body), "--tenant", "cli-tenant")
    assert sent.returncode == 0, sent.stderr
    request_id = json.loads(sent.stdout)["request_id"]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tail = run_cli(settings, "tail", "responses", "--from-beginning", "--idle-exit", "2")
        assert tail.returncode == 0, tail.stderr
        answers = [json.loads(line) for line in tail.stdout.splitlines()]
        mine = [a for a in answers if a.get("request_id") == request_id]
        if mine:
            assert mine[0]["_event"] == "ResponseReady"
            assert "from the cli" in mine[0]["message"]["content"]
            assert mine[0]["tenant_id"] == "cli-tenant"
            return
        time.sleep(1)
    pytest.fail("the sent request was not answered on the responses topic")


def test_send_refuses_an_invalid_body(
    settings: Settings, topics: list[str], tmp_path: Path
) -> None:
    body = tmp_path / "bad.json"
    body.write_text(json.dumps({"model": "gpt-fake"}))
    result = run_cli(settings, "send", str(body))
    assert result.returncode == 2 and "messages" in result.stderr


@pytest.mark.slow
def test_up_serves_requests_and_down_stops_it(
    settings: Settings, topics: list[str], tmp_path: Path
) -> None:
    import httpx

    from tests.conftest import free_port

    port = free_port()
    own = settings.model_copy(
        update={
            "bridge": settings.bridge.model_copy(update={"port": port}),
            "worker": settings.worker.model_copy(update={"app_id": f"{settings.worker.app_id}-up"}),
            # Topics of its own: an empty key registry, so `up` makes the first key.
            "kafka": settings.kafka.model_copy(
                update={"topic_prefix": f"u{uuid.uuid4().hex[:8]}."}
            ),
        }
    )
    env = {**os.environ, **settings_env(own), "SLUICEGATE_HOME": str(tmp_path)}
    up = subprocess.run(
        [sys.executable, "-m", "sluicegate.cli", "up", "--no-broker", "--detach"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}/v1" in up.stdout and "curl -s" in up.stdout
        token = re.search(r"your admin key \(also in (.+)\): (sk-sg-\S+)", up.stdout)
        assert token, up.stdout
        assert Path(token.group(1)).read_text().strip() == token.group(2)
        assert f"Authorization: Bearer {token.group(2)}" in up.stdout  # in the printed curl
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "up and running"}]}
        refused = httpx.post(url, timeout=30, json=body)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
        answer = httpx.post(
            url, timeout=60, json=body, headers={"Authorization": f"Bearer {token.group(2)}"}
        )
        assert answer.status_code == 200, answer.text
        assert "up and running" in answer.json()["choices"][0]["message"]["content"]
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "sluicegate.cli", "down", "--keep-broker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.HTTPError:
            return
        time.sleep(0.5)
    pytest.fail("the bridge still answers after `down`")
