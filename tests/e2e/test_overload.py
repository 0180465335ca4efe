"""Past `max_in_flight` the bridge sheds at once with 503 instead of queueing without bound."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sluicegate.settings import Settings
from tests.conftest import CALLER_TOKEN, _stop, free_port, start_bridge

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_requests_past_the_limit_are_shed_with_retry_after(
    settings: Settings, worker, tmp_path
) -> None:
    small = settings.model_copy(
        update={
            "bridge": settings.bridge.model_copy(update={"port": free_port(), "max_in_flight": 2})
        }
    )
    process = start_bridge(small, tmp_path / "bridge.log")
    url = f"http://127.0.0.1:{small.bridge.port}/v1/chat/completions"
    stuck = {"model": "blackhole", "messages": [{"role": "user", "content": "wait"}]}
    try:
        async with httpx.AsyncClient(
            timeout=30, headers={"Authorization": f"Bearer {CALLER_TOKEN}"}
        ) as client:
            slow = [
                asyncio.create_task(
                    client.post(url, json=stuck, headers={"X-Sluicegate-Timeout": "3"})
                )
                for _ in range(2)
            ]
            await asyncio.sleep(0.5)
            shed = await client.post(
                url, json={"model": "gpt-fake", "messages": [{"role": "user", "content": "x"}]}
            )
            assert shed.status_code == 503
            assert shed.headers["Retry-After"] == "1"
            assert shed.json()["error"]["code"] == "overloaded"
            assert [r.status_code for r in await asyncio.gather(*slow)] == [504, 504]
            after = await client.post(
                url, json={"model": "gpt-fake", "messages": [{"role": "user", "content": "ok"}]}
            )
            assert after.status_code == 200
            metrics = (await client.get(f"http://127.0.0.1:{small.bridge.port}/metrics")).text
            assert "sluicegate_bridge_shed_total 1.0" in metrics
    finally:
        _stop(process)
