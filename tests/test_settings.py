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
