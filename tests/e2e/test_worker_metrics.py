"""The workers' Prometheus endpoints report what their stages published."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from sluicegate.settings import Settings
from tests.conftest import CALLER_TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def scrape(port: int | None) -> str:
    assert port is not None
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def sample(text: str, prefix: str) -> float:
    """The sum of every sample line starting with `prefix` (a name plus some labels)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_routing_inference_and_rejections_show_up_on_the_workers_metrics(
    settings: Settings, bridge_url: str
) -> None:
    client = openai.OpenAI(base_url=f"{bridge_url}/v1", api_key=CALLER_TOKEN, max_retries=0)
    before = sample(scrape(settings.worker.metrics_port), "sluicegate_routing_decisions_total{")
    client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "metrics please"}]
    )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-fake",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Sluicegate-Deployment": "not-in-the-alias"},
        )
    deadline = time.monotonic() + 10
    while True:
        worker = scrape(settings.worker.metrics_port)
        inference = scrape(settings.worker.inference_metrics_port)
        routed = sample(worker, "sluicegate_routing_decisions_total{")
        latency = sample(inference, 'sluicegate_inference_latency_seconds_count{deployment="fake"}')
        rejected = sample(worker, 'sluicegate_rejections_total{code="invalid_override"')
        if routed > before and latency >= 1 and rejected >= 1:
            break
        assert time.monotonic() < deadline, (routed, before, latency, rejected)
        time.sleep(0.2)
