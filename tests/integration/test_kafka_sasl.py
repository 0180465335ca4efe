"""sluicegate against a broker that authenticates (SASL_PLAINTEXT; PLAIN and SCRAM-SHA-256).

The settings' `client_config()` and `faust_credentials()` are unit-tested as dictionaries; here
they meet a real broker (tests/integration/conftest.py): the admin client creates the topics, the
embedded schema registry and the bridge's producer write over SASL, a consumer reads the Avro
event back; wrong credentials fail at once with a typed error; and the Faust worker, built by
streams/app.py's factory, consumes a request and publishes its inference task.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.errors import BrokerAuthenticationError, BrokerError
from sluicegate.schemas.models import InferenceTask, RequestReceived
from sluicegate.serving.kafka_io import AsyncProducer
from sluicegate.settings import (
    CacheSettings,
    Deployment,
    DriftSettings,
    ModelAlias,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics
from tests.builders import request
from tests.conftest import REPO_ROOT, _stop
from tests.integration.conftest import SaslBroker
from tests.topics_io import drop_topics, produce, wait_for_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MECHANISMS = ["PLAIN", "SCRAM-SHA-256"]


def _prefix() -> str:
    return f"sasl{uuid.uuid4().hex[:8]}."


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_clients_built_from_the_settings_round_trip_an_avro_event(
    sasl_broker: SaslBroker, mechanism: str
) -> None:
    settings = sasl_broker.settings(mechanism, topic_prefix=_prefix())
    created = ensure_topics(settings, timeout_s=30)  # the admin client
    assert settings.topic("requests") in created
    try:
        serde = build_serde(settings)  # the embedded registry: its own producer and consumer
        event = request("gpt-fake")
        producer = AsyncProducer(  # the bridge's journal producer, idempotent, acks=all
            bootstrap_servers=settings.kafka.bootstrap_servers,
            loop=asyncio.get_running_loop(),
            client_config=settings.kafka.client_config(),
        )
        try:
            await producer.publish(settings.topic("requests"), event.tenant_id, serde.encode(event))
        finally:
            producer.close()
        # A second registry client learns the schema id from the broker, not from memory.
        reader = build_serde(settings)
        got = wait_for_event(
            settings, reader, settings.topic("requests"), RequestReceived, event.request_id
        )
        assert got == event
    finally:
        drop_topics(settings)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_wrong_password_is_refused_at_once_with_a_typed_error(
    sasl_broker: SaslBroker, mechanism: str
) -> None:
    settings = sasl_broker.settings(mechanism, password="not-the-password")
    started = time.monotonic()
    with pytest.raises(BrokerAuthenticationError) as refused:
        ensure_topics(settings, timeout_s=30)
    assert time.monotonic() - started < 10  # not the 30 s metadata timeout
    error = refused.value
    assert isinstance(error, BrokerError) and error.retriable is False
    assert (error.mechanism, error.username) == (mechanism, sasl_broker.username)
    assert "Authentication failed" in str(error) and "not-the-password" not in str(error)


def test_a_client_without_credentials_is_not_let_in(sasl_broker: SaslBroker) -> None:
    """PLAINTEXT against the SASL listener: the broker drops the connection; a bounded wait
    ends in a BrokerError (librdkafka cannot tell this from a broker that is down)."""
    settings = sasl_broker.settings("PLAIN")
    plain = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"security_protocol": "PLAINTEXT", "sasl_password": None}
            )
        }
    )
    started = time.monotonic()
    with pytest.raises(BrokerError):
        ensure_topics(plain, timeout_s=2)
    assert time.monotonic() - started < 8


def test_the_faust_worker_consumes_and_produces_over_sasl(
    sasl_broker: SaslBroker, tmp_path: Path
) -> None:
    """The worker process (streams/worker.py: create_app, aiokafka with the settings'
    SASLCredentials, SCRAM-SHA-256) admits a request and publishes its inference task."""
    run = uuid.uuid4().hex[:8]
    settings = sasl_broker.settings(
        "SCRAM-SHA-256",
        topic_prefix=f"sasl{run}.",
        worker=WorkerSettings(
            app_id=f"sluicegate-sasl-{run}",
            data_dir=tmp_path / "worker",
            metrics_port=None,
            inference_metrics_port=None,
        ),
        deployments=[
            Deployment(
                name="up", backend="openai", provider_model="m", base_url="http://127.0.0.1:9/v1"
            )
        ],
        models=[ModelAlias(name="gpt-sasl", deployments=["up"])],
        cache=CacheSettings(enabled=False),
        drift=DriftSettings(enabled=False),
    )
    ensure_topics(settings, timeout_s=30)
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", "worker"],
        env={**os.environ, **settings.to_env()},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    try:
        serde = build_serde(settings)
        event = request("gpt-sasl")
        produce(settings, settings.topic("requests"), event.tenant_id.encode(), serde.encode(event))
        try:
            task = wait_for_event(
                settings,
                serde,
                settings.topic("inference.default"),
                InferenceTask,
                event.request_id,
                timeout_s=90,
            )
        except AssertionError:
            tail = log.read_text()[-4000:]
            raise AssertionError(f"no inference task; the worker's log:\n{tail}") from None
        assert isinstance(task, InferenceTask)
        assert (task.deployment, task.model) == ("up", "gpt-sasl")
        assert worker.poll() is None, "the worker exited"
    finally:
        _stop(worker)
        drop_topics(settings)
