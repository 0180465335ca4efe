"""The behaviour every `VectorStore` adapter must show (haystack-style contract mixin).

Mix `VectorStoreContract` into a test class that provides two fixtures: `store` (an adapter)
and `collection` (a fresh collection name). Vectors are 4-d and chosen so that cosine and L2
disagree: an adapter that forgot to set the cosine metric fails `test_dense_uses_cosine`.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from sluicegate.connectors.vector_store import (
    Caller,
    ChunkRecord,
    CollectionNotFoundError,
    DimensionMismatchError,
    InvalidAclError,
    SearchFilter,
    VectorStore,
)

ACME = Caller(tenant_id="acme", subject="alice", roles=frozenset({"engineer"}))
ACME_ADMIN = Caller(tenant_id="acme", subject="root", roles=frozenset({"admin"}))
GLOBEX = Caller(tenant_id="globex", subject="bob", roles=frozenset({"admin"}))


def vec(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def record(chunk_id: str, text: str, vector: np.ndarray | None, **fields) -> ChunkRecord:
    fields.setdefault("doc_id", chunk_id.split("#")[0])
    fields.setdefault("tenant_id", "acme")
    return ChunkRecord(chunk_id=chunk_id, text=text, vector=vector, **fields)


def ids(hits) -> list[str]:
    return [h.record.chunk_id for h in hits]


class VectorStoreContract:
    """Tests every adapter inherits; see the module docstring for the fixtures."""

    def seed(self, store: VectorStore, collection: str) -> None:
        store.upsert(
            collection,
            [
                record("guide#c0", "Descale the kettle with vinegar every four weeks.",
                       vec(1, 0, 0, 0), title="Kettle guide", section="Descaling",
                       metadata={"lang": "en", "kind": "guide"}, start=0, end=48,
                       source_uri="file:///guide.md", embedding_model="test-4d"),
                record("guide#c1", "Error code ERR-7731 means the filter is blocked.",
                       vec(0, 1, 0, 0), metadata={"lang": "en", "kind": "guide"}),
                record("secret#c0", "Descale the kettle: the admin-only board minutes.",
                       vec(1, 0.01, 0, 0), acl=("role:admin",), metadata={"lang": "en"}),
                record("shared#c0", "A kettle handbook shared with globex.",
                       vec(0, 0, 1, 0), acl=("tenant:globex", "tenant:acme")),
                record("fr#c0", "Détartrer la bouilloire au vinaigre.",
                       vec(0.7, 0.7, 0, 0), metadata={"lang": "fr"}),
            ],
        )  # fmt: skip

    def test_upsert_count_and_replace(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        assert store.count(collection) == 5
        store.upsert(collection, [record("guide#c1", "Replaced text.", vec(0, 1, 0, 0))])
        assert store.count(collection) == 5
        [got] = store.fetch(
            collection, ["guide#c1"], tenant_id="acme", where=SearchFilter.for_caller(ACME)
        )
        assert got.text == "Replaced text."

    def test_record_round_trips(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        [got] = store.fetch(
            collection, ["guide#c0"], tenant_id="acme", where=SearchFilter.for_caller(ACME)
        )
        assert (got.doc_id, got.tenant_id, got.title, got.section) == (
            "guide", "acme", "Kettle guide", "Descaling"
        )  # fmt: skip
        assert (got.start, got.end, got.source_uri) == (0, 48, "file:///guide.md")
        assert dict(got.metadata) == {"lang": "en", "kind": "guide"}
        assert got.embedding_model == "test-4d"
        assert got.vector is not None and np.allclose(got.vector, [1, 0, 0, 0])

    def test_dense_is_best_first(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        hits = store.dense_search(
            collection, vec(0, 1, 0, 0), top_k=2, where=SearchFilter.for_caller(ACME)
        )
        assert ids(hits) == ["guide#c1", "fr#c0"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].score > hits[1].score and [h.rank for h in hits] == [1, 2]

    def test_dense_uses_cosine(self, store: VectorStore, collection: str) -> None:
        store.upsert(
            collection,
            [
                record("far#c0", "long vector, same direction", vec(100, 1, 0, 0)),
                record("near#c0", "short vector, other direction", vec(0.6, 0.8, 0, 0)),
            ],
        )
        hits = store.dense_search(
            collection, vec(1, 0, 0, 0), top_k=2, where=SearchFilter.for_caller(ACME)
        )
        # By L2 distance near#c0 (0.89) beats far#c0 (99); by cosine far#c0 (~1.0) wins.
        assert ids(hits) == ["far#c0", "near#c0"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[1].score == pytest.approx(0.6, abs=1e-3)

    def test_keyword_finds_a_rare_exact_term(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        hits = store.keyword_search(
            collection, "ERR-7731", top_k=3, where=SearchFilter.for_caller(ACME)
        )
        assert ids(hits)[:1] == ["guide#c1"]
        assert all(a.score >= b.score for a, b in pairwise(hits))

    def test_keyword_query_syntax_is_not_interpreted(
        self, store: VectorStore, collection: str
    ) -> None:
        self.seed(store, collection)
        where = SearchFilter.for_caller(ACME)
        for query in ['"vinegar', "kettle AND (", "title:kettle*", "O'Brien's"]:
            store.keyword_search(collection, query, top_k=3, where=where)  # must not raise
        assert store.keyword_search(collection, "   ", top_k=3, where=where) == []

    def test_acl_excludes_the_best_match(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        query = vec(1, 0.01, 0, 0)  # exactly the admin-only chunk
        engineer = store.dense_search(
            collection, query, top_k=5, where=SearchFilter.for_caller(ACME)
        )
        admin = store.dense_search(
            collection, query, top_k=5, where=SearchFilter.for_caller(ACME_ADMIN)
        )
        assert "secret#c0" not in ids(engineer)
        assert ids(admin)[0] == "secret#c0"
        keyword = store.keyword_search(
            collection, "admin-only board minutes", top_k=5, where=SearchFilter.for_caller(ACME)
        )
        assert "secret#c0" not in ids(keyword)

    def test_roles_do_not_cross_tenants(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        where = SearchFilter.for_caller(GLOBEX)  # an admin, but of another tenant
        dense = store.dense_search(collection, vec(1, 0.01, 0, 0), top_k=5, where=where)
        keyword = store.keyword_search(collection, "kettle", top_k=5, where=where)
        assert ids(dense) == ["shared#c0"]
        assert ids(keyword) == ["shared#c0"]

    def test_same_chunk_id_in_two_tenants(self, store: VectorStore, collection: str) -> None:
        store.upsert(
            collection,
            [
                record("doc#c0", "acme's copy", vec(1, 0, 0, 0), tenant_id="acme"),
                record("doc#c0", "globex's copy", vec(1, 0, 0, 0), tenant_id="globex"),
            ],
        )
        assert store.count(collection) == 2
        hits = store.dense_search(
            collection, vec(1, 0, 0, 0), top_k=5, where=SearchFilter.for_caller(GLOBEX)
        )
        assert [h.record.text for h in hits] == ["globex's copy"]
        assert store.delete_document(collection, tenant_id="acme", doc_id="doc") == 1
        assert store.count(collection) == 1

    def test_empty_readers_match_nothing(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        nobody = SearchFilter(readers=frozenset())
        assert store.dense_search(collection, vec(1, 0, 0, 0), top_k=5, where=nobody) == []
        assert store.keyword_search(collection, "kettle", top_k=5, where=nobody) == []
        everyone = SearchFilter.unrestricted()
        assert len(store.dense_search(collection, vec(1, 0, 0, 0), top_k=9, where=everyone)) == 5

    def test_doc_and_metadata_filters(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        french = SearchFilter.for_caller(ACME, metadata={"lang": "fr"})
        assert ids(store.dense_search(collection, vec(1, 0, 0, 0), top_k=5, where=french)) == [
            "fr#c0"
        ]
        guide = SearchFilter.for_caller(ACME, doc_ids=["guide"], metadata={"kind": "guide"})
        got = store.keyword_search(collection, "kettle filter", top_k=5, where=guide)
        assert set(ids(got)) <= {"guide#c0", "guide#c1"} and got

    def test_parents_are_fetched_never_searched(self, store: VectorStore, collection: str) -> None:
        store.upsert(
            collection,
            [
                record("book#p0", "Parent: the whole kettle chapter.", None),
                record("book#c0", "Child about the kettle.", vec(1, 0, 0, 0), parent_id="book#p0"),
            ],
        )
        where = SearchFilter.for_caller(ACME)
        assert ids(store.dense_search(collection, vec(1, 0, 0, 0), top_k=5, where=where)) == [
            "book#c0"
        ]
        assert ids(store.keyword_search(collection, "chapter kettle", top_k=5, where=where)) == [
            "book#c0"
        ]
        [parent] = store.fetch(collection, ["book#p0"], tenant_id="acme", where=where)
        assert parent.is_parent and parent.vector is None
        assert store.fetch(collection, ["book#p0"], tenant_id="globex", where=where) == []

    def test_fetch_applies_the_acl(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        wanted = ["secret#c0", "guide#c0", "missing#c9"]
        got = store.fetch(collection, wanted, tenant_id="acme", where=SearchFilter.for_caller(ACME))
        assert ids_of(got) == {"guide#c0"}

    def test_delete_document(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        assert store.delete_document(collection, tenant_id="acme", doc_id="guide") == 2
        assert store.delete_document(collection, tenant_id="acme", doc_id="guide") == 0
        hits = store.keyword_search(
            collection, "ERR-7731", top_k=5, where=SearchFilter.unrestricted()
        )
        assert "guide#c1" not in ids(hits)
        assert store.count(collection) == 3

    def test_a_deleted_document_is_never_found_and_can_come_back(
        self, store: VectorStore, collection: str
    ) -> None:
        self.seed(store, collection)
        everyone = SearchFilter.unrestricted()
        store.delete_document(collection, tenant_id="acme", doc_id="guide")
        dense = store.dense_search(collection, vec(0, 1, 0, 0), top_k=9, where=everyone)
        keyword = store.keyword_search(collection, "ERR-7731 kettle", top_k=9, where=everyone)
        gone = store.fetch(collection, ["guide#c0", "guide#c1"], tenant_id="acme", where=everyone)
        assert not [h for h in dense + keyword if h.record.doc_id == "guide"] and gone == []
        assert store.delete_document(collection, tenant_id="globex", doc_id="shared") == 0
        store.upsert(collection, [record("guide#c0", "ERR-7731 is back.", vec(0, 1, 0, 0))])
        back = store.keyword_search(collection, "ERR-7731", top_k=9, where=everyone)
        assert ids(back) == ["guide#c0"]
        assert ids(store.dense_search(collection, vec(0, 1, 0, 0), top_k=1, where=everyone)) == [
            "guide#c0"
        ]

    def test_dimension_mismatch(self, store: VectorStore, collection: str) -> None:
        self.seed(store, collection)
        with pytest.raises(DimensionMismatchError):
            store.upsert(collection, [record("x#c0", "three dims", vec(1, 0, 0))])
        with pytest.raises(DimensionMismatchError):
            store.dense_search(collection, vec(1, 0, 0), top_k=1, where=SearchFilter.unrestricted())

    def test_invalid_acl_is_refused(self, store: VectorStore, collection: str) -> None:
        with pytest.raises(InvalidAclError):
            store.upsert(collection, [record("x#c0", "t", vec(1, 0, 0, 0), acl=("admins",))])

    def test_unknown_collection(self, store: VectorStore, collection: str) -> None:
        with pytest.raises(CollectionNotFoundError):
            store.dense_search(
                collection, vec(1, 0, 0, 0), top_k=1, where=SearchFilter.for_caller(ACME)
            )
        self.seed(store, collection)
        store.drop_collection(collection)
        with pytest.raises(CollectionNotFoundError):
            store.count(collection)


def ids_of(records) -> set[str]:
    return {r.chunk_id for r in records}
