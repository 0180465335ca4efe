"""The prompt registry in every process that renders or manages prompts: sg.prompts folded into
memory.

sg.prompts is compacted, single-partition, one key per version, so reading it whole gives
every version and every label's newest assignment. `start()` reads it to its end first (a
process never renders on an empty registry), then a daemon thread follows it, so a version
published or a label moved from the CLI or the admin API is live everywhere within the reader's
fetch wait. The registry swaps each prompt's state whole on every record, so the Faust event
loop and aiohttp handlers read it while the reader thread writes, without locks on their side.
"""

from __future__ import annotations

import logging

from sluicegate.processors.prompt_registry import PromptError, PromptRegistry
from sluicegate.schemas.models import PromptVersionPublished
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from sluicegate.streams.compacted import CompactedTopicReader

log = logging.getLogger(__name__)


class PromptView:
    """Follows sg.prompts into `registry`. A record that does not decode or parse is logged
    and skipped: the topic is written only by sluicegate, so that is a bug, not an attack, and
    one bad version must not hide the others."""

    def __init__(
        self, *, settings: Settings, serde: AvroSerde, registry: PromptRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else PromptRegistry()
        self._serde = serde
        self._reader = CompactedTopicReader(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            client_config=settings.kafka.client_config(),
            topic=settings.topic("prompts"),
            on_record=self.apply,
        )

    def start(self, timeout_s: float = 30.0) -> None:
        """Read the topic to its end (bounded by `timeout_s`), then follow it."""
        self._reader.start(timeout_s)

    def stop(self) -> None:
        self._reader.close()

    close = stop  # the other views' name

    def apply(self, value: bytes) -> None:
        try:
            event = self._serde.decode(value)
        except Exception:
            log.exception("prompts: a record that does not decode was skipped")
            return
        if not isinstance(event, PromptVersionPublished):
            log.warning("prompts: %s is not a prompt version", type(event).__name__)
            return
        try:
            self.registry.apply(event)
        except PromptError as error:
            log.warning(
                "prompts: %s@%s skipped: %s", event.prompt_name, event.version, error.message
            )
