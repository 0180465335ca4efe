"""The worker process: topics, schemas and backends are made ready once, then Faust runs."""

from __future__ import annotations

import faust

from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.settings import Settings
from sluicegate.streams.app import create_app
from sluicegate.streams.topics import ensure_topics


def run_worker(settings: Settings, *, loglevel: str = "INFO") -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM)."""
    ensure_topics(settings)
    serde = build_serde(settings)
    backends = {d.name: build_backend(d) for d in settings.deployments}
    app = create_app(settings, serde=serde, backends=backends)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
