"""The topic catalogue: every topic sluicegate uses, with its key, partitions and retention.

One list, used by `sluicegate topics`, the worker at start-up and the tests, so a topic is never
created with settings that differ between processes. See docs/architecture.md for the flow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from sluicegate.errors import BrokerAuthenticationError, BrokerError
from sluicegate.settings import KafkaSettings, Settings

DAY_MS = 24 * 3600 * 1000
FOREVER = -1
# How long one metadata wait lasts before the error callback is looked at. librdkafka reports
# a refused SASL login there ~0.3 s after connecting, while the metadata call itself waits out
# its whole timeout and then says only "broker transport failure".
_AUTH_CHECK_S = 0.5


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    events: tuple[str, ...]
    retention_ms: int = 7 * DAY_MS
    cleanup: str = "delete"
    partitions: int | None = None  # None: the configured default
    dlq: bool = False  # consumed by an agent, so it has a `.dlq` sibling
    extra: tuple[tuple[str, str], ...] = ()  # further topic configs

    def config(self) -> dict[str, str]:
        config = {"cleanup.policy": self.cleanup}
        if "delete" in self.cleanup.split(","):
            config["retention.ms"] = str(self.retention_ms)
        return config | dict(self.extra)


def catalogue(settings: Settings) -> list[TopicSpec]:
    """Every topic, with names prefixed as configured."""
    t = settings.topic
    specs = [
        TopicSpec(t("requests"), "tenant_id", ("RequestReceived",), 90 * DAY_MS, dlq=True),
        TopicSpec(t("admitted"), "tenant_id", ("RequestAdmitted", "RequestRejected")),
        TopicSpec(t("enriched"), "tenant_id", ("RequestEnriched",)),
        TopicSpec(t("inference.results"), "deployment", ("InferenceResult", "InferenceFailed")),
        TopicSpec(
            t("health.outcomes"),
            "deployment",
            ("DeploymentOutcomes", "ProbeStarted"),
            1 * DAY_MS,
            dlq=True,
        ),
        TopicSpec(t("health"), "deployment", ("DeploymentHealth",), cleanup="compact"),
        TopicSpec(t("alerts"), "tenant_id", ("BudgetAlert",), 400 * DAY_MS),
        TopicSpec(t("cache"), "tenant_id", ("CacheFill",), 1 * DAY_MS, dlq=True),
        TopicSpec(
            t("catalogue"), "catalogue", ("CatalogueUpdated",), cleanup="compact", partitions=1
        ),
        TopicSpec(t("responses"), "request_id", ("ResponseReady", "RequestRejected"), 90 * DAY_MS),
        TopicSpec(t("stream"), "request_id", ("TokenChunk",), 1 * DAY_MS),
        TopicSpec(t("traces"), "trace_id", ("Span",), 30 * DAY_MS),
        TopicSpec(t("cost"), "tenant_id", ("CostEntry",), 400 * DAY_MS, dlq=True),
        # RAG ingestion (serving/rag_worker.py): kept, since replays rebuild stores from them.
        # A DocumentDeleted rides each of the three under the document's key, so it stays
        # ordered after the document's earlier records at every stage and in every replay.
        TopicSpec(
            t("documents"), "doc_id", ("DocumentSubmitted", "DocumentDeleted"), FOREVER, dlq=True
        ),
        TopicSpec(t("chunks"), "doc_id", ("ChunkCreated", "DocumentDeleted"), FOREVER, dlq=True),
        TopicSpec(
            t("embeddings"), "doc_id", ("ChunkEmbedded", "DocumentDeleted"), FOREVER, dlq=True
        ),
        TopicSpec(
            t("prompts"),
            "tenant_id/prompt_name@version",  # one key per version: compaction keeps history
            ("PromptVersionPublished",),
            cleanup="compact",
            partitions=1,
        ),
        TopicSpec(
            t("evals"), "run_id", ("EvalCaseResult", "EvalRunCompleted"), 90 * DAY_MS, dlq=True
        ),
        TopicSpec(t("drift"), "metric", ("DriftDetected",), 90 * DAY_MS),
        TopicSpec(t("audit"), "tenant_id", ("AuditRecord",), FOREVER),
        # Audit facts before they are chained: the audit agent links them per tenant into sg.audit.
        TopicSpec(t("audit.pending"), "tenant_id", ("AuditRecord",), 7 * DAY_MS, dlq=True),
        TopicSpec(
            t("identity"),
            "record key",
            ("ApiKeyRecord", "TenantRecord", "PolicyRecord"),
            cleanup="compact",
            partitions=1,
        ),
        TopicSpec(t("_schemas"), "schema_id", (), cleanup="compact", partitions=1),
        idempotency_topic(settings),
    ]
    # The deployments' pools, and the batch lane (processors/priority.py) even when no worker
    # consumes it yet: admission writes batch tasks there whatever runs.
    specs += [
        TopicSpec(t(f"inference.{pool}"), "request_id", ("InferenceTask",), dlq=True)
        for pool in sorted({*settings.pools, settings.batch.pool})
    ]
    specs += [
        TopicSpec(changelog, "table key", (), cleanup="compact")
        for changelog in faust_changelogs(settings)
    ]
    specs += [
        TopicSpec(f"{spec.name}.dlq", "original key", ("DeadLetter",), 30 * DAY_MS)
        for spec in list(specs)
        if spec.dlq
    ]
    return specs


def idempotency_topic(settings: Settings) -> TopicSpec:
    """Idempotency-Keys (serving/idempotency.py): compacted, so a key's last record (its
    settlement) is what a starting bridge reads, and deleted after the keys' TTL, which is when
    the bridges forget them anyway. Segments roll hourly so both actually happen; records
    younger than ten minutes (or two request timeouts) are never compacted, so the claims of a
    race in flight all stay for whoever reads them."""
    lag_ms = max(600 * 1000, int(settings.bridge.request_timeout_s * 2000))
    return TopicSpec(
        settings.topic("idempotency"),
        "tenant_id/idempotency_key",
        ("IdempotencyClaim",),
        retention_ms=max(int(settings.bridge.idempotency_ttl_s * 1000), 3600 * 1000),
        cleanup="compact,delete",
        extra=(("segment.ms", str(3600 * 1000)), ("min.compaction.lag.ms", str(lag_ms))),
    )


TABLES = ("health", "limits", "cache", "audit", "drift")


def faust_changelogs(settings: Settings) -> list[str]:
    """The Faust tables' changelog topics: created here with the rest, never by Faust itself,
    so their partition count always equals the source topics' (tables are co-partitioned)."""
    return [f"{settings.worker.app_id}-{table}-changelog" for table in TABLES]


def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create every missing catalogue topic; return the names created. Safe to call again."""
    refused: list[KafkaError] = []
    admin = AdminClient({**settings.kafka.client_config(), "error_cb": refused.append})
    existing = set(_list_topics(admin, settings.kafka, refused, timeout_s).topics)
    wanted = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions or settings.kafka.default_partitions,
            replication_factor=settings.kafka.replication_factor,
            config=spec.config(),
        )
        for spec in catalogue(settings)
        if spec.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # a concurrent creator won the race
                raise BrokerError(f"cannot create {name}: {exc}", topic=name) from exc
    _wait_for_leaders(admin, created, timeout_s)
    return created


def _list_topics(
    admin: AdminClient, kafka: KafkaSettings, errors: list[KafkaError], timeout_s: float
) -> ClusterMetadata:
    """The cluster's metadata within `timeout_s`. Every process calls this first (through
    `ensure_topics`), so wrong credentials fail here, at once, as a BrokerAuthenticationError:
    `errors` is what the admin client's error callback collected."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin.list_topics(
                timeout=max(0.01, min(_AUTH_CHECK_S, deadline - time.monotonic()))
            )
        except KafkaException as exc:
            admin.poll(0)  # serves the error callback
            refused = next((e for e in errors if e.code() == KafkaError._AUTHENTICATION), None)
            if refused is not None:
                raise BrokerAuthenticationError(
                    f"the broker at {kafka.bootstrap_servers} refused the credentials of "
                    f"{kafka.sasl_username!r} ({kafka.sasl_mechanism} over "
                    f"{kafka.security_protocol}): {refused.str()}",
                    mechanism=kafka.sasl_mechanism,
                    username=kafka.sasl_username,
                ) from exc
            if time.monotonic() >= deadline:
                raise BrokerError(f"cannot list topics: {exc}", retriable=True) from exc


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Creation returns before every partition has a leader; clients that start right after
    (the registry reads its topic at once) would see NOT_LEADER errors."""
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        topics = admin.list_topics(timeout=timeout_s).topics
        pending = {
            name
            for name in pending
            if name not in topics
            or topics[name].error is not None
            or any(p.leader < 0 for p in topics[name].partitions.values())
        }
        if pending and time.monotonic() > deadline:
            raise BrokerError(f"topics without leaders after {timeout_s}s: {sorted(pending)}")
        if pending:
            time.sleep(0.1)
