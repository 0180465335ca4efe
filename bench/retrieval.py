"""Retrieval benchmark: indexing throughput, query latency, and retrieval quality.

    python -m bench.retrieval                          # latency at 10k chunks + labelled set
    python -m bench.retrieval --chunks 10000 100000 --ann
    python -m bench.retrieval --skip-latency --cranfield ../shared/datasets/cranfield
    python -m bench.retrieval --skip-latency --corpus c.jsonl --queries q.jsonl --qrels q.tsv

Everything goes through the project's own code: parsers' output shape → `build_chunker` →
the MiniLM embedder → `records_for` → `LanceDBVectorStore` → `Retriever` (+ reranker).

**Latency** (`--chunks`): a synthetic collection of N chunks (Zipf-distributed words, 60 per
chunk; random unit 384-d vectors, 10% of chunks restricted to a role) in a temporary LanceDB
directory. Store-level dense and BM25 search, then `Retriever.search` per mode with the query
embedded by the real MiniLM (the hot-path cost), p50/p99 over `--latency-queries` queries.
Indexing is reported per stage: chunking (recursive, 200 tokens), embedding (MiniLM, numpy;
~200-token chunks, batches of 32) and the store's upsert; the end-to-end rate is bounded by the
slowest.

**Quality**: recall@k, nDCG@k and success@1 (a relevant document ranked first) per
configuration — dense, BM25, hybrid (RRF and weighted 70/30), each hybrid with the
feature-blend reranker, and `auto` routing. Relevance is per document: retrieved chunks are
mapped to their documents (first occurrence counts). Inputs:

- `--labelled FILE` (default bench/retrieval_labelled.json, k=5): 50 hand-written passages,
  24 queries (rare identifiers, paraphrases, mixed);
- `--cranfield DIR` (k=10): the Cranfield collection (`cran.all.1400`, `cran.qry`, `cranqrel`;
  query ids are ordinals; grades 1-4 relevant, gain 5 - grade);
- `--corpus/--queries/--qrels` (k=10): a BEIR-style triple — corpus JSONL (`_id`, `title`,
  `text`), queries JSONL (`_id`, `text`), qrels TSV (`query-id corpus-id score`, header
  optional, score > 0 relevant and used as the gain).

Numbers are printed as markdown tables; nothing is asserted or tuned to one collection.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sluicegate.connectors.embeddings import NumpyMiniLMEmbedder
from sluicegate.connectors.vector_lancedb import LanceDBVectorStore
from sluicegate.connectors.vector_store import Caller, SearchFilter
from sluicegate.processors.chunking import build_chunker, load_tokenizer
from sluicegate.processors.rerank import FeatureBlendReranker
from sluicegate.processors.retrieval import Retriever, records_for
from sluicegate.settings import KnowledgeBaseSettings, RagSettings

DIM = 384
TENANT = "bench"
CALLER = Caller(tenant_id=TENANT)
LABELLED = Path(__file__).resolve().parent / "retrieval_labelled.json"


def pct(samples: Sequence[float]) -> str:
    p50, p99 = np.percentile(np.asarray(samples) * 1000, [50, 99])
    return f"{p50:.1f} / {p99:.1f}"


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


# -- latency ----------------------------------------------------------------------------------


def zipf_words(rng: np.random.Generator, vocabulary: int = 20_000) -> Callable[[int], list[str]]:
    weights = 1.0 / np.arange(1, vocabulary + 1)
    weights /= weights.sum()
    names = [f"w{i}" for i in range(vocabulary)]

    def draw(n: int) -> list[str]:
        return [names[i] for i in rng.choice(vocabulary, size=n, p=weights)]

    return draw


def latency(chunks: int, queries: int, ann: bool, embedder: NumpyMiniLMEmbedder) -> list[str]:
    from sluicegate.connectors.vector_store import ChunkRecord

    rng = np.random.default_rng(7)
    draw = zipf_words(rng)
    rows = [f"### {chunks:,} chunks" + (" (ANN index)" if ann else " (flat)")]
    with tempfile.TemporaryDirectory() as tmp:
        store = LanceDBVectorStore(
            path=Path(tmp), ann_min_rows=10**12, optimize_every_rows=10**12, read_consistency_s=None
        )
        vectors = rng.normal(size=(chunks, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch, upsert_s = 1000, 0.0
        for first in range(0, chunks, batch):
            records = [
                ChunkRecord(
                    chunk_id=f"d{i // 10}#c{i % 10}",
                    doc_id=f"d{i // 10}",
                    tenant_id=TENANT,
                    text=" ".join(draw(60)),
                    vector=vectors[i],
                    acl=("role:board",) if i % 10 == 0 else (),
                    title=f"Document {i // 10}",
                )
                for i in range(first, min(first + batch, chunks))
            ]
            started = time.perf_counter()
            store.upsert("kb", records)
            upsert_s += time.perf_counter() - started
        started = time.perf_counter()
        store.optimize("kb")
        optimize_s = time.perf_counter() - started
        rows.append(f"- store upsert: {chunks / upsert_s:,.0f} chunks/s (batches of {batch})")
        rows.append(f"- optimize (fold rows into the BM25 and scalar indices): {optimize_s:.1f} s")
        if ann:
            from lancedb.index import IvfHnswSq

            started = time.perf_counter()
            store._table("kb").create_index("vector", config=IvfHnswSq(distance_type="cosine"))
            rows.append(f"- cosine IVF_HNSW_SQ build: {time.perf_counter() - started:.1f} s")
        texts = [" ".join(draw(3)) for _ in range(queries)]
        query_vectors = [v for v in rng.normal(size=(queries, DIM)).astype(np.float32)]
        where = SearchFilter.for_caller(CALLER)
        settings = RagSettings(candidates=40, top_k=5)
        plain = Retriever(
            store=store, embedder=embedder, tokenizer=load_tokenizer(), settings=settings
        )
        reranked = Retriever(
            store=store,
            embedder=embedder,
            tokenizer=load_tokenizer(),
            settings=settings,
            reranker=FeatureBlendReranker(embedder=embedder),
        )
        pool = ThreadPoolExecutor(max_workers=1)
        threaded = Retriever(
            store=store,
            embedder=embedder,
            tokenizer=load_tokenizer(),
            settings=settings,
            executor=pool,
        )
        it_v, it_t = iter(query_vectors * 2), iter(texts * 9)
        rows.append("")
        rows.append("| operation | p50 / p99 ms |")
        rows.append("|---|---|")
        rows.append(
            "| store dense search (top 40, ACL prefilter) | "
            + pct(
                timed(lambda: store.dense_search("kb", next(it_v), top_k=40, where=where), queries)
            )
            + " |"
        )
        rows.append(
            "| store BM25 search (top 40, ACL prefilter) | "
            + pct(
                timed(
                    lambda: store.keyword_search("kb", next(it_t), top_k=40, where=where), queries
                )
            )
            + " |"
        )
        rows.append(
            "| MiniLM query embedding (3 words) | "
            + pct(timed(lambda: embedder.embed([next(it_t)]), queries))
            + " |"
        )
        for label, retriever, mode in (
            ("retriever semantic (embed + dense)", plain, "semantic"),
            ("retriever keyword (BM25)", plain, "keyword"),
            ("retriever hybrid (embed + dense + BM25 + RRF)", plain, "hybrid"),
            ("retriever hybrid, BM25 in a thread meanwhile", threaded, "hybrid"),
            ("retriever hybrid + feature-blend rerank", reranked, "hybrid"),
        ):
            samples = timed(
                lambda r=retriever, m=mode: r.search(
                    query=next(it_t), knowledge_base="kb", caller=CALLER, mode=m
                ),
                queries,
            )
            rows.append(f"| {label} | {pct(samples)} |")
        pool.shutdown()
        store.close()
    return rows


def indexing_stages(embedder: NumpyMiniLMEmbedder) -> list[str]:
    rng = np.random.default_rng(3)
    words = "the kettle limescale filter water boils descale vinegar rinse base power".split()
    paragraphs = [
        " ".join(rng.choice(words, 40)) + ". " + " ".join(rng.choice(words, 40)) + "."
        for _ in range(400)
    ]
    text = "\n\n".join(paragraphs)
    tokenizer = load_tokenizer()
    chunker = build_chunker(KnowledgeBaseSettings(chunk_tokens=200), tokenizer=tokenizer)
    started = time.perf_counter()
    chunks = chunker.run(doc_id="doc", text=text)
    chunk_s = time.perf_counter() - started
    sample = [c.text for c in chunks[:64]]
    embedder.embed(sample[:2])  # load the weights outside the timing
    started = time.perf_counter()
    for first in range(0, len(sample), 32):
        embedder.embed(sample[first : first + 32])
    embed_s = time.perf_counter() - started
    mean_tokens = np.mean([c.tokens for c in chunks])
    return [
        f"- chunking (recursive, 200 tokens): {len(chunks) / chunk_s:,.0f} chunks/s "
        f"({len(text) / chunk_s / 1e6:.1f} M chars/s)",
        f"- embedding (MiniLM numpy, {mean_tokens:.0f}-token chunks, batches of 32): "
        f"{len(sample) / embed_s:,.1f} chunks/s",
    ]


# -- quality ----------------------------------------------------------------------------------


@dataclass
class Collection:
    name: str
    documents: list[tuple[str, str, str]]  # (id, title, text)
    queries: list[tuple[str, str]]  # (id, text)
    qrels: dict[str, dict[str, float]]  # query id → {doc id: gain}
    k: int


def load_labelled(path: Path) -> Collection:
    data = json.loads(path.read_text())
    documents = [(d["id"], d["title"], d["text"]) for d in data["documents"]]
    queries = [(str(i), q["query"]) for i, q in enumerate(data["queries"])]
    qrels = {str(i): dict.fromkeys(q["relevant"], 1.0) for i, q in enumerate(data["queries"])}
    return Collection(path.name, documents, queries, qrels, k=5)


def _cranfield_records(path: Path) -> Iterable[dict[str, str]]:
    record: dict[str, str] = {}
    field = ""
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"^\.([ITABW])\b\s*(.*)$", line)
        if match and match.group(1) == "I":
            if record:
                yield record
            record, field = {"I": match.group(2).strip()}, ""
        elif match:
            field = match.group(1)
            record[field] = match.group(2)
        elif field:
            record[field] = (record.get(field, "") + " " + line).strip()
    if record:
        yield record


def load_cranfield(folder: Path) -> Collection:
    documents = [
        (r["I"], r.get("T", "").strip(), r.get("W", "").strip())
        for r in _cranfield_records(folder / "cran.all.1400")
    ]
    queries = [
        (str(ordinal), r.get("W", "").strip())
        for ordinal, r in enumerate(_cranfield_records(folder / "cran.qry"), 1)
    ]
    qrels: dict[str, dict[str, float]] = {}
    for line in (folder / "cranqrel").read_text().split("\n"):
        parts = line.split()
        if len(parts) == 3 and 1 <= int(parts[2]) <= 4:
            qrels.setdefault(parts[0], {})[parts[1]] = 5.0 - int(parts[2])
    return Collection("cranfield", documents, queries, qrels, k=10)


def load_beir(corpus: Path, queries: Path, qrels_path: Path) -> Collection:
    documents = []
    for line in corpus.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            documents.append((str(row["_id"]), row.get("title", ""), row.get("text", "")))
    query_rows = [json.loads(line) for line in queries.read_text().splitlines() if line.strip()]
    qrels: dict[str, dict[str, float]] = {}
    for line in qrels_path.read_text().splitlines():
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 3 and parts[-1].replace(".", "", 1).lstrip("-").isdigit():
            query_id, doc_id, score = parts[0], parts[-2], float(parts[-1])
            if score > 0:
                qrels.setdefault(query_id, {})[doc_id] = score
    wanted = [(str(q["_id"]), q["text"]) for q in query_rows if str(q["_id"]) in qrels]
    return Collection(corpus.stem, documents, wanted, qrels, k=10)


def index_collection(
    collection: Collection, store: LanceDBVectorStore, embedder: NumpyMiniLMEmbedder
) -> tuple[int, float]:
    """Chunk, embed and upsert every document; returns (chunks, seconds)."""
    tokenizer = load_tokenizer()
    chunker = build_chunker(KnowledgeBaseSettings(chunk_tokens=200), tokenizer=tokenizer)
    started = time.perf_counter()
    pending: list[tuple[object, str]] = []  # (chunk, document title)
    for doc_id, title, text in collection.documents:
        body = f"{title}\n\n{text}" if title else text
        pending.extend((c, title) for c in chunker.run(doc_id=doc_id, text=body))
    # Embed in batches of similar length: the numpy encoder pads each batch to its longest.
    order = sorted(range(len(pending)), key=lambda i: len(pending[i][0].text))
    vectors: dict[int, np.ndarray] = {}
    for first in range(0, len(order), 32):
        batch = order[first : first + 32]
        for i, vector in zip(
            batch, embedder.embed([pending[i][0].text for i in batch]), strict=True
        ):
            vectors[i] = vector
    records = []
    for i, (chunk, title) in enumerate(pending):
        records.extend(
            records_for(
                [chunk], [vectors[i]], tenant_id=TENANT, title=title or None,
                embedding_model=embedder.model_name,
            )
        )  # fmt: skip
    for first in range(0, len(records), 2000):
        store.upsert("quality", records[first : first + 2000])
    store.optimize("quality")
    return len(records), time.perf_counter() - started


def ndcg(ranked: Sequence[str], gains: dict[str, float], k: int) -> float:
    dcg = sum(gains.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    best = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / best if best else 0.0


def quality(collection: Collection, embedder: NumpyMiniLMEmbedder) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = LanceDBVectorStore(path=Path(tmp), read_consistency_s=None)
        n_chunks, seconds = index_collection(collection, store, embedder)
        rows.append(
            f"### {collection.name}: {len(collection.documents)} documents → {n_chunks} chunks, "
            f"{len(collection.queries)} queries (indexed end to end in {seconds:.0f} s: "
            f"{n_chunks / seconds:.1f} chunks/s)"
        )
        k = collection.k
        configs = [
            ("dense", "semantic", "rrf", False),
            ("BM25", "keyword", "rrf", False),
            ("hybrid RRF (0.7/0.3)", "hybrid", "rrf", False),
            ("hybrid weighted (0.7/0.3)", "hybrid", "weighted", False),
            ("hybrid RRF + rerank", "hybrid", "rrf", True),
            ("hybrid weighted + rerank", "hybrid", "weighted", True),
            ("auto routing, RRF + rerank", "auto", "rrf", True),
        ]
        rows += [
            "",
            f"| retrieval | recall@{k} | nDCG@{k} | success@1 | p50 ms |",
            "|---|---|---|---|---|",
        ]
        for label, mode, fusion, rerank in configs:
            settings = RagSettings(fusion=fusion, candidates=max(40, 4 * k), top_k=4 * k)
            retriever = Retriever(
                store=store,
                embedder=embedder,
                tokenizer=load_tokenizer(),
                settings=settings,
                reranker=FeatureBlendReranker(embedder=embedder) if rerank else None,
            )
            recalls, ndcgs, firsts, times = [], [], [], []
            for query_id, text in collection.queries:
                gains = collection.qrels.get(query_id, {})
                if not gains:
                    continue
                started = time.perf_counter()
                result = retriever.search(
                    query=text, knowledge_base="quality", caller=CALLER, mode=mode
                )
                times.append(time.perf_counter() - started)
                ranked = list(dict.fromkeys(c.record.doc_id for c in result.candidates))
                recalls.append(len(set(ranked[:k]) & set(gains)) / len(gains))
                ndcgs.append(ndcg(ranked, gains, k))
                firsts.append(1.0 if ranked[:1] and ranked[0] in gains else 0.0)
            p50 = float(np.percentile(np.asarray(times) * 1000, 50))
            rows.append(
                f"| {label} | {np.mean(recalls):.3f} | {np.mean(ndcgs):.3f} "
                f"| {np.mean(firsts):.3f} | {p50:.0f} |"
            )
        store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, nargs="*", default=[10_000])
    parser.add_argument("--latency-queries", dest="n_queries", type=int, default=200)
    parser.add_argument("--ann", action="store_true", help="also measure with a cosine ANN index")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--labelled", type=Path, default=LABELLED)
    parser.add_argument("--no-labelled", action="store_true")
    parser.add_argument("--cranfield", type=Path)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--queries", dest="queries_file", type=Path)
    parser.add_argument("--qrels", type=Path)
    args = parser.parse_args()
    embedder = NumpyMiniLMEmbedder()
    embedder.load()
    print(f"# bench.retrieval — {platform.machine()}, {platform.python_version()}\n")
    if not args.skip_latency:
        print("## Indexing stages\n")
        print("\n".join(indexing_stages(embedder)) + "\n")
        print("## Query latency\n")
        for n in args.chunks:
            print("\n".join(latency(n, args.n_queries, False, embedder)) + "\n")
            if args.ann:
                print("\n".join(latency(n, args.n_queries, True, embedder)) + "\n")
    collections = []
    if not args.no_labelled:
        collections.append(load_labelled(args.labelled))
    if args.cranfield:
        collections.append(load_cranfield(args.cranfield))
    if args.corpus and args.queries_file and args.qrels:
        collections.append(load_beir(args.corpus, args.queries_file, args.qrels))
    if collections:
        print("## Retrieval quality\n")
    for collection in collections:
        print("\n".join(quality(collection, embedder)) + "\n")


if __name__ == "__main__":
    main()
