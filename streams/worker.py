"""The worker processes: topics and schemas are made ready once, then the loop runs.

`run_worker` is the Faust worker of the stateful stages; `run_inference` the serving loop that
consumes the pool topics (serving/inference_worker.py).
"""

from __future__ import annotations

import asyncio

import faust

from sluicegate.connectors.embeddings import build_embedder
from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.heap import freeze_startup_heap
from sluicegate.serving.event_metrics import serve_metrics
from sluicegate.serving.inference_worker import serve
from sluicegate.serving.lag_metrics import register_lag_metrics
from sluicegate.settings import RuntimeSettings, Settings
from sluicegate.streams.app import create_app
from sluicegate.streams.catalogue_view import CatalogueView
from sluicegate.streams.health_view import HealthView
from sluicegate.streams.identity_view import IdentityView
from sluicegate.streams.prompt_view import PromptView
from sluicegate.streams.topics import ensure_topics


class _Worker(faust.Worker):
    """faust.Worker that freezes the start-up heap once the app has started and recovered."""

    def __init__(self, app: faust.App, *, runtime: RuntimeSettings, **kwargs: object) -> None:
        super().__init__(app, **kwargs)
        self._runtime = runtime

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        freeze_startup_heap(self._runtime)


def run_worker(settings: Settings, *, loglevel: str = "INFO") -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM)."""
    ensure_topics(settings)
    settings.worker.data_dir.mkdir(parents=True, exist_ok=True)
    serde = build_serde(settings)
    health_view = HealthView(settings=settings, serde=serde)
    catalogue_view = CatalogueView(settings=settings, serde=serde)
    identity_view = IdentityView(settings=settings, serde=serde)
    prompt_view = PromptView(settings=settings, serde=serde)
    health_view.start()
    identity_view.start()
    prompt_view.start()
    metrics, metrics_server = serve_metrics(
        settings.worker.metrics_host, settings.worker.metrics_port
    )
    # The key registry is always passed in, so spend runs on sg.cost (keys may carry budgets).
    inputs = ["requests", "cache", "health.outcomes", "cost", "audit.pending"]
    if settings.drift.enabled:
        inputs.append("evals")
    lag = register_lag_metrics(
        metrics.registry,
        settings,
        [settings.worker.app_id],
        topics={settings.worker.app_id: [settings.topic(name) for name in inputs]},
    )
    try:
        embedder = build_embedder(settings.cache)
        app = create_app(
            settings,
            serde=serde,
            health_view=health_view,
            embedder=embedder,
            catalogue_view=catalogue_view,
            metrics=metrics,
            identity=identity_view.registry,
            prompt_registry=prompt_view.registry,
        )
        catalogue_view.start()  # after create_app subscribed: a published catalogue applies now
        worker = _Worker(app, runtime=settings.runtime, loglevel=loglevel, quiet=True)
        worker.execute_from_commandline()
    finally:
        lag.close()
        catalogue_view.close()
        identity_view.close()
        prompt_view.close()
        health_view.close()
        if metrics_server is not None:
            metrics_server.close()


def run_inference(settings: Settings) -> None:
    """Blocks until stopped (SIGINT/SIGTERM)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    ensure_topics(settings)
    serde = build_serde(settings)
    backends = {d.name: build_backend(d) for d in settings.deployments}
    freeze_startup_heap(settings.runtime)
    asyncio.run(serve(settings, serde, backends))
