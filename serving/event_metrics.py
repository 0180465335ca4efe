"""The gateway's Prometheus metrics, derived purely from the events the stages publish.

Processors stay free of metrics code: whoever publishes an `Emit` (the Faust `Publisher`, the
inference worker) also hands it to `EventMetrics.observe`, so every number here is a fold over
the same events the log holds and can be recomputed from it.

`observe` runs once per published event on the hot path, so it does no JSON parsing and no
string formatting of free text: one dict lookup on the event's type, then attribute reads and
cached label children (prometheus_client's `labels()` validates and locks on every call; the
children are cached here by their label tuple instead).

Label values come from closed vocabularies only (stage names, span statuses, catalogue
deployments and aliases, error classes, rejection codes, strategies, cache tiers). The tenant
is a label only on the money counters (cost, USD saved, budget alerts), and only while
`tenant_labels` is on: a gateway with many tenants turns it off.

Decisions worth knowing when reading the numbers:

- Rejections are counted from `RequestRejected` on the `responses` topic only: admission also
  writes the same rejection to `admitted`, and every rejection (admission, inference give-up,
  internal error) reaches `responses` exactly once.
- Cache hits are counted from the admission span (its `cache` attribute names the tier), not
  from `ResponseReady.cache_hit`, so a hit is counted once and with its tier.
- Cache misses are counted from the first `InferenceTask` admission publishes (attempt 1) when
  it carries a `cache_key`: a key means the request was cacheable and looked up, and a task
  means nothing was found. A first task without a key is a bypass (cache off, or the request
  not cacheable: streamed tool calls, opt-out, ...). Rejected requests never reach the cache
  (limits run first), so they are neither. Hit ratio, in PromQL:

      sum(rate(sluicegate_cache_hits_total[5m]))
        / (sum(rate(sluicegate_cache_hits_total[5m]))
           + sum(rate(sluicegate_cache_misses_total[5m])))

- Retries and fallbacks are counted from the follow-up `InferenceTask` (attempt > 1), labelled
  by the deployment the new attempt goes to: `deployment_attempt > 1` is a retry of the same
  deployment, `deployment_attempt == 1` a fallback onto the next one of the chain.
- Replays, backtests and evals (events with a `run_id`) are counted like live traffic: they
  are on the log and, when they call a backend, they cost money too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from sluicegate.processors.envelope import Emit
from sluicegate.schemas.models import (
    BudgetAlert,
    CostEntry,
    DeploymentHealth,
    DriftDetected,
    Event,
    InferenceFailed,
    InferenceResult,
    InferenceTask,
    RequestRejected,
    ResponseReady,
    Span,
)

log = logging.getLogger(__name__)

# Admission answers in well under a millisecond, inference in seconds: one scale for both.
STAGE_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 5, 10)

# The breaker as a number, so "open" is a threshold in an alert rule.
BREAKER_STATE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

ADMISSION_SPAN = "admission"
GUARD_SPANS = {"guard": "input", "output_guard": "output"}  # span name → guardrail stage
RESPONSES_TOPIC = "responses"


class _Family:
    """A labelled metric whose children are cached by label tuple: `labels()` costs a lock,
    a validation and a str() per value on every call; a dict hit costs one hash."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            # Two threads may both miss: labels() hands both the same child, so no harm.
            child = self._children[values] = self._metric.labels(*values)
        return child


class EventMetrics:
    """Gateway metrics on a registry of their own (several apps in one process, tests)."""

    def __init__(self, *, tenant_labels: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.tenant_labels = tenant_labels
        tenant = ["tenant"] if tenant_labels else []
        registry = self.registry

        def counter(name: str, doc: str, labels: list[str]) -> _Family:
            return _Family(Counter(name, doc, labels, registry=registry))

        def gauge(name: str, doc: str, labels: list[str]) -> _Family:
            return _Family(Gauge(name, doc, labels, registry=registry))

        def histogram(
            name: str, doc: str, labels: list[str], buckets: tuple[float, ...]
        ) -> _Family:
            return _Family(Histogram(name, doc, labels, buckets=buckets, registry=registry))

        self.stage_duration = histogram(
            "sluicegate_stage_duration_seconds",
            "Wall time of one stage of a request, from its Span.",
            ["name", "status"],
            STAGE_BUCKETS,
        )
        self.inference_latency = histogram(
            "sluicegate_inference_latency_seconds",
            "Backend call wall time of successful calls.",
            ["deployment"],
            INFERENCE_BUCKETS,
        )
        self.inference_ttft = histogram(
            "sluicegate_inference_ttft_seconds",
            "Time to first token of successful streamed calls.",
            ["deployment"],
            TTFT_BUCKETS,
        )
        self.reread_offsets = counter(
            "sluicegate_worker_reread_offsets",
            "Offsets the Faust worker read again because a stream had skipped them and the "
            "commit was stuck behind them (streams/commit_watchdog.py).",
            ["topic"],
        )
        self.tokens = counter(
            "sluicegate_inference_tokens",
            "Tokens of successful calls, as the backend reported them.",
            ["deployment", "kind"],
        )
        self.failures = counter(
            "sluicegate_inference_failures",
            "Failed backend attempts (circuit_open: refused without a call).",
            ["deployment", "error_class"],
        )
        self.retries = counter(
            "sluicegate_inference_retries",
            "Attempts repeated on the same deployment after a failure.",
            ["deployment"],
        )
        self.fallbacks = counter(
            "sluicegate_inference_fallbacks",
            "Attempts moved to the next deployment of the chain; labelled by the new one.",
            ["deployment"],
        )
        self.responses = counter(
            "sluicegate_responses",
            "Answers delivered, by alias and by whether the cache or a backend produced them.",
            ["model", "source"],
        )
        self.rejections = counter(
            "sluicegate_rejections",
            "Requests refused (limits, budgets, routing, upstream give-ups, internal errors).",
            ["stage", "code", "http_status"],
        )
        self.cache_hits = counter(
            "sluicegate_cache_hits", "Requests answered from the response cache.", ["tier"]
        )
        self.cache_misses = Counter(
            "sluicegate_cache_misses",
            "Cacheable requests looked up and not found.",
            registry=registry,
        )
        self.cache_bypassed = Counter(
            "sluicegate_cache_bypassed",
            "Admitted requests with no cache lookup (cache off, or not cacheable).",
            registry=registry,
        )
        self.usd_saved = counter(
            "sluicegate_cache_usd_saved",
            "What cache hits would have cost had the original call been repeated.",
            ["model", "deployment", *tenant],
        )
        self.cost = counter(
            "sluicegate_cost_usd",
            "Spend on backends in US dollars, at catalogue prices.",
            ["model", "deployment", *tenant],
        )
        self.routing = counter(
            "sluicegate_routing_decisions",
            "Requests admitted and routed, by strategy and first deployment chosen.",
            ["strategy", "deployment"],
        )
        self.breaker = gauge(
            "sluicegate_deployment_breaker_state",
            "Circuit breaker of a deployment: 0 closed, 1 half_open, 2 open.",
            ["deployment"],
        )
        self.latency_ewma = gauge(
            "sluicegate_deployment_latency_ewma_seconds",
            "EWMA of successful call latency, as the health stage last published it.",
            ["deployment"],
        )
        self.ttft_ewma = gauge(
            "sluicegate_deployment_ttft_ewma_seconds",
            "EWMA of time to first token, as the health stage last published it.",
            ["deployment"],
        )
        self.budget_alerts = counter(
            "sluicegate_budget_alerts",
            "Budget thresholds crossed.",
            ["subject_kind", "threshold", "period", *tenant],
        )
        self.guardrail_decisions = counter(
            "sluicegate_guardrail_decisions",
            "Guardrail decisions by stage (input, output), action and the policy rule that "
            "decided (`default` when none did), from the guard spans.",
            ["stage", "action", "rule"],
        )
        self.drift = counter(
            "sluicegate_drift_detected",
            "Drift findings: a window moved from its reference (psi, ks, centroid) or one "
            "sample was an anomaly (ewma_z).",
            ["metric", "statistic", *tenant],
        )
        self.drift_value = gauge(
            "sluicegate_drift_statistic",
            "The statistic of the latest drift finding, next to its threshold.",
            ["metric", "statistic", "kind", *tenant],
        )
        self._handlers: dict[type[Event], Callable[[Emit, Any], None]] = {
            Span: self._span,
            InferenceTask: self._task,
            InferenceResult: self._result,
            InferenceFailed: self._failed,
            ResponseReady: self._response,
            RequestRejected: self._rejected,
            CostEntry: self._cost,
            DeploymentHealth: self._health,
            BudgetAlert: self._budget,
            DriftDetected: self._drift,
        }
        self._warned: set[type[Event]] = set()

    def observe(self, emit: Emit) -> None:
        """Count one published event; events no metric reads (TokenChunk, ...) cost one lookup.

        Never raises: a metrics bug must not stop the event from being published.
        """
        event = emit.event
        handler = self._handlers.get(type(event))
        if handler is None:
            return
        try:
            handler(emit, event)
        except Exception:
            if type(event) not in self._warned:
                self._warned.add(type(event))
                log.exception("metrics: could not observe a %s", type(event).__name__)

    def render(self) -> str:
        """The registry in the Prometheus text format, as /metrics serves it."""
        return generate_latest(self.registry).decode()

    # One handler per event type; `emit` is passed for the topic.

    def _span(self, emit: Emit, span: Span) -> None:
        seconds = (span.end_ms - span.start_ms).total_seconds()
        self.stage_duration.child(span.name, span.status).observe(max(seconds, 0.0))
        stage = GUARD_SPANS.get(span.name)
        if stage is not None:
            attributes = span.attributes
            self.guardrail_decisions.child(
                stage,
                attributes.get("policy_action", "allow"),
                attributes.get("policy_rule", "default"),
            ).inc()
            return
        if span.name != ADMISSION_SPAN:
            return
        attributes = span.attributes
        tier = attributes.get("cache")
        if tier is not None:
            self.cache_hits.child(tier).inc()
            return
        strategy = attributes.get("strategy")
        if strategy is not None:
            self.routing.child(strategy, attributes.get("deployment", "")).inc()

    def _task(self, emit: Emit, task: InferenceTask) -> None:
        if task.attempt == 1:  # admission's task: the cache was looked up, or bypassed
            (self.cache_bypassed if task.cache_key is None else self.cache_misses).inc()
        elif task.deployment_attempt > 1:
            self.retries.child(task.deployment).inc()
        else:
            self.fallbacks.child(task.deployment).inc()

    def _result(self, emit: Emit, result: InferenceResult) -> None:
        deployment = result.deployment
        self.inference_latency.child(deployment).observe(result.latency_ms / 1000)
        if result.ttft_ms is not None:
            self.inference_ttft.child(deployment).observe(result.ttft_ms / 1000)
        usage = result.usage
        self.tokens.child(deployment, "prompt").inc(usage.prompt_tokens)
        self.tokens.child(deployment, "completion").inc(usage.completion_tokens)

    def _failed(self, emit: Emit, failure: InferenceFailed) -> None:
        self.failures.child(failure.deployment, failure.error_class).inc()

    def _response(self, emit: Emit, response: ResponseReady) -> None:
        self.responses.child(response.model, "cache" if response.cache_hit else "inference").inc()

    def _rejected(self, emit: Emit, rejected: RequestRejected) -> None:
        if emit.topic != RESPONSES_TOPIC:  # admission's copy on `admitted`: the same rejection
            return
        code = rejected.code or ""
        self.rejections.child(rejected.stage, code, str(rejected.http_status)).inc()

    def _cost(self, emit: Emit, entry: CostEntry) -> None:
        labels = (entry.model, entry.deployment)
        if self.tenant_labels:
            labels = (*labels, entry.tenant_id)
        if entry.cache_hit:
            if entry.usd_saved > 0:
                self.usd_saved.child(*labels).inc(entry.usd_saved)
        elif entry.usd > 0:
            self.cost.child(*labels).inc(entry.usd)
        else:  # a free (local) deployment still shows up, at 0
            self.cost.child(*labels)

    def _health(self, emit: Emit, health: DeploymentHealth) -> None:
        deployment = health.deployment
        state = BREAKER_STATE.get(health.breaker)
        if state is not None:
            self.breaker.child(deployment).set(state)
        if health.latency_ewma_ms is not None:
            self.latency_ewma.child(deployment).set(health.latency_ewma_ms / 1000)
        if health.ttft_ewma_ms is not None:
            self.ttft_ewma.child(deployment).set(health.ttft_ewma_ms / 1000)

    def _budget(self, emit: Emit, alert: BudgetAlert) -> None:
        labels = (alert.subject_kind, f"{alert.threshold:g}", alert.period)
        if self.tenant_labels:
            labels = (*labels, alert.tenant_id)
        self.budget_alerts.child(*labels).inc()

    def _drift(self, emit: Emit, finding: DriftDetected) -> None:
        tenant = (finding.tenant_id,) if self.tenant_labels else ()
        self.drift.child(finding.metric, finding.statistic, *tenant).inc()
        self.drift_value.child(finding.metric, finding.statistic, "value", *tenant).set(
            finding.value
        )
        self.drift_value.child(finding.metric, finding.statistic, "threshold", *tenant).set(
            finding.threshold
        )


@dataclass
class MetricsServer:
    """A running /metrics endpoint; `close()` stops it and frees the port."""

    server: Any
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The bound port: the real one when started on port 0."""
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(metrics: EventMetrics, host: str, port: int) -> MetricsServer:
    """Serve `metrics`' registry on http://host:port/metrics from a daemon thread.

    prometheus_client's own server, so it needs no event loop and keeps answering while the
    Faust worker's loop is busy; port 0 picks a free port (see `MetricsServer.port`).
    """
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server, thread)


def serve_metrics(host: str, port: int | None) -> tuple[EventMetrics, MetricsServer | None]:
    """The metrics of one worker process and, when a port is configured, their endpoint.

    A port already taken (a second worker on the same host) is logged, not fatal: the worker's
    job is the stream, and its events still reach ClickHouse.
    """
    metrics = EventMetrics()
    if port is None:
        return metrics, None
    try:
        return metrics, start_metrics_server(metrics, host, port)
    except OSError as error:
        log.warning("metrics: cannot listen on %s:%s (%s); /metrics is off", host, port, error)
        return metrics, None
