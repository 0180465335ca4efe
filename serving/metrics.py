"""Prometheus metrics of the bridge, on a registry of its own so several bridges can share a
process (tests) without colliding on global names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sluicegate_bridge_requests",
            "HTTP requests answered.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sluicegate_bridge_request_seconds",
            "Wall time from request to the last byte of the answer.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "sluicegate_bridge_in_flight",
            "Requests waiting for their answer.",
            registry=self.registry,
        )
        self.shed = Counter(
            "sluicegate_bridge_shed",
            "Requests refused with 503 because max_in_flight were waiting already.",
            registry=self.registry,
        )
        self.idempotent_replays = Counter(
            "sluicegate_bridge_idempotent_replays",
            "Answers served again for a repeated Idempotency-Key.",
            registry=self.registry,
        )
