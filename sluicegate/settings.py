"""One settings object for the whole process, built once at start-up and passed down.

Every value can be overridden from the environment with the `SLUICEGATE_` prefix; nested groups
use a double underscore, e.g. `SLUICEGATE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`. Nothing else in
the code reads `os.environ` (adapters read the API-key variable a deployment *names*, through
`Deployment.api_key`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BackendKind = Literal["openai", "llamacpp"]


class KafkaSettings(BaseModel):
    """How every process reaches the broker."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "sg."
    default_partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)


class RegistrySettings(BaseModel):
    """Which schema registry adapter serves schema ids.

    `embedded` keeps schemas in the compacted topic `<prefix>_schemas`; `confluent` talks to any
    Confluent-compatible registry (Confluent, Karapace, Apicurio's ccompat API, Redpanda).
    """

    kind: Literal["embedded", "confluent"] = "embedded"
    url: str = "http://127.0.0.1:8081"
    basic_auth: SecretStr | None = None


class Deployment(BaseModel):
    """One callable model endpoint of the catalogue."""

    name: str
    backend: BackendKind
    provider_model: str
    pool: str = "default"
    base_url: str | None = None
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable that holds the API key."
    )
    description: str = ""
    timeout_s: float = 60.0
    input_usd_per_mtok: float = Field(default=0.0, ge=0, description="Price of 1M input tokens.")
    output_usd_per_mtok: float = Field(default=0.0, ge=0, description="Price of 1M output tokens.")
    pricing_version: str = Field(
        default="unpriced", description="Names the price list the two prices come from."
    )

    @property
    def api_key(self) -> SecretStr | None:
        """The key, read from the variable this deployment names (configuration, by design)."""
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        return SecretStr(value) if value else None


class ModelAlias(BaseModel):
    """A public model name and the deployments that may serve it, in order of preference."""

    name: str
    deployments: list[str]
    description: str = ""


def _embedded_catalogue() -> tuple[list[Deployment], list[ModelAlias]]:
    local = Deployment(
        name="local-smollm2",
        backend="llamacpp",
        provider_model="SmolLM2-135M-Instruct.Q4_1",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF) run on the CPU by llama.cpp.",
    )
    alias = ModelAlias(name="smollm2-135m", deployments=[local.name], description=local.description)
    return [local], [alias]


class BridgeSettings(BaseModel):
    """The OpenAI-compatible HTTP ingress."""

    host: str = "127.0.0.1"
    port: int = 8080
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    idempotency_ttl_s: float = 24 * 3600
    idempotency_max_entries: int = 100_000
    max_in_flight: int = Field(
        default=1024,
        gt=0,
        description="Requests waiting for an answer at once; past it the bridge sheds with 503.",
    )
    default_tenant: str = "default"


class WorkerSettings(BaseModel):
    """The Faust worker that runs the admission and inference agents."""

    app_id: str = "sluicegate"
    inference_concurrency: int = Field(default=16, ge=1)
    data_dir: Path = Field(
        default=Path("~/.sluicegate/worker"),
        validate_default=True,
        description="Faust's local state; `~` and relative paths are made absolute.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, path: Path) -> Path:
        return path.expanduser().resolve()


class AnalyticsSettings(BaseModel):
    """Where the analytics sink writes and `sluicegate sql` reads.

    Without `url`, chDB (ClickHouse in-process) on the path of `dsn`; with `url`, a ClickHouse
    server over HTTP. Both through clickhouse-connect (`connectors/analytics.py`).
    """

    dsn: str = Field(
        default="chdb://~/.sluicegate/chdb",
        validate_default=True,
        description="chdb://<path> of the embedded store; a relative path is made absolute.",
    )
    url: str | None = Field(default=None, description="ClickHouse server, e.g. http://ch:8123.")
    username: str = "default"
    password: SecretStr | None = None
    database: str = "default"
    batch_rows: int = Field(default=5000, ge=1)
    batch_seconds: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)

    @field_validator("dsn")
    @classmethod
    def _absolute_chdb_path(cls, dsn: str) -> str:
        if not dsn.startswith("chdb://"):
            raise ValueError("analytics.dsn must start with chdb:// (use `url` for a server)")
        return f"chdb://{Path(dsn.removeprefix('chdb://')).expanduser().resolve()}"

    @property
    def chdb_path(self) -> Path:
        return Path(self.dsn.removeprefix("chdb://"))


class Settings(BaseSettings):
    """The root settings: composed from the groups above, frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICEGATE_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    bridge: BridgeSettings = BridgeSettings()
    worker: WorkerSettings = WorkerSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    deployments: list[Deployment] = Field(default_factory=lambda: _embedded_catalogue()[0])
    models: list[ModelAlias] = Field(default_factory=lambda: _embedded_catalogue()[1])

    @field_validator("models")
    @classmethod
    def _aliases_name_known_deployments(
        cls, models: list[ModelAlias], info: object
    ) -> list[ModelAlias]:
        deployments = getattr(info, "data", {}).get("deployments") or []
        known = {d.name for d in deployments}
        for alias in models:
            missing = [d for d in alias.deployments if d not in known]
            if missing:
                raise ValueError(f"model {alias.name!r} names unknown deployments {missing}")
        return models

    def topic(self, name: str) -> str:
        """The full topic name for a catalogue name such as `requests`."""
        return f"{self.kafka.topic_prefix}{name}"

    def deployment(self, name: str) -> Deployment:
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        raise KeyError(name)

    def alias(self, name: str) -> ModelAlias | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def pools(self) -> list[str]:
        return sorted({d.pool for d in self.deployments})
