"""Hot reload of the model catalogue through the compacted sg.catalogue topic.

`sluicegate catalogue publish FILE` validates a catalogue and appends it; every process (Faust
worker, inference worker, bridge) follows the topic with a `CatalogueView` and swaps the new
version in without a restart. While the topic is empty, each process keeps the catalogue its own
settings give (YAML file / environment); once something is published, the topic wins, so all
processes agree whatever their local files say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sluicegate.processors.envelope import system_envelope
from sluicegate.schemas.models import CatalogueUpdated
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Catalogue, Settings
from sluicegate.streams.compacted import CompactedTopicReader

log = logging.getLogger(__name__)
KEY = "catalogue"

Listener = Callable[[Catalogue], None]


def catalogue_event(catalogue: Catalogue, *, source: str) -> CatalogueUpdated:
    return CatalogueUpdated(
        **system_envelope(producer="catalogue"),
        version=catalogue.version,
        catalogue_json=catalogue.model_dump_json(),
        source=source,
    )


class CatalogueView:
    """Calls its listeners with every catalogue version published after the current one.

    Listeners run on the view's thread: they must only build new objects and swap references
    (or hand over to their event loop), never block.
    """

    def __init__(self, *, settings: Settings, serde: AvroSerde) -> None:
        self._serde = serde
        self._listeners: list[Listener] = []
        self._version = settings.catalogue.version
        self._reader = CompactedTopicReader(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            client_config=settings.kafka.client_config(),
            topic=settings.topic("catalogue"),
            on_record=self.apply,
        )

    @property
    def version(self) -> str:
        return self._version

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self, timeout_s: float = 30.0) -> None:
        self._reader.start(timeout_s)

    def close(self) -> None:
        self._reader.close()

    def apply(self, value: bytes) -> None:
        event = self._serde.decode_as(value, CatalogueUpdated)
        if event.version == self._version:
            return
        catalogue = Catalogue.model_validate_json(event.catalogue_json)
        for listener in self._listeners:
            listener(catalogue)
        self._version = event.version
        log.info("catalogue %s from %s is live", event.version, event.source or "?")
