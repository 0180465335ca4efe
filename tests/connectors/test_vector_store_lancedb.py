"""LanceDB (the embedded default) passes the vector-store contract; plus its own details."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from sluicegate.connectors.vector_lancedb import LanceDBVectorStore, where_sql
from sluicegate.connectors.vector_store import Caller, SearchFilter
from tests.connectors.vector_store_contract import VectorStoreContract, record, vec

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def lance_store(tmp_path_factory) -> LanceDBVectorStore:
    return LanceDBVectorStore(path=tmp_path_factory.mktemp("lancedb"), read_consistency_s=None)


class TestLanceDB(VectorStoreContract):
    @pytest.fixture
    def store(self, lance_store) -> LanceDBVectorStore:
        return lance_store

    @pytest.fixture
    def collection(self, lance_store) -> str:
        name = f"kb_{uuid.uuid4().hex[:8]}"
        yield name
        lance_store.drop_collection(name)


def test_filter_sql_quotes_values_and_fails_closed() -> None:
    caller = Caller(tenant_id="acme", subject="o'brien")
    sql = where_sql(SearchFilter.for_caller(caller, doc_ids=["a'b"], metadata={"k": "v"}))
    assert "'acme/user:o''brien'" in sql and "('a''b')" in sql
    assert "array_has_all(tags, ['k=v'])" in sql
    assert where_sql(SearchFilter(readers=frozenset())).endswith("AND false")
    assert where_sql(SearchFilter.unrestricted(), searchable_only=False) == "true"


def test_rows_written_after_the_index_are_searchable(tmp_path) -> None:
    store = LanceDBVectorStore(path=tmp_path, optimize_every_rows=3, read_consistency_s=None)
    where = SearchFilter.unrestricted()
    store.upsert("kb", [record(f"d{i}#c0", f"filler text {i}", vec(1, i, 0, 0)) for i in range(3)])
    # The third row triggered optimize(): indices are current. The next rows are unindexed.
    store.upsert("kb", [record("late#c0", "a zeppelin arrives late", vec(0, 0, 0, 1))])
    assert [
        h.record.chunk_id for h in store.keyword_search("kb", "zeppelin", top_k=3, where=where)
    ] == ["late#c0"]
    hits = store.dense_search("kb", np.asarray([0, 0, 0, 1.0]), top_k=1, where=where)
    assert hits[0].record.chunk_id == "late#c0"


def test_a_second_store_on_the_same_path_sees_the_data(tmp_path) -> None:
    LanceDBVectorStore(path=tmp_path).upsert("kb", [record("a#c0", "persisted", vec(1, 0, 0, 0))])
    reopened = LanceDBVectorStore(path=tmp_path)
    assert reopened.count("kb") == 1


def test_build_vector_store_from_settings(tmp_path) -> None:
    from sluicegate.connectors.vector_store import VectorStore, build_vector_store
    from sluicegate.settings import RagSettings

    store = build_vector_store(RagSettings(path=tmp_path / "lance"))
    assert isinstance(store, LanceDBVectorStore) and isinstance(store, VectorStore)
    store.upsert("kb", [record("a#c0", "built from settings", vec(1, 0, 0, 0))])
    assert (tmp_path / "lance").is_dir()


def test_a_deletion_holds_in_the_indices_before_and_after_they_are_rebuilt(tmp_path) -> None:
    store = LanceDBVectorStore(path=tmp_path, optimize_every_rows=3, read_consistency_s=None)
    where = SearchFilter.unrestricted()
    store.upsert(
        "kb", [record(f"d{i}#c0", f"zeppelin hangar {i}", vec(1, i, 0, 0)) for i in range(3)]
    )
    # The third row built the full-text index: d1's row is in it when it is deleted.
    assert store.delete_document("kb", tenant_id="acme", doc_id="d1") == 1

    def found() -> set[str]:
        keyword = store.keyword_search("kb", "zeppelin hangar", top_k=5, where=where)
        dense = store.dense_search("kb", np.asarray([1, 1, 0, 0.0]), top_k=5, where=where)
        return {h.record.doc_id for h in keyword + dense}

    assert found() == {"d0", "d2"}
    store.optimize("kb")
    assert found() == {"d0", "d2"}
