"""In-process inference backends for worker tests: they answer `complete` only.

Subclasses decide *when* to answer (at once, after a delay, when a gate opens) and what to
record; the answer itself and the rest of the InferenceBackend port are here once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sluicegate.connectors.ports import Completion, Delta
from sluicegate.schemas.models import InferenceTask


def answer(text: str = "hi") -> Completion:
    """A one-token answer that finished normally."""
    return Completion(
        text=text,
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        provider_model="p",
    )


class CompleteOnlyBackend:
    """The port's other methods for a backend that only completes (no streaming)."""

    async def complete(self, t: InferenceTask) -> Completion:
        return answer()

    async def stream(self, t: InferenceTask) -> AsyncIterator[Delta]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def aclose(self) -> None:
        return None
