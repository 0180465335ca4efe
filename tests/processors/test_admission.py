from __future__ import annotations

import pytest

from sluicegate.processors.admission import Admission
from sluicegate.schemas.models import InferenceTask, RequestAdmitted, RequestRejected, Span
from sluicegate.settings import Deployment, ModelAlias, Settings
from tests.builders import request

pytestmark = pytest.mark.unit


def settings() -> Settings:
    return Settings(
        deployments=[
            Deployment(name="a", backend="openai", provider_model="gpt-x", pool="gpu"),
            Deployment(name="b", backend="llamacpp", provider_model="local"),
        ],
        models=[ModelAlias(name="chat", deployments=["a", "b"])],
    )


def test_admits_and_routes_to_the_first_deployment_of_the_alias() -> None:
    incoming = request("chat", stream=True, api_key_id="key-abc")
    emits = Admission(settings=settings()).run(incoming)
    assert [e.topic for e in emits] == ["inference.gpu", "admitted", "traces"]
    task = emits[0].event
    assert isinstance(task, InferenceTask)
    assert (task.deployment, task.provider_model, task.pool) == ("a", "gpt-x", "gpu")
    assert task.request_id == incoming.request_id == emits[0].key
    assert task.parent_span_id == incoming.span_id and task.trace_id == incoming.trace_id
    assert task.messages == incoming.messages and task.stream is True
    assert task.api_key_id == incoming.api_key_id == "key-abc"
    assert isinstance(emits[1].event, RequestAdmitted) and emits[1].key == "acme"
    span = emits[2].event
    assert isinstance(span, Span) and span.attributes["deployment"] == "a"
    assert span.start_ms <= span.end_ms and span.span_id == task.span_id


def test_unknown_model_is_rejected_with_404_to_the_caller() -> None:
    emits = Admission(settings=settings()).run(request("nope"))
    rejected = next(e for e in emits if e.topic == "responses").event
    assert isinstance(rejected, RequestRejected)
    assert rejected.http_status == 404 and rejected.code == "model_not_found"
    assert not any(e.topic.startswith("inference.") for e in emits)


def test_settings_refuse_an_alias_naming_an_unknown_deployment() -> None:
    with pytest.raises(ValueError, match="unknown deployments"):
        Settings(
            deployments=[Deployment(name="a", backend="openai", provider_model="m")],
            models=[ModelAlias(name="chat", deployments=["zzz"])],
        )
