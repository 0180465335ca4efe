"""Weaviate (weaviate-client v4): the production vector store, a server (docker-compose).

One Weaviate collection per knowledge-base collection, named `Sg_<name>` (Weaviate wants a
capitalised class name without dashes: `-` becomes `_`). Vectors are self-provided (the
embedding agent computes them), the HNSW index uses the cosine distance set explicitly, and
BM25 runs over the `text` property only (every other text property is `field`-tokenized and
not searchable, so an id or an ACL token can never match a keyword query).

Objects are keyed by a UUIDv5 of `<tenant_id>/<chunk_id>`, so an upsert of the same chunk
replaces it (Weaviate's batch import overwrites an existing UUID). Parents are stored without a
vector and with `searchable = false`. The permission filter is the `readers` property with
`contains_any`, pushed into every query; an empty token set short-circuits to no results.

`hybrid_search` exposes Weaviate's own fusion (alpha = dense weight, ranked or relative-score
fusion) for comparison; `processors/retrieval.py` fuses the two lists itself so both stores
rank the same way. The vector width of a collection is kept in its description, so a
mismatch is refused before the server sees it.

The tests run against a real server when `WEAVIATE_URL` is set (e.g. `http://127.0.0.1:8080`,
gRPC on 50051); `connect_to_embedded()` is not an option offline (it downloads a binary).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np

from sluicegate.connectors.vector_store import (
    ChunkRecord,
    CollectionNotFoundError,
    DimensionMismatchError,
    Hit,
    SearchFilter,
    VectorStoreError,
    check_collection_name,
)

_DIMENSIONS = re.compile(r"sluicegate dimensions=(\d+)")


def weaviate_name(collection: str) -> str:
    """The Weaviate collection name of a sluicegate collection."""
    return "Sg_" + check_collection_name(collection).replace("-", "_")


def object_uuid(tenant_id: str, chunk_id: str) -> str:
    from weaviate.util import generate_uuid5

    return str(generate_uuid5(f"{tenant_id}/{chunk_id}"))


def collection_properties() -> list[Any]:
    from weaviate.classes.config import DataType, Property, Tokenization

    def exact(name: str, data_type: DataType = DataType.TEXT, filterable: bool = True) -> Property:
        return Property(
            name=name,
            data_type=data_type,
            tokenization=Tokenization.FIELD,
            index_searchable=False,
            index_filterable=filterable,
        )

    return [
        Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
        exact("chunk_id"),
        exact("doc_id"),
        exact("tenant_id"),
        exact("readers", DataType.TEXT_ARRAY),
        exact("tags", DataType.TEXT_ARRAY),
        exact("acl", DataType.TEXT_ARRAY, filterable=False),
        exact("title", filterable=False),
        exact("source_uri", filterable=False),
        exact("section", filterable=False),
        exact("parent_id"),
        exact("metadata_json", filterable=False),
        exact("embedding_model"),
        Property(name="searchable", data_type=DataType.BOOL),
        Property(name="ordinal", data_type=DataType.INT),
        Property(name="start", data_type=DataType.INT, index_filterable=False),
        Property(name="end", data_type=DataType.INT, index_filterable=False),
    ]


def weaviate_filter(where: SearchFilter, *, searchable_only: bool = True) -> Any | None:
    """The filter as Weaviate `Filter`s; None means "no filter" (unrestricted, no conditions).

    Call only with a non-empty `readers` (or None): an empty set must short-circuit to no
    results, which `contains_any([])` cannot express.
    """
    from weaviate.classes.query import Filter

    conditions = []
    if searchable_only:
        conditions.append(Filter.by_property("searchable").equal(True))
    if where.readers is not None:
        conditions.append(Filter.by_property("readers").contains_any(sorted(where.readers)))
    if where.doc_ids:
        conditions.append(Filter.by_property("doc_id").contains_any(list(where.doc_ids)))
    if where.tags:
        conditions.append(Filter.by_property("tags").contains_all(where.tags))
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else Filter.all_of(conditions)


def record_properties(record: ChunkRecord) -> dict[str, Any]:
    return {
        "chunk_id": record.chunk_id,
        "doc_id": record.doc_id,
        "tenant_id": record.tenant_id,
        "text": record.text,
        "searchable": record.vector is not None,
        "acl": list(record.acl),
        "readers": sorted(record.readers),
        "tags": record.tags,
        "title": record.title or "",
        "source_uri": record.source_uri or "",
        "section": record.section,
        "ordinal": record.ordinal,
        "start": record.start,
        "end": record.end,
        "parent_id": record.parent_id or "",
        "metadata_json": json.dumps(dict(record.metadata), sort_keys=True),
        "embedding_model": record.embedding_model,
    }


def record_from(properties: dict[str, Any], vector: Any) -> ChunkRecord:
    """A stored object back into a record (`vector`: the object's `.vector` mapping or list)."""
    if isinstance(vector, dict):
        vector = vector.get("default")
    searchable = bool(properties.get("searchable"))
    return ChunkRecord(
        chunk_id=properties["chunk_id"],
        doc_id=properties["doc_id"],
        tenant_id=properties["tenant_id"],
        text=properties.get("text") or "",
        vector=np.asarray(vector, dtype=np.float32) if searchable and vector else None,
        acl=tuple(properties.get("acl") or ()),
        title=properties.get("title") or None,
        source_uri=properties.get("source_uri") or None,
        section=properties.get("section") or "",
        ordinal=int(properties.get("ordinal") or 0),
        start=int(properties.get("start") or 0),
        end=int(properties.get("end") or 0),
        parent_id=properties.get("parent_id") or None,
        metadata=json.loads(properties.get("metadata_json") or "{}"),
        embedding_model=properties.get("embedding_model") or "",
    )


class WeaviateVectorStore:
    """The `VectorStore` port on a Weaviate server."""

    def __init__(
        self,
        *,
        url: str | None = None,
        grpc_port: int = 50051,
        api_key: str | None = None,
        client: Any = None,
        timeout_s: float = 30.0,
    ) -> None:
        if client is None:
            if not url:
                raise ValueError("WeaviateVectorStore needs a url or a client")
            client = _connect(url, grpc_port=grpc_port, api_key=api_key, timeout_s=timeout_s)
        self._client = client
        self._dimensions: dict[str, int] = {}

    # -- collections ----------------------------------------------------------------------

    def _collection(self, collection: str) -> Any:
        name = weaviate_name(collection)
        if collection not in self._dimensions:
            with _translated(collection):
                if not self._client.collections.exists(name):
                    raise CollectionNotFoundError(collection)
                config = self._client.collections.get(name).config.get(simple=True)
            match = _DIMENSIONS.search(config.description or "")
            self._dimensions[collection] = int(match.group(1)) if match else 0
        return self._client.collections.get(name)

    def ensure_collection(self, collection: str, *, dimensions: int) -> None:
        from weaviate.classes.config import Configure, VectorDistances

        name = weaviate_name(collection)
        with _translated(collection):
            if not self._client.collections.exists(name):
                self._client.collections.create(
                    name,
                    description=f"sluicegate dimensions={dimensions}",
                    properties=collection_properties(),
                    vector_config=Configure.Vectors.self_provided(
                        vector_index_config=Configure.VectorIndex.hnsw(
                            distance_metric=VectorDistances.COSINE
                        )
                    ),
                )
        self._collection(collection)
        have = self._dimensions[collection]
        if have and have != dimensions:
            raise DimensionMismatchError(collection, expected=have, got=dimensions)

    def drop_collection(self, collection: str) -> None:
        self._dimensions.pop(collection, None)
        with _translated(collection):
            self._client.collections.delete(weaviate_name(collection))

    def count(self, collection: str) -> int:
        with _translated(collection):
            result = self._collection(collection).aggregate.over_all(total_count=True)
        return int(result.total_count or 0)

    def close(self) -> None:
        self._client.close()

    # -- writes ---------------------------------------------------------------------------

    def upsert(self, collection: str, records: Sequence[ChunkRecord]) -> int:
        from weaviate.classes.data import DataObject

        if not records:
            return 0
        vectors = [r.vector for r in records if r.vector is not None]
        try:
            target = self._collection(collection)
        except CollectionNotFoundError:
            if not vectors:
                raise VectorStoreError(
                    "first upsert needs a vector", collection=collection, retriable=False
                ) from None
            self.ensure_collection(collection, dimensions=len(vectors[0]))
            target = self._collection(collection)
        expected = self._dimensions[collection]
        for vector in vectors:
            if expected and len(vector) != expected:
                raise DimensionMismatchError(collection, expected=expected, got=len(vector))
        objects = [
            DataObject(
                properties=record_properties(r),
                uuid=object_uuid(r.tenant_id, r.chunk_id),
                vector=None if r.vector is None else np.asarray(r.vector, np.float32).tolist(),
            )
            for r in records
        ]
        with _translated(collection):
            result = target.data.insert_many(objects)
        if result.has_errors:
            first = next(iter(result.errors.values()))
            raise VectorStoreError(
                f"{len(result.errors)} of {len(objects)} objects failed: {first.message}",
                collection=collection,
            )
        return len(records)

    def delete_document(self, collection: str, *, tenant_id: str, doc_id: str) -> int:
        from weaviate.classes.query import Filter

        where = Filter.all_of(
            [
                Filter.by_property("tenant_id").equal(tenant_id),
                Filter.by_property("doc_id").equal(doc_id),
            ]
        )
        with _translated(collection):
            result = self._collection(collection).data.delete_many(where=where)
        return int(result.successful)

    # -- reads ----------------------------------------------------------------------------

    def _check_query(self, collection: str, vector: np.ndarray) -> Any:
        target = self._collection(collection)
        expected = self._dimensions[collection]
        if expected and len(vector) != expected:
            raise DimensionMismatchError(collection, expected=expected, got=len(vector))
        return target

    def dense_search(
        self, collection: str, vector: np.ndarray, *, top_k: int, where: SearchFilter
    ) -> list[Hit]:
        from weaviate.classes.query import MetadataQuery

        target = self._check_query(collection, vector)
        if where.readers is not None and not where.readers:
            return []
        with _translated(collection):
            result = target.query.near_vector(
                near_vector=np.asarray(vector, np.float32).tolist(),
                limit=top_k,
                filters=weaviate_filter(where),
                include_vector=True,
                return_metadata=MetadataQuery(distance=True),
            )
        return [
            Hit(record_from(o.properties, o.vector), 1.0 - float(o.metadata.distance), rank)
            for rank, o in enumerate(result.objects, 1)
        ]

    def keyword_search(
        self, collection: str, query: str, *, top_k: int, where: SearchFilter
    ) -> list[Hit]:
        from weaviate.classes.query import MetadataQuery

        target = self._collection(collection)
        if not query.strip() or (where.readers is not None and not where.readers):
            return []
        with _translated(collection):
            result = target.query.bm25(
                query=query,
                query_properties=["text"],
                limit=top_k,
                filters=weaviate_filter(where),
                include_vector=True,
                return_metadata=MetadataQuery(score=True),
            )
        return [
            Hit(record_from(o.properties, o.vector), float(o.metadata.score or 0.0), rank)
            for rank, o in enumerate(result.objects, 1)
        ]

    def hybrid_search(
        self,
        collection: str,
        query: str,
        vector: np.ndarray,
        *,
        top_k: int,
        where: SearchFilter,
        alpha: float = 0.7,
        fusion: Literal["ranked", "relative"] = "ranked",
    ) -> list[Hit]:
        """Weaviate's own fusion of BM25 and dense (alpha = dense weight)."""
        from weaviate.classes.query import HybridFusion, MetadataQuery

        target = self._check_query(collection, vector)
        if where.readers is not None and not where.readers:
            return []
        fusion_type = HybridFusion.RANKED if fusion == "ranked" else HybridFusion.RELATIVE_SCORE
        with _translated(collection):
            result = target.query.hybrid(
                query=query,
                vector=np.asarray(vector, np.float32).tolist(),
                alpha=alpha,
                fusion_type=fusion_type,
                query_properties=["text"],
                limit=top_k,
                filters=weaviate_filter(where),
                include_vector=True,
                return_metadata=MetadataQuery(score=True),
            )
        return [
            Hit(record_from(o.properties, o.vector), float(o.metadata.score or 0.0), rank)
            for rank, o in enumerate(result.objects, 1)
        ]

    def fetch(
        self,
        collection: str,
        chunk_ids: Sequence[str],
        *,
        tenant_id: str,
        where: SearchFilter,
    ) -> list[ChunkRecord]:
        from weaviate.classes.query import Filter

        target = self._collection(collection)
        if not chunk_ids or (where.readers is not None and not where.readers):
            return []
        wanted = list(dict.fromkeys(chunk_ids))
        conditions = [
            Filter.by_property("tenant_id").equal(tenant_id),
            Filter.by_property("chunk_id").contains_any(wanted),
        ]
        access = weaviate_filter(where, searchable_only=False)
        if access is not None:
            conditions.append(access)
        with _translated(collection):
            result = target.query.fetch_objects(
                filters=Filter.all_of(conditions), limit=len(wanted), include_vector=True
            )
        return [record_from(o.properties, o.vector) for o in result.objects]


def _connect(url: str, *, grpc_port: int, api_key: str | None, timeout_s: float) -> Any:
    import weaviate
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout

    parsed = urlparse(url)
    secure = parsed.scheme == "https"
    host = parsed.hostname or "127.0.0.1"
    try:
        return weaviate.connect_to_custom(
            http_host=host,
            http_port=parsed.port or (443 if secure else 8080),
            http_secure=secure,
            grpc_host=host,
            grpc_port=grpc_port,
            grpc_secure=secure,
            auth_credentials=Auth.api_key(api_key) if api_key else None,
            additional_config=AdditionalConfig(
                timeout=Timeout(init=timeout_s, query=timeout_s, insert=timeout_s)
            ),
        )
    except Exception as exc:  # connection, auth and startup checks all raise differently
        raise VectorStoreError(f"cannot connect to Weaviate at {url}: {exc}") from exc


class _translated:
    """Vendor exceptions become `VectorStoreError` here, in one place (httpx-style)."""

    def __init__(self, collection: str) -> None:
        self._collection = collection

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        from weaviate.exceptions import WeaviateBaseError

        if exc is not None and isinstance(exc, WeaviateBaseError):
            raise VectorStoreError(str(exc), collection=self._collection) from exc
        return False
