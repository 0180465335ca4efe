"""The bridge process: topics and schemas ready, then aiohttp serves until stopped."""

from __future__ import annotations

import ssl

from aiohttp import web

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.errors import ConfigurationError
from sluicegate.heap import freeze_startup_heap
from sluicegate.serving.bridge import create_bridge_app
from sluicegate.settings import BridgeSettings, Settings
from sluicegate.streams.topics import ensure_topics


def tls_context(settings: BridgeSettings) -> ssl.SSLContext | None:
    """HTTPS when a certificate is configured (TLS 1.2+); None serves plain HTTP."""
    if settings.tls_cert_file is None:
        return None
    if settings.tls_key_file is None:
        raise ConfigurationError("bridge.tls_cert_file is set without bridge.tls_key_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(f"cannot load the bridge certificate: {error}") from error
    return context


def run_bridge(settings: Settings) -> None:
    context = tls_context(settings.bridge)
    ensure_topics(settings)
    app = create_bridge_app(settings, serde=build_serde(settings))

    async def freeze_when_started(_: web.Application) -> None:
        freeze_startup_heap(settings.runtime)

    app.on_startup.append(freeze_when_started)  # last: after the producer and router started
    web.run_app(
        app,
        host=settings.bridge.host,
        port=settings.bridge.port,
        access_log=None,
        print=None,
        ssl_context=context,
    )
