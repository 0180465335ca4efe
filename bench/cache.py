"""Response-cache lookup latency: the exact and the semantic tier at 10k and 100k entries.

    python -m bench.cache [--sizes 10000 100000] [--samples 2000] [--no-model]

All entries sit in ONE scope (one tenant, model and prompt version, one system prompt), the
worst case for the semantic tier's brute-force scan. Vectors are random unit 384-d float32, so
the numbers are the index's, not a model's; embedding time is measured apart with the real
all-MiniLM-L6-v2 when it is installed (numpy path, and torch's when sentence-transformers is).

Columns (microseconds, p50 / p95 over `--samples` lookups, one thread):

- `key()`: canonicalize and SHA-256 the request (paid by every cacheable request);
- exact hit / miss: `lookup_exact` with a precomputed key;
- semantic hit / miss: `lookup_semantic` with the query vector already set (embedding
  excluded); a miss scans every row just like a hit;
- rebuild: `rebuild_index()` from the mapping (base64 vectors), in seconds.

Numbers are printed as a markdown table, never asserted.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np

from sluicegate.processors.cache import CachedAnswer, CacheKey, ResponseCache
from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.schemas.models import ChatMessage, RequestReceived, SamplingParams
from sluicegate.settings import CacheSettings

DIM = 384
SYSTEM = "You are a helpful support assistant for ACME. Answer briefly and politely."
CONVERSATION = "How do I reset my password if I no longer have access to my e-mail address?"


def request(question: str) -> RequestReceived:
    return RequestReceived(
        event_id=new_event_id(),
        occurred_at=now(),
        tenant_id="acme",
        request_id=new_event_id(),
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        producer="bench",
        model="chat",
        messages=[
            ChatMessage(role="system", content=SYSTEM),
            ChatMessage(role="user", content=question),
        ],
        params=SamplingParams(temperature=0.0, max_tokens=256),
    )


def percentiles_us(samples: list[float]) -> str:
    p50, p95 = np.percentile(np.asarray(samples) * 1e6, [50, 95])
    return f"{p50:,.1f} / {p95:,.1f}"


def timed(fn: Callable[[], object], samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def unit_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    matrix = rng.standard_normal((rows, DIM)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def bench_size(size: int, samples: int, rng: np.random.Generator) -> dict[str, str]:
    settings = CacheSettings(max_entries_per_scope=size, ttl_s=1e9)
    entries: dict[str, dict] = {}
    vectors = unit_rows(rng, size)
    answer = CachedAnswer("An answer of a few words.", "stop", 40, 12, "d", "p", usd=0.0004)

    def no_embed(_: str) -> np.ndarray:
        raise AssertionError("the bench sets every vector itself")

    cache = ResponseCache(settings, entries, no_embed, embedding_model="random")
    keys: list[CacheKey] = []
    for i in range(size):
        key = cache.key(request(f"question number {i}: {CONVERSATION}"))
        assert key is not None
        key.vector = vectors[i]
        cache.store_key(key, answer, now_ms=i)
        keys.append(key)

    probe = request(CONVERSATION)
    key_times = timed(lambda: cache.key(probe), samples)

    hit_keys = [keys[i] for i in rng.integers(0, size, samples)]
    it = iter(hit_keys)
    exact_hit = timed(lambda: cache.lookup_exact(next(it), now_ms=size), samples)
    miss_key = cache.key(probe)
    assert miss_key is not None
    exact_miss = timed(lambda: cache.lookup_exact(miss_key, now_ms=size), samples)

    # Semantic hit: a stored vector plus a little noise (cosine ~0.99); miss: a random vector.
    def near(i: int) -> CacheKey:
        k = CacheKey(**{**vars_of(miss_key), "vector": None})
        noisy = vectors[i] + 0.005 * rng.standard_normal(DIM).astype(np.float32)
        k.vector = noisy / np.linalg.norm(noisy)
        return k

    near_keys = iter([near(int(i)) for i in rng.integers(0, size, samples)])
    semantic_hit = timed(lambda: _must_hit(cache, next(near_keys), size), samples)
    far_keys = iter(
        [CacheKey(**{**vars_of(miss_key), "vector": v}) for v in unit_rows(rng, samples)]
    )
    semantic_miss = timed(lambda: cache.lookup_semantic(next(far_keys), now_ms=size), samples)

    restarted = ResponseCache(settings, entries, no_embed, embedding_model="random")
    start = time.perf_counter()
    restarted.rebuild_index()
    rebuild_s = time.perf_counter() - start
    entry_bytes = len(str(next(iter(entries.values()))))
    return {
        "entries": f"{size:,}",
        "key()": percentiles_us(key_times),
        "exact hit": percentiles_us(exact_hit),
        "exact miss": percentiles_us(exact_miss),
        "semantic hit": percentiles_us(semantic_hit),
        "semantic miss": percentiles_us(semantic_miss),
        "rebuild (s)": f"{rebuild_s:.2f}",
        "entry (B)": f"~{entry_bytes:,}",
    }


def vars_of(key: CacheKey) -> dict[str, object]:
    return {name: getattr(key, name) for name in CacheKey.__slots__}


def _must_hit(cache: ResponseCache, key: CacheKey, now_ms: int) -> None:
    hit = cache.lookup_semantic(key, now_ms=now_ms)
    assert hit is not None and hit.tier == "semantic"


def bench_models(samples: int) -> list[tuple[str, str, str]]:
    """(adapter, load s, embed p50 / p95 ms) for one short conversation, per installed path."""
    rows = []
    try:
        from sluicegate.connectors.embeddings import MiniLMEmbedder, NumpyMiniLMEmbedder
    except ImportError:
        return rows
    candidates: list[tuple[str, Callable[[], object]]] = [("numpy", NumpyMiniLMEmbedder)]
    try:
        import sentence_transformers  # noqa: F401

        candidates.append(("sentence-transformers (torch)", MiniLMEmbedder))
    except ImportError:
        pass
    for name, factory in candidates:
        try:
            embedder = factory()
            start = time.perf_counter()
            embedder.load()  # type: ignore[attr-defined]
            load_s = time.perf_counter() - start
        except ImportError as error:
            rows.append((name, f"not installed ({error.name})", "-"))
            continue
        embedder.embed([CONVERSATION])  # type: ignore[attr-defined]
        times = timed(lambda e=embedder: e.embed([CONVERSATION]), samples)
        p50, p95 = np.percentile(np.asarray(times) * 1e3, [50, 95])
        rows.append((name, f"{load_s:.2f}", f"{p50:.1f} / {p95:.1f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--no-model", action="store_true", help="skip the real-model embedding")
    args = parser.parse_args()
    rng = np.random.default_rng(7)

    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}\n")
    rows = [bench_size(size, args.samples, rng) for size in args.sizes]
    columns = list(rows[0])
    print("Lookup latency, µs p50 / p95 (one scope, 384-d, embedding excluded)\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---:" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |")

    if not args.no_model:
        models = bench_models(min(args.samples, 200))
        if models:
            print(f"\nEmbedding one user message ({len(CONVERSATION)} chars), all-MiniLM-L6-v2\n")
            print("| adapter | load (s) | embed ms p50 / p95 |")
            print("|---|---:|---:|")
            for name, load, latency in models:
                print(f"| {name} | {load} | {latency} |")


if __name__ == "__main__":
    main()
