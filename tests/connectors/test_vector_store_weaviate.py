"""Weaviate passes the vector-store contract against a real server (WEAVIATE_URL).

Without WEAVIATE_URL the server tests are skipped with that reason; the pure translation
helpers (names, filters, properties) are checked either way.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from sluicegate.connectors.vector_store import Caller, ChunkRecord, SearchFilter, VectorStoreError
from sluicegate.connectors.vector_weaviate import (
    WeaviateVectorStore,
    object_uuid,
    record_from,
    record_properties,
    weaviate_filter,
    weaviate_name,
)
from tests.connectors.vector_store_contract import VectorStoreContract

WEAVIATE_URL = os.environ.get("WEAVIATE_URL")
needs_server = pytest.mark.skipif(
    not WEAVIATE_URL, reason="WEAVIATE_URL is not set: no Weaviate server to test against"
)


@pytest.fixture(scope="module")
def weaviate_store():
    store = WeaviateVectorStore(
        url=WEAVIATE_URL, grpc_port=int(os.environ.get("WEAVIATE_GRPC_PORT", "50051"))
    )
    yield store
    store.close()


@needs_server
@pytest.mark.integration
class TestWeaviate(VectorStoreContract):
    @pytest.fixture
    def store(self, weaviate_store) -> WeaviateVectorStore:
        return weaviate_store

    @pytest.fixture
    def collection(self, weaviate_store) -> str:
        name = f"kb_{uuid.uuid4().hex[:8]}"
        yield name
        weaviate_store.drop_collection(name)

    def test_native_hybrid(self, store, collection) -> None:
        self.seed(store, collection)
        hits = store.hybrid_search(
            collection,
            "ERR-7731",
            np.asarray([0, 1, 0, 0], np.float32),
            top_k=3,
            where=SearchFilter.for_caller(Caller(tenant_id="acme")),
        )
        assert hits[0].record.chunk_id == "guide#c1"


@pytest.mark.unit
def test_names_uuids_and_filters() -> None:
    assert weaviate_name("docs-main") == "Sg_docs_main"
    with pytest.raises(VectorStoreError):
        weaviate_name("bad name!")
    assert object_uuid("acme", "d#c0") == object_uuid("acme", "d#c0")
    assert object_uuid("acme", "d#c0") != object_uuid("globex", "d#c0")
    assert weaviate_filter(SearchFilter.unrestricted(), searchable_only=False) is None
    assert weaviate_filter(SearchFilter.for_caller(Caller(tenant_id="acme"))) is not None


@pytest.mark.unit
def test_properties_round_trip() -> None:
    record = ChunkRecord(
        chunk_id="d#c1",
        doc_id="d",
        tenant_id="acme",
        text="hello",
        vector=np.asarray([0.5, 0.5], np.float32),
        acl=("role:admin",),
        metadata={"lang": "en"},
        start=3,
        end=8,
        parent_id="d#p0",
    )
    properties = record_properties(record)
    assert properties["readers"] == ["acme/role:admin"] and properties["tags"] == ["lang=en"]
    back = record_from(properties, {"default": [0.5, 0.5]})
    assert (back.chunk_id, back.parent_id, back.acl, dict(back.metadata)) == (
        "d#c1",
        "d#p0",
        ("role:admin",),
        {"lang": "en"},
    )
    assert back.vector is not None and back.vector.tolist() == [0.5, 0.5]
    parent = record_from({**properties, "searchable": False}, None)
    assert parent.is_parent
