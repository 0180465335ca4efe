"""The ports: one Protocol per external system. Adapters live in their own modules.

A port says what the pipeline needs, not how a vendor does it, so each has an embedded default
that runs on one machine and a production adapter, chosen by configuration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sluicegate.schemas.models import InferenceTask


@runtime_checkable
class SchemaRegistry(Protocol):
    """Maps Avro schemas to the integer ids that prefix every record on the wire."""

    def register(self, subject: str, schema: str) -> int:
        """Register `schema` (Avro JSON text) under `subject`; return its id. Idempotent."""
        ...

    def lookup(self, schema_id: int) -> str:
        """The schema text of an id; raises UnknownSchemaError if nobody registered it."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Completion:
    """What a backend returns for one non-streamed call."""

    text: str | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    provider_model: str
    tool_calls_json: str | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed piece; the last one carries finish_reason and usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    provider_model: str | None = None


class InferenceBackend(Protocol):
    """Runs one inference task. Raises BackendError with an error_class on failure."""

    async def complete(self, task: InferenceTask) -> Completion: ...

    def stream(self, task: InferenceTask) -> AsyncIterator[Delta]: ...

    async def aclose(self) -> None: ...
