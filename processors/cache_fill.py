"""Cache fill: CacheFill in → the answer stored under the key admission derived at the miss.

Runs on sg.cache, keyed by tenant like sg.requests, so it writes the same `cache` table the
admission stage reads on that partition.
"""

from __future__ import annotations

import json

import numpy as np

from sluicegate.processors.cache import CachedAnswer, CacheKey, ResponseCache
from sluicegate.processors.envelope import Emit
from sluicegate.schemas.models import CacheFill


class CacheFiller:
    def __init__(self, *, cache: ResponseCache) -> None:
        self._cache = cache

    def text_to_embed(self, fill: CacheFill) -> str | None:
        """The question to embed before `run` (None: nothing): the agent does it off its loop.
        Admission only embeds at lookup when the scope had entries, so a fill usually must."""
        return self._cache.text_to_embed_for_store(_key(fill))

    def run(self, fill: CacheFill, *, vector: np.ndarray | None = None) -> list[Emit]:
        key = _key(fill)
        if vector is not None:
            key.vector = vector
        answer = CachedAnswer(
            content=fill.content,
            tool_calls_json=fill.tool_calls_json,
            finish_reason=fill.finish_reason,
            prompt_tokens=fill.prompt_tokens,
            completion_tokens=fill.completion_tokens,
            deployment=fill.deployment,
            provider_model=fill.provider_model,
            usd=fill.usd,
            latency_ms=fill.latency_ms,
        )
        # The answer's own time: a replayed fill ages exactly like the original did.
        self._cache.store_key(key, answer, now_ms=int(fill.occurred_at.timestamp() * 1000))
        return []


def _key(fill: CacheFill) -> CacheKey:
    return CacheKey.from_dict(json.loads(fill.cache_key_json))
