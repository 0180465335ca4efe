"""The bridge process: topics and schemas ready, then aiohttp serves until stopped."""

from __future__ import annotations

from aiohttp import web

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.serving.bridge import create_bridge_app
from sluicegate.settings import Settings
from sluicegate.streams.topics import ensure_topics


def run_bridge(settings: Settings) -> None:
    ensure_topics(settings)
    app = create_bridge_app(settings, serde=build_serde(settings))
    web.run_app(
        app, host=settings.bridge.host, port=settings.bridge.port, access_log=None, print=None
    )
