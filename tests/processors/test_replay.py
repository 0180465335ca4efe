from __future__ import annotations

import json
from datetime import timedelta

import pytest

from sluicegate.processors.replay import (
    ReplayError,
    ReplayOverrides,
    ReplaySlice,
    replay_request,
)
from tests.builders import request

pytestmark = pytest.mark.unit


def recorded(**overrides: object):
    incoming = request("chat", user="u1", api_key_id="k1", **overrides)
    extra = json.dumps({"sluicegate": {"prompt": "support@prod", "variables": {"x": 1}}})
    params = incoming.params.model_copy(update={"extra_json": extra})
    at_ms = int(incoming.occurred_at.timestamp() * 1000)
    return incoming.model_copy(
        update={"params": params, "reply_to": "bridge-1", "deadline_ms": at_ms + 30_000}
    )


def window(original, **fields: object) -> ReplaySlice:
    at_ms = int(original.occurred_at.timestamp() * 1000)
    return ReplaySlice(since_ms=at_ms, until_ms=at_ms + 1, **fields)


def test_the_slice_selects_live_requests_in_its_window_that_match_every_filter() -> None:
    original = recorded()
    assert window(original).selects(original)
    assert window(original, tenant_id="acme", model="chat", user="u1", prompt="support").selects(
        original
    )
    assert not window(original, tenant_id="globex").selects(original)
    assert not window(original, prompt="other").selects(original)
    assert window(original, contains="SAY").selects(original)  # case-insensitive
    assert not window(original, contains="bye").selects(original)
    assert not window(original).selects(original.model_copy(update={"run_id": "replay-0"}))
    later = original.model_copy(update={"occurred_at": original.occurred_at + timedelta(seconds=1)})
    assert not window(original).selects(later)


def test_a_replayed_request_keeps_the_conversation_and_takes_the_runs_overrides() -> None:
    original = recorded()
    overrides = ReplayOverrides(
        model="chat-v2", prompt="support@4", strategy="cost", params={"temperature": 0.5}
    )
    replayed = replay_request(original, run_id="replay-1", overrides=overrides)
    assert replayed.run_id == "replay-1" and replayed.model == "chat-v2"
    assert replayed.messages == original.messages and replayed.user == original.user
    assert replayed.api_key_id == original.api_key_id and replayed.tenant_id == original.tenant_id
    assert replayed.reply_to is None and replayed.idempotency_key is None
    assert replayed.metadata["original_request_id"] == original.request_id
    options = json.loads(replayed.params.extra_json)["sluicegate"]
    assert options == {"prompt": "support@4", "variables": {"x": 1}, "strategy": "cost"}
    assert replayed.params.temperature == 0.5
    deadline_budget = replayed.deadline_ms - int(replayed.occurred_at.timestamp() * 1000)
    assert deadline_budget == 30_000  # as long as the original's, from now
    again = replay_request(original, run_id="replay-1", overrides=overrides)
    assert again.request_id == replayed.request_id != original.request_id  # derived, stable
    other = replay_request(original, run_id="replay-2", overrides=overrides)
    assert other.request_id != replayed.request_id


def test_overrides_that_cannot_apply_are_refused() -> None:
    with pytest.raises(ReplayError, match="strategy"):
        ReplayOverrides(strategy="fastest")
    with pytest.raises(ReplayError, match="cannot override"):
        ReplayOverrides(params={"messages": []})
