"""Cache fill: CacheFill in → the answer stored under the key admission derived at the miss.

Runs on sg.cache, keyed by tenant like sg.requests, so it writes the same `cache` table the
admission stage reads on that partition.
"""

from __future__ import annotations

import json

from sluicegate.processors.cache import CachedAnswer, CacheKey, ResponseCache
from sluicegate.processors.envelope import Emit
from sluicegate.schemas.models import CacheFill


class CacheFiller:
    def __init__(self, *, cache: ResponseCache) -> None:
        self._cache = cache

    def run(self, fill: CacheFill) -> list[Emit]:
        key = CacheKey.from_dict(json.loads(fill.cache_key_json))
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
