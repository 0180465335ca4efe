"""One settings object for the whole process, built once at start-up and passed down.

Every value can be overridden from the environment with the `SLUICEGATE_` prefix; nested groups
use a double underscore, e.g. `SLUICEGATE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`. Nothing else in
the code reads `os.environ` (adapters read the API-key variable a deployment *names*, through
`Deployment.api_key`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BackendKind = Literal["openai", "azure", "anthropic", "bedrock", "llamacpp"]
RoutingStrategy = Literal["priority", "cost", "latency", "weighted", "capability"]


class Capabilities(BaseModel):
    """What a deployment can do; routing skips deployments that lack what a request needs."""

    tools: bool = False
    json_mode: bool = False
    vision: bool = False
    streaming: bool = True


class KafkaSettings(BaseModel):
    """How every process reaches the broker."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "sg."
    default_partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: Path | None = Field(default=None, description="CA bundle to trust (PEM).")
    ssl_cert_file: Path | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_key_file: Path | None = Field(default=None, description="Client certificate's key.")

    def client_config(self) -> dict[str, str]:
        """librdkafka settings for every client: the bootstrap address and the security ones.

        Each confluent-kafka client merges this in (callers add their own keys after it).
        """
        config = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            config["security.protocol"] = self.security_protocol
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None or self.sasl_username is None:
                raise ValueError("SASL needs kafka.sasl_mechanism and kafka.sasl_username")
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            if self.sasl_password is not None:
                config["sasl.password"] = self.sasl_password.get_secret_value()
        for key, path in (
            ("ssl.ca.location", self.ssl_ca_file),
            ("ssl.certificate.location", self.ssl_cert_file),
            ("ssl.key.location", self.ssl_key_file),
        ):
            if path is not None:
                config[key] = str(path)
        return config

    def faust_credentials(self) -> Any:
        """The same for the Faust worker (aiokafka): None on PLAINTEXT."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import ssl

        import faust

        context = None
        if self.security_protocol.endswith("SSL"):
            context = ssl.create_default_context(
                cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None
            )
            if self.ssl_cert_file is not None:
                context.load_cert_chain(
                    self.ssl_cert_file, self.ssl_key_file if self.ssl_key_file else None
                )
        if self.security_protocol.startswith("SASL"):
            password = self.sasl_password.get_secret_value() if self.sasl_password else ""
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=password,
                mechanism=self.sasl_mechanism,
                ssl_context=context,
            )
        return faust.SSLCredentials(context)


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
    api_key_file: Path | None = Field(
        default=None, description="A file holding the API key (Docker/Kubernetes secrets)."
    )
    api_key_vault: str | None = Field(
        default=None,
        description="Vault KV v2 reference `<mount>/<path>#<field>` (extra `vault`; "
        "VAULT_ADDR and VAULT_TOKEN from the environment).",
    )
    description: str = ""
    timeout_s: float = 60.0
    input_usd_per_mtok: float = Field(default=0.0, ge=0, description="Price of 1M input tokens.")
    output_usd_per_mtok: float = Field(default=0.0, ge=0, description="Price of 1M output tokens.")
    pricing_version: str = Field(
        default="unpriced", description="Names the price list the two prices come from."
    )
    context_window: int = Field(default=8192, gt=0, description="Prompt + completion tokens.")
    capabilities: Capabilities = Capabilities()
    weight: float = Field(default=1.0, ge=0, description="Share of traffic under `weighted`.")
    priority: int = Field(default=0, description="Lower is tried first under `priority`.")
    api_version: str | None = Field(
        default=None,
        description="Azure OpenAI `api-version`, or the `anthropic-version` header to pin.",
    )
    region: str | None = Field(default=None, description="AWS region (`bedrock` only).")
    client: Literal["aiohttp", "sdk"] = Field(
        default="aiohttp",
        description="Which HTTP client calls an `openai` deployment: `aiohttp`, a lean client "
        "(~0.13 ms of CPU per call), or `sdk`, the official `openai` SDK (~1.2 ms per call). "
        "`azure` deployments always use the SDK.",
    )

    @property
    def api_key(self) -> SecretStr | None:
        """The key, from the environment variable, file or Vault entry this deployment names,
        first found first (sluicegate/secrets.py)."""
        from sluicegate.secrets import resolve_secret

        return resolve_secret(
            env=self.api_key_env, file=self.api_key_file, vault=self.api_key_vault
        )


class ModelAlias(BaseModel):
    """A public model name and the deployments that may serve it, in order of preference."""

    name: str
    deployments: list[str]
    description: str = ""
    strategy: RoutingStrategy = Field(
        default="priority", description="How routing orders the deployments for one request."
    )
    knowledge_base: str | None = Field(
        default=None,
        description="Enrich every request with context retrieved from this knowledge base "
        "(RAG); `extra_body.sluicegate.knowledge_base` overrides it per request.",
    )


def _embedded_catalogue() -> tuple[list[Deployment], list[ModelAlias]]:
    local = Deployment(
        name="local-smollm2",
        backend="llamacpp",
        provider_model="SmolLM2-135M-Instruct.Q4_1",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF) run on the CPU by llama.cpp.",
    )
    alias = ModelAlias(name="smollm2-135m", deployments=[local.name], description=local.description)
    return [local], [alias]


def check_aliases(deployments: list[Deployment], models: list[ModelAlias]) -> None:
    known = {d.name for d in deployments}
    if len(known) != len(deployments):
        raise ValueError("deployment names must be unique")
    for alias in models:
        missing = [d for d in alias.deployments if d not in known]
        if missing:
            raise ValueError(f"model {alias.name!r} names unknown deployments {missing}")


class Catalogue(BaseModel):
    """The model catalogue on its own: what `sluicegate catalogue publish` puts on sg.catalogue,
    and what every process swaps in when a new version arrives."""

    model_config = {"frozen": True}

    deployments: list[Deployment]
    models: list[ModelAlias]

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        check_aliases(self.deployments, self.models)
        return self

    @classmethod
    def from_file(cls, path: Path) -> Catalogue:
        return cls.model_validate(load_catalogue(path))

    @property
    def version(self) -> str:
        """A content hash: the same catalogue always has the same version."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()
        return f"sha256:{digest[:16]}"


def load_catalogue(path: Path) -> dict[str, Any]:
    """Read a catalogue YAML file: a mapping with `deployments` and/or `models` lists."""
    try:
        loaded = yaml.safe_load(path.expanduser().read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read catalogue file {path}: {error}") from error
    if not isinstance(loaded, dict) or not set(loaded) <= {"deployments", "models"}:
        raise ValueError(f"{path}: expected a mapping with `deployments` and `models`")
    return loaded


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
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain): serve HTTPS instead of HTTP."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the cert.")


class WorkerSettings(BaseModel):
    """The Faust worker (stateful stages) and the inference worker."""

    app_id: str = "sluicegate"
    inference_concurrency: int = Field(default=16, ge=1)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(
        default=9464, description="Prometheus /metrics of the Faust worker; null: off."
    )
    inference_metrics_port: int | None = Field(
        default=9465, description="Prometheus /metrics of the inference worker; null: off."
    )
    data_dir: Path = Field(
        default=Path("~/.sluicegate/worker"),
        validate_default=True,
        description="Faust's local state; `~` and relative paths are made absolute.",
    )
    group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Static group membership (KIP-345) for the Faust worker's and the inference "
        "worker's consumer groups: a restarted process with the same id takes its partitions "
        "back at once instead of after the session timeout. Unique per process of a group; "
        "null: dynamic membership.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, path: Path) -> Path:
        return path.expanduser().resolve()


class BatchSettings(BaseModel):
    """The batch lane: requests marked `priority: batch` (processors/priority.py) go to the
    cheapest capable deployment through `sg.inference.<pool>`, run when interactive work
    leaves room."""

    pool: str = Field(
        default="batch",
        min_length=1,
        description="Names the lane's topic `inference.<pool>`; not a deployment's pool.",
    )
    consume: bool = Field(
        default=True, description="Whether `sluicegate inference` consumes the batch lane."
    )
    concurrency: int = Field(
        default=32, ge=1, description="Batch tasks one worker runs at once (beside interactive)."
    )
    fetch_batch: int = Field(
        default=256,
        ge=1,
        description="Batch tasks one worker takes from the lane ahead of free slots; past it the "
        "lane's partitions are paused.",
    )
    pause_when_interactive_in_flight: int = Field(
        default=8,
        ge=1,
        description="Interactive tasks running at which a worker stops starting batch tasks and "
        "pauses the lane (also while interactive tasks wait for a slot).",
    )


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


class ResilienceSettings(BaseModel):
    """Retries, circuit breakers and latency tracking for the routing stage."""

    max_retries: int = Field(
        default=2, ge=0, description="Retries on the same deployment for a retryable failure."
    )
    backoff_base_s: float = Field(default=0.25, gt=0)
    backoff_max_s: float = Field(default=8.0, gt=0)
    breaker_failures: int = Field(
        default=5, ge=1, description="Failures within `breaker_window_s` that open a breaker."
    )
    breaker_window_s: float = Field(default=30.0, gt=0)
    breaker_cooldown_s: float = Field(
        default=30.0, gt=0, description="How long a breaker stays open before a half-open probe."
    )
    latency_ewma_alpha: float = Field(default=0.2, gt=0, le=1)


class LimitRule(BaseModel):
    """Limits for one subject (a tenant, an API key or an end user); unset means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    usd_per_day: float | None = Field(default=None, gt=0)
    usd_per_month: float | None = Field(default=None, gt=0)


class LimitsSettings(BaseModel):
    """Rate limits and budgets: a default rule per kind of subject, and overrides by id."""

    tenant: LimitRule = LimitRule()
    key: LimitRule = LimitRule()
    user: LimitRule = LimitRule()
    tenants: dict[str, LimitRule] = Field(default_factory=dict)
    keys: dict[str, LimitRule] = Field(default_factory=dict)
    budget_alert_thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.8, 1.0],
        description="Shares of a budget at which a BudgetAlert event is emitted.",
    )
    hold_ttl_s: float = Field(
        default=300.0,
        gt=0,
        description="How long an admitted request's budget hold lasts when no cost settles it "
        "(a failed request); at least the longest request timeout.",
    )

    @property
    def counts_spend(self) -> bool:
        """Whether any rule needs the real usage and cost of answers (tokens/min settling,
        budgets); without one, nothing has to consume sg.cost on the stateful worker."""
        rules = [self.tenant, self.key, self.user, *self.tenants.values(), *self.keys.values()]
        return any(r.tokens_per_minute or r.usd_per_day or r.usd_per_month for r in rules)

    def for_tenant(self, tenant_id: str) -> LimitRule:
        return self.tenants.get(tenant_id, self.tenant)

    def for_key(self, key_id: str) -> LimitRule:
        return self.keys.get(key_id, self.key)


class CacheSettings(BaseModel):
    """The response cache: an exact tier and a semantic (embedding) tier."""

    enabled: bool = True
    semantic: bool = True
    similarity_threshold: float = Field(default=0.95, gt=0, le=1)
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries_per_scope: int = Field(default=10_000, ge=1)
    deterministic_only: bool = Field(
        default=True, description="Cache only temperature-0 requests unless a request opts in."
    )
    embedder: Literal["auto", "local", "openai", "none"] = Field(
        default="auto",
        description="Semantic tier's embeddings: `local` all-MiniLM-L6-v2 on the CPU, `openai` "
        "an OpenAI-compatible server, `auto` local when installed, else the tier is off.",
    )
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = Field(default=1536, ge=1)
    embedding_base_url: str | None = None
    embedding_api_key_env: str | None = None


class PromptExperiment(BaseModel):
    """A live A/B test of prompt variants: requests that reference `prompt@label` are split
    between the variants by a stable hash of the user (or the request), so one user keeps
    seeing one variant. The chosen version is recorded on every event as `prompt_ref`."""

    name: str = Field(
        description="Experiment name; also the hash salt, so experiments split independently."
    )
    tenant_id: str | None = Field(
        default=None, description="Only this tenant's traffic; null: every tenant."
    )
    prompt: str = Field(description="Prompt name the experiment applies to.")
    label: str = Field(default="prod", description="The label callers reference (`prompt@label`).")
    variants: dict[str, float] = Field(
        min_length=2,
        description="Version (number, semver or label) → traffic weight (need not sum to 1).",
    )
    split_by: Literal["user", "request"] = Field(
        default="user", description="Hash the end user (falls back to the request) or each request."
    )


class PromptSettings(BaseModel):
    """The prompt registry (sg.prompts) as the request path uses it."""

    experiments: list[PromptExperiment] = Field(
        default_factory=list, description="Live A/B tests of prompt variants (docs/prompts.md)."
    )
    few_shot_embeddings: bool = Field(
        default=True,
        description="Select few-shot examples by embedding similarity with the cache's "
        "embedder when one is configured; otherwise the first k are used.",
    )


class EvalSettings(BaseModel):
    """Eval runs and replays (`sluicegate eval`, `sluicegate replay`)."""

    max_in_flight: int = Field(
        default=8,
        ge=1,
        description="Requests of one run in the pipeline at once (bounded parallelism).",
    )
    case_timeout_s: float = Field(
        default=120.0, gt=0, description="How long a case may wait for its answer."
    )
    judge_model: str | None = Field(
        default=None, description="Model alias of the LLM judge; null: the run's own model."
    )
    reports_dir: str = Field(
        default="~/.sluicegate/reports",
        description="Where run reports (Markdown + PNG) are written.",
    )
    tenant_id: str = Field(
        default="default", description="Tenant an eval run's requests are journaled under."
    )


class TracingSettings(BaseModel):
    """Optional OpenTelemetry export of the `traces` topic (`sluicegate trace-export`).

    The exporter is its own process with its own consumer group, so a slow or absent collector
    never touches the request path; it only lags behind the topic.
    """

    otlp_endpoint: str = Field(
        default="http://127.0.0.1:4318/v1/traces",
        description="Full OTLP/HTTP traces URL, signal path included.",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra request headers, e.g. a vendor's API key (values are secret).",
    )
    service_name: str = Field(default="sluicegate", description="Resource `service.name`.")
    batch_spans: int = Field(default=512, ge=1, description="Spans per export request at most.")
    batch_seconds: float = Field(
        default=1.0, gt=0, description="Longest wait after a batch's first span before export."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one export request.")
    retry_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between retries of a failed export."
    )


class KnowledgeBaseSettings(BaseModel):
    """How one knowledge base is chunked and embedded (processors/chunking.py).

    Sizes are in tokens of the configured tokenizer (all-MiniLM-L6-v2's WordPiece by default),
    and the MiniLM embedder reads at most 256 of them: keep `chunk_tokens` at or below that.
    """

    chunker: Literal["recursive", "sliding", "semantic", "hierarchical"] = "recursive"
    chunk_tokens: int = Field(
        default=200, ge=8, description="Largest chunk (the child chunk under `hierarchical`)."
    )
    overlap_tokens: int = Field(default=40, ge=0, description="Window overlap (`sliding`).")
    min_chunk_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Smaller chunks join a neighbour (default: chunk_tokens/4; 32 `semantic`).",
    )
    parent_tokens: int = Field(default=800, ge=16, description="Parent size (`hierarchical`).")
    breakpoint_percentile: float = Field(
        default=90.0, gt=0, lt=100, description="Distance percentile that breaks (`semantic`)."
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2", description="Recorded with every vector; a change re-embeds."
    )
    collection: str | None = Field(
        default=None, description="Vector-store collection; default: the knowledge base's name."
    )

    @model_validator(mode="after")
    def _sizes(self) -> KnowledgeBaseSettings:
        if self.chunker == "sliding" and self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("overlap_tokens must be less than chunk_tokens")
        if self.chunker == "hierarchical" and self.parent_tokens <= self.chunk_tokens:
            raise ValueError("parent_tokens must be larger than chunk_tokens")
        return self


class RagSettings(BaseModel):
    """Retrieval-augmented generation: knowledge bases, the vector store, fusion, reranking."""

    knowledge_bases: dict[str, KnowledgeBaseSettings] = Field(
        default_factory=dict, description="Knowledge-base name → its chunking and embedding."
    )
    store: Literal["lancedb", "weaviate"] = "lancedb"
    path: Path = Field(
        default=Path("~/.sluicegate/lancedb"),
        validate_default=True,
        description="LanceDB directory; `~` and relative paths are made absolute.",
    )
    weaviate_url: str | None = Field(default=None, description="e.g. http://weaviate:8080.")
    weaviate_grpc_port: int = Field(default=50051, ge=1, le=65535)
    weaviate_api_key: SecretStr | None = None
    tokenizer: Literal["auto", "minilm", "regex"] = Field(
        default="auto", description="Counts chunk and context tokens; `auto`: MiniLM if installed."
    )
    routing: Literal["auto", "hybrid", "semantic", "keyword"] = Field(
        default="hybrid", description="Which retrievers a query uses; `auto` decides per query."
    )
    fusion: Literal["rrf", "weighted"] = "rrf"
    dense_weight: float = Field(default=0.7, ge=0, description="Dense share of the fused score.")
    keyword_weight: float = Field(default=0.3, ge=0, description="BM25 share of the fused score.")
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal-rank-fusion constant.")
    candidates: int = Field(default=40, ge=1, description="Hits per retriever before fusion.")
    top_k: int = Field(default=5, ge=1, description="Chunks kept after fusion and reranking.")
    reranker: Literal["none", "blend"] = Field(
        default="none", description="`blend`: MiniLM cosine + BM25 + term-coverage features."
    )
    context_token_budget: int = Field(default=1500, ge=1)
    context_preamble: str = Field(
        default="Answer using the numbered sources below when they are relevant, and cite them "
        "as [n]. If they do not contain the answer, say so.",
        description="Instruction that opens the system message an enriched request gets.",
    )
    on_retrieval_error: Literal["reject", "continue"] = Field(
        default="reject",
        description="A failed retrieval: reject (503 `retrieval_unavailable`) or continue "
        "without context (the enrich span records the error).",
    )
    embedding_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible /v1/embeddings server for knowledge bases whose "
        "`embedding_model` is not all-MiniLM-L6-v2 (which runs locally).",
    )
    embedding_api_key_env: str | None = Field(
        default=None, description="Environment variable holding that server's API key."
    )
    embedding_dimensions: int = Field(
        default=1536, ge=1, description="Vector width of the models served there."
    )
    embed_batch_size: int = Field(default=32, ge=1, description="Chunks per embedding call.")
    embed_batch_s: float = Field(
        default=0.25, ge=0, description="Longest wait for an embedding batch to fill."
    )
    index_batch_size: int = Field(
        default=500, ge=1, description="Chunks per vector-store upsert (LanceDB: one version each)."
    )
    index_batch_s: float = Field(
        default=1.0, ge=0, description="Longest wait for an upsert batch to fill."
    )
    max_document_bytes: int = Field(
        default=900_000,
        ge=1024,
        description="Largest document text (UTF-8) accepted; below Kafka's 1 MB message limit.",
    )
    max_upload_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest file `POST .../documents` takes."
    )

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: Path) -> Path:
        return path.expanduser().resolve()

    @model_validator(mode="after")
    def _weights(self) -> RagSettings:
        if self.dense_weight + self.keyword_weight <= 0:
            raise ValueError("rag: dense_weight + keyword_weight must be positive")
        if self.store == "weaviate" and not self.weaviate_url:
            raise ValueError("rag: store `weaviate` needs weaviate_url")
        return self

    def knowledge_base(self, name: str) -> KnowledgeBaseSettings:
        """A configured knowledge base; KeyError for an unknown name."""
        return self.knowledge_bases[name]

    def collection(self, name: str) -> str:
        kb = self.knowledge_bases.get(name)
        return (kb.collection if kb and kb.collection else None) or name


def _revealed(value: Any) -> Any:
    """JSON-able, with secrets in clear: `model_dump` masks SecretStr as "**********", which a
    child process would then read as the password itself."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _revealed(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _revealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class BannedTopic(BaseModel):
    """A topic answers must not be about, scored by the terms it matches (guard_topics.py).

    Keywords and phrases match whole words of the normalized text (lowercase, accents folded);
    a trailing `*` also matches longer words ("bomb*": bombs, bomber). Patterns are regexes on
    the same text. Each distinct term that matches adds its weight (1 in list form); the topic
    fires when the sum reaches `threshold`.
    """

    name: str = Field(min_length=1)
    keywords: list[str] | dict[str, float] = Field(default_factory=list)
    patterns: list[str] | dict[str, float] = Field(default_factory=list)
    threshold: float = Field(default=1.0, gt=0)
    tenants: list[str] | None = Field(default=None, description="Only these tenants; null: all.")

    @model_validator(mode="after")
    def _has_terms(self) -> BannedTopic:
        if not self.keywords and not self.patterns:
            raise ValueError(f"topic {self.name!r} has neither keywords nor patterns")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"topic {self.name!r}: bad pattern {pattern!r}: {error}") from None
        return self


class GuardrailsSettings(BaseModel):
    """Input guardrails run by admission on user and tool messages, before the cache and the
    model see them; output guardrails on answers (guard_output.py); the policy engine's file."""

    pii_action: Literal["off", "mask", "redact", "block"] = Field(
        default="off",
        description="What to do with PII in prompts: mask (keep a hint), redact (a typed "
        "placeholder), block (400 `pii_detected`).",
    )
    pii_kinds: list[str] | None = Field(
        default=None, description="Kinds to look for (email, phone, credit_card, ...); null: all."
    )
    pii_engine: Literal["builtin", "presidio"] = Field(
        default="builtin",
        description="What finds PII (both directions): builtin (patterns and checksums, "
        "~70 us/KB) or presidio (the `presidio` extra: Presidio's recognizers and a spaCy "
        "model, ~300x slower).",
    )
    injection_action: Literal["off", "flag", "block"] = Field(
        default="flag",
        description="Prompt injection: flag (score on the trace), block (400 `prompt_injection`).",
    )
    injection_threshold: float = Field(default=0.5, gt=0, le=1)
    output_pii_action: Literal["off", "mask", "redact", "block"] = Field(
        default="off",
        description="PII leaking into answers (text and tool-call arguments): mask, redact, "
        "block (502 `output_pii_detected`).",
    )
    output_pii_kinds: list[str] | None = Field(
        default=None, description="Kinds to look for in answers; null: all."
    )
    banned_topics: list[BannedTopic] = Field(
        default_factory=list, description="Topics answers must not be about (keywords, regexes)."
    )
    topic_action: Literal["off", "flag", "block"] = Field(
        default="block",
        description="An answer on a banned topic: flag (trace only), block (502 `banned_topic`).",
    )
    json_schema_action: Literal["off", "flag", "block"] = Field(
        default="flag",
        description="An answer that misses the requested response_format (json_object / "
        "json_schema): flag (trace only), block (502 `invalid_json_output`).",
    )
    output_stream_mode: Literal["holdback", "passthrough"] = Field(
        default="holdback",
        description="Streamed answers under output rules that block, mask or redact: holdback "
        "(text is released in windows the guard has checked, so nothing it would withhold or "
        "rewrite reaches the caller; costs first-token latency) or passthrough (tokens go out "
        "as they come; the guard only sees the whole answer, after the caller did).",
    )
    output_stream_window_chars: int = Field(
        default=64,
        ge=1,
        description="holdback: characters of new text released per check (NeMo's chunk_size).",
    )
    output_stream_overlap_chars: int = Field(
        default=64,
        ge=0,
        description="holdback: characters held back past each window and checked again as "
        "the next one's context (NeMo's context_size); a value of up to this length that "
        "starts in a released window is always seen whole.",
    )
    policy_file: Path | None = Field(
        default=None,
        description="YAML policy (processors/policy.py): per-tenant rules evaluated before the "
        "rules these settings imply.",
    )


DriftMetric = Literal[
    "prompt_tokens", "completion_tokens", "latency_ms", "usd", "prompt_embedding", "eval"
]
AnomalyMetric = Literal["prompt_tokens", "completion_tokens", "latency_ms", "usd"]
DRIFT_METRICS: tuple[DriftMetric, ...] = (
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "usd",
    "prompt_embedding",
    "eval",
)
ANOMALY_METRICS: tuple[AnomalyMetric, ...] = ("latency_ms", "usd")


class DriftTenantOverride(BaseModel):
    """One tenant's detection thresholds; a field left unset keeps the group's value."""

    psi_threshold: float | None = Field(default=None, gt=0)
    psi_alpha: float | None = Field(default=None, gt=0, lt=1)
    ks_alpha: float | None = Field(default=None, gt=0, lt=1)
    centroid_threshold: float | None = Field(default=None, gt=0, le=2)
    z_threshold: float | None = Field(default=None, gt=0)


class DriftSettings(BaseModel):
    """Drift detection (processors/drift.py): per tenant and metric, each tumbling window is
    compared with a reference window (PSI and KS for scalars, centroid distance for prompt
    embeddings), and latency and cost are scored per request (EWMA z-score)."""

    enabled: bool = True
    window_s: float = Field(default=300.0, gt=0, description="Tumbling window, event time.")
    reference: Literal["first", "previous"] = Field(
        default="previous",
        description="`previous`: the last closed window that had enough samples; `first`: the "
        "first such window, pinned.",
    )
    min_samples: int = Field(default=50, ge=2, description="Smaller windows are skipped.")
    max_samples: int = Field(
        default=1000, ge=2, description="Reservoir size per window (scalar metrics)."
    )
    bins: int = Field(default=10, ge=2, description="PSI bins (reference quantiles).")
    psi_threshold: float = Field(default=0.2, gt=0)
    psi_alpha: float | None = Field(
        default=0.001,
        gt=0,
        lt=1,
        description="PSI must also exceed what sampling noise reaches with this probability; "
        "null: the bare threshold.",
    )
    ks_alpha: float = Field(default=0.001, gt=0, lt=1)
    centroid_threshold: float = Field(
        default=0.05, gt=0, le=2, description="Debiased cosine distance of prompt centroids."
    )
    ewma_alpha: float = Field(default=0.02, gt=0, le=1)
    z_threshold: float = Field(default=4.0, gt=0)
    warmup: int = Field(default=50, ge=1, description="Samples before z-scores are judged.")
    cooldown_s: float = Field(default=300.0, ge=0, description="Quiet time after an anomaly.")
    metrics: list[DriftMetric] = Field(default_factory=lambda: list(DRIFT_METRICS))
    anomaly_metrics: list[AnomalyMetric] = Field(default_factory=lambda: list(ANOMALY_METRICS))
    tenants: dict[str, DriftTenantOverride] = Field(default_factory=dict)
    lateness_s: float = Field(
        default=30.0,
        ge=0,
        description="A window is closed by the clock this long after its end; later samples "
        "for it are late.",
    )
    embedding_sample_rate: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of admitted requests whose prompt is embedded for "
        "`prompt_embedding` (by a hash of request_id, so replays sample the same requests).",
    )
    max_embeddings_per_s: float = Field(
        default=2.0,
        gt=0,
        description="Cap on those embeddings per Faust worker (~13 ms of CPU each), so their "
        "cost stays flat as traffic grows; sampled prompts over it are skipped.",
    )

    @model_validator(mode="after")
    def _reservoir_holds_a_window(self) -> DriftSettings:
        if self.max_samples < self.min_samples:
            raise ValueError("drift.max_samples must be at least drift.min_samples")
        return self


Role = Literal["admin", "developer", "viewer", "service"]
JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256"
]
AttributeCondition = dict[str, str | list[str]]


class AccessRule(BaseModel):
    """One attribute rule (ABAC). Rules are evaluated in order after the role check; the first
    that matches decides. A rule only narrows what the caller's roles permit, never widens it."""

    model_config = {"frozen": True, "extra": "forbid"}

    name: str = Field(min_length=1, max_length=128)
    effect: Literal["allow", "deny"]
    actions: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, description="Action globs (`model:*`)."
    )
    resources: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, description="Resource-name globs."
    )
    when: AttributeCondition = Field(
        default_factory=dict, description="Every attribute must equal (one of) the value(s)."
    )
    unless: AttributeCondition = Field(
        default_factory=dict, description="The rule does not match if any of these holds."
    )
    reason: str = Field(default="", max_length=500)


class JwtSettings(BaseModel):
    """JWT bearer tokens as an alternative to API keys (PyJWT)."""

    enabled: bool = False
    algorithms: list[JwtAlgorithm] = Field(default_factory=lambda: ["RS256"], min_length=1)
    hmac_secret: SecretStr | None = Field(
        default=None, description="Shared secret of the HS* algorithms (at least 32 bytes)."
    )
    jwks_file: Path | None = Field(
        default=None, description="JWKS (JSON) with the public keys of the RS/PS/ES algorithms."
    )
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = Field(default=30.0, ge=0, le=600)
    subject_claim: str = "sub"
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"
    models_claim: str | None = None
    attribute_claims: dict[str, str] = Field(default_factory=dict)
    require_known_tenant: bool = True
    max_token_bytes: int = Field(default=8192, ge=256)

    @model_validator(mode="after")
    def _keys_for_the_algorithms(self) -> JwtSettings:
        if not self.enabled:
            return self
        hmac = any(a.startswith("HS") for a in self.algorithms)
        if hmac and (self.hmac_secret is None or len(self.hmac_secret.get_secret_value()) < 32):
            raise ValueError("auth.jwt: HS* algorithms need an hmac_secret of at least 32 bytes")
        if not all(a.startswith("HS") for a in self.algorithms) and self.jwks_file is None:
            raise ValueError("auth.jwt: RS/PS/ES algorithms need a jwks_file")
        return self


class AuthSettings(BaseModel):
    """Identity (API keys, JWT) and authorization of every caller."""

    required: bool = Field(
        default=True, description="Refuse requests without credentials (nothing open by default)."
    )
    key_prefix: str = Field(default="sk-sg-", pattern=r"^[A-Za-z0-9-]{1,16}$")
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_memory_kib: int = Field(default=19456, ge=8)
    argon2_parallelism: int = Field(default=1, ge=1)
    cache_max_entries: int = Field(default=10_000, ge=1)
    cache_ttl_s: float = Field(default=300.0, gt=0)
    failed_cache_ttl_s: float = Field(default=10.0, ge=0)
    operator_tenant: str = Field(
        default="default", description="Tenant whose admins administer every tenant."
    )
    bootstrap: bool = True
    bootstrap_tenant: str = "default"
    bootstrap_roles: list[Role] = Field(default_factory=lambda: ["admin"], min_length=1)
    rules: list[AccessRule] = Field(default_factory=list)
    jwt: JwtSettings = JwtSettings()


class VllmEngineSettings(BaseModel):
    """vLLM engine arguments of one GPU pool (`AsyncEngineArgs` fields of the same name)."""

    model: str = Field(description="Hugging Face id or local path of the weights.")
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes"] | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enable_prefix_caching: bool = True
    max_model_len: int | None = Field(default=None, gt=0)
    speculative_config: dict[str, Any] | None = Field(
        default=None,
        description='vLLM speculative decoding, e.g. {"method": "ngram", '
        '"num_speculative_tokens": 4, "prompt_lookup_max": 4}.',
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Any other AsyncEngineArgs field, passed as is."
    )


class PoolServing(BaseModel):
    """How one pool runs on Ray: its resources, its size, and how it scales."""

    num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(
        default=0.0, ge=0, description="GPUs per replica; fractional shares one GPU (0.5: two)."
    )
    autoscale: bool = Field(default=True, description="Scale on consumer lag; else fixed size.")
    replicas: int = Field(default=1, ge=0, description="The fixed size when autoscale is off.")
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_lag_per_replica: int = Field(
        default=32, ge=1, description="Unfinished tasks (consumer lag) one replica may carry."
    )
    upscale_cooldown_s: float = Field(default=10.0, ge=0)
    downscale_cooldown_s: float = Field(default=60.0, ge=0)
    vllm: VllmEngineSettings | None = Field(
        default=None, description="Run this pool's deployments on an in-replica vLLM engine."
    )


class RuntimeSettings(BaseModel):
    """How each long-running process tunes Python's cyclic garbage collector (heap.py)."""

    gc_freeze: bool = Field(
        default=True,
        description="Move the objects alive once a process has started out of the collector's "
        "sight (`gc.freeze()`), so a full collection walks only what requests allocate. "
        "Without it a full collection paused the event loop 50-100 ms under load.",
    )
    gc_gen0_threshold: int = Field(
        default=10_000,
        ge=0,
        description="Allocations between two young-generation collections (Python's default "
        "is 700); 0 keeps the interpreter's thresholds.",
    )


class RayServeSettings(BaseModel):
    """`sluicegate serve`: the Ray cluster to join or start, and the pools' serving options."""

    address: str | None = Field(
        default=None, description="`ray://host:10001` of a cluster to join; unset: start one."
    )
    namespace: str = "sluicegate"
    num_cpus: int | None = Field(
        default=None, description="CPUs of a locally started Ray node; unset: all."
    )
    object_store_mb: int = Field(
        default=256,
        ge=75,
        description="Object store of a locally started node (tasks do not "
        "travel through it: replicas read Kafka).",
    )
    pools: dict[str, PoolServing] = Field(
        default_factory=dict, description="Per-pool options; a pool not named gets defaults."
    )
    consumer_session_timeout_ms: int = Field(
        default=10_000,
        ge=6_000,
        description="How soon a killed replica's partitions move to the others (the broker's "
        "group.min.session.timeout.ms, 6 s by default, is the floor).",
    )
    graceful_shutdown_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a leaving replica may drain before Ray kills it."
    )
    lag_interval_s: float = Field(default=1.0, gt=0, description="How often lag is read.")
    look_back_period_s: float = Field(
        default=2.0, gt=0, description="Ray's window over the replicas' in-flight reports."
    )
    health_check_period_s: float = Field(default=5.0, gt=0)
    autoscaler: Literal["driver", "ray"] = Field(
        default="driver",
        description="`driver`: the serve process applies the lag policy by redeploying with a "
        "new num_replicas; `ray`: Ray Serve's custom-policy hook (experimental, see "
        "docs/serving.md).",
    )

    def pool(self, name: str) -> PoolServing:
        return self.pools.get(name, PoolServing())


class Settings(BaseSettings):
    """The root settings: composed from the groups above, frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICEGATE_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    bridge: BridgeSettings = BridgeSettings()
    worker: WorkerSettings = WorkerSettings()
    batch: BatchSettings = BatchSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    limits: LimitsSettings = LimitsSettings()
    cache: CacheSettings = CacheSettings()
    guardrails: GuardrailsSettings = GuardrailsSettings()
    drift: DriftSettings = DriftSettings()
    tracing: TracingSettings = TracingSettings()
    auth: AuthSettings = AuthSettings()
    rag: RagSettings = RagSettings()
    prompts: PromptSettings = PromptSettings()
    evals: EvalSettings = EvalSettings()
    ray: RayServeSettings = RayServeSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    catalogue_file: Path | None = Field(
        default=None,
        description="YAML file with `deployments` and `models`; the environment still overrides.",
    )
    deployments: list[Deployment] = Field(default_factory=lambda: _embedded_catalogue()[0])
    models: list[ModelAlias] = Field(default_factory=lambda: _embedded_catalogue()[1])

    @model_validator(mode="before")
    @classmethod
    def _load_catalogue_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("catalogue_file"):
            return data
        catalogue = load_catalogue(Path(data["catalogue_file"]))
        for key in ("deployments", "models"):
            if key not in data and key in catalogue:
                data = {**data, key: catalogue[key]}
        return data

    @field_validator("models")
    @classmethod
    def _aliases_name_known_deployments(
        cls, models: list[ModelAlias], info: object
    ) -> list[ModelAlias]:
        check_aliases(getattr(info, "data", {}).get("deployments") or [], models)
        return models

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process build exactly these settings (workers,
        bridges and sinks started by `up`, tests and benchmarks). Unset fields stay unset: a
        JSON `null` would read back as the string "null" for a path."""
        env = {}
        for name in type(self).model_fields:
            value = _revealed(getattr(self, name))
            if value is not None:
                key = f"SLUICEGATE_{name.upper()}"
                env[key] = value if isinstance(value, str) else json.dumps(value)
        return env

    def with_catalogue(self, catalogue: Catalogue) -> Settings:
        """These settings with another catalogue (a hot reload); everything else unchanged."""
        return self.model_copy(
            update={"deployments": catalogue.deployments, "models": catalogue.models}
        )

    @property
    def catalogue(self) -> Catalogue:
        return Catalogue(deployments=self.deployments, models=self.models)

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
