"""The worker processes: topics and schemas are made ready once, then the loop runs.

`run_worker` is the Faust worker of the stateful stages; `run_inference` the serving loop that
consumes the pool topics (serving/inference_worker.py).
"""

from __future__ import annotations

import asyncio

import faust

from sluicegate.connectors.embeddings import build_embedder, warm_up
from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.heap import freeze_startup_heap
from sluicegate.serving.event_metrics import serve_metrics
from sluicegate.serving.inference_worker import serve
from sluicegate.serving.lag_metrics import register_lag_metrics
from sluicegate.settings import Settings
from sluicegate.streams.app import create_app
from sluicegate.streams.catalogue_view import CatalogueView
from sluicegate.streams.health_view import HealthView
from sluicegate.streams.identity_view import IdentityView
from sluicegate.streams.prompt_view import PromptView
from sluicegate.streams.topics import ensure_topics


class _Worker(faust.Worker):
    """faust.Worker that, once the app has started and recovered, opens its tables' changelog
    partitions for writing and freezes the start-up heap."""

    def __init__(self, app: faust.App, *, settings: Settings, **kwargs: object) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        await open_changelogs(self.app, self._settings.kafka.default_partitions)
        freeze_startup_heap(self._settings.runtime)


# A key no table uses: deleting it is the one write that changes no table's state.
UNUSED_KEY = "__sluicegate_start__"


async def open_changelogs(app: faust.App, partitions: int) -> None:
    """Write one tombstone of an unused key to every changelog partition, and wait for them.

    The first record the worker wrote to a changelog partition stalled admission for ~100 ms:
    measured under 150 req/s at the first rate-limit count, cache entry and drift save, each
    the whole run's p99 (150 req/s, 30 s: p99 39 ms; with these writes at start-up, 18 ms).
    At start-up nobody waits on them. On recovery a tombstone of a key that never existed
    changes nothing, and compaction removes it.
    """
    for table in app.tables.values():
        for partition in range(table.partitions or partitions):
            # As Faust deletes a key: value None, raw, so the record is a real tombstone.
            table.send_changelog(partition, UNUSED_KEY, None, value_serializer="raw")
    await app.producer.flush()


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
        warm_up(embedder)  # before the heap is frozen, and not in the first request
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
        worker = _Worker(app, settings=settings, loglevel=loglevel, quiet=True)
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
