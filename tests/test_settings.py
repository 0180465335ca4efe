"""The settings object: what a child process rebuilds from `to_env()`."""

from __future__ import annotations

import pytest

from sluicegate.settings import Settings

pytestmark = pytest.mark.unit


def test_to_env_rebuilds_the_same_settings_secrets_included(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pathlib import Path

    from pydantic import SecretStr

    from sluicegate.settings import AnalyticsSettings, RegistrySettings

    original = Settings(
        analytics=AnalyticsSettings(url="http://ch:8123", password=SecretStr("s3cret")),
        registry=RegistrySettings(kind="confluent", basic_auth=SecretStr("u:p")),
        catalogue_file=None,
    )
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    rebuilt = Settings()
    assert rebuilt.analytics.password.get_secret_value() == "s3cret"
    assert rebuilt.registry.basic_auth.get_secret_value() == "u:p"
    assert rebuilt.worker.data_dir == original.worker.data_dir and isinstance(
        rebuilt.worker.data_dir, Path
    )
    assert rebuilt.model_dump() == original.model_dump()


def test_kafka_security_reaches_every_client_config() -> None:
    from pydantic import SecretStr

    from sluicegate.settings import KafkaSettings

    assert KafkaSettings().client_config() == {"bootstrap.servers": "127.0.0.1:9092"}
    assert KafkaSettings().faust_credentials() is None
    sasl = KafkaSettings(
        bootstrap_servers="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SecretStr("s3cret-password"),
        ssl_ca_file="/etc/ca.pem",
    )
    assert sasl.client_config() == {
        "bootstrap.servers": "k:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "s3cret-password",
        "ssl.ca.location": "/etc/ca.pem",
    }
    import faust

    plain = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="svc"
    )
    credentials = plain.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials) and credentials.username == "svc"
    with pytest.raises(ValueError, match="SASL needs"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT").client_config()
