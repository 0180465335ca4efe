"""The vector-store port: chunks with vectors, metadata and ACLs, searched densely and by BM25.

One collection per knowledge base. Two adapters pass the same contract
(tests/connectors/vector_store_contract.py): `LanceDBVectorStore` (connectors/vector_lancedb.py,
the embedded default on local disk) and `WeaviateVectorStore` (connectors/vector_weaviate.py),
plus `InMemoryVectorStore` here, the fake the retrieval tests run on.

Permissions are part of the port, not an afterthought of the caller: every search and fetch
takes a `SearchFilter`, which each adapter pushes down into its query so the top-k is filled
with chunks the caller may read (a post-filter could return nothing while readable chunks
exist). `SearchFilter.admits` is the same predicate in Python; retrieval re-checks every hit
with it, so a store bug or a stale index cannot leak a chunk.

ACL grammar (DocumentSubmitted.acl, copied to every chunk):

    (empty)           everyone in the owning tenant
    tenant:<id>       everyone in tenant <id> (the only entry that reaches across tenants)
    role:<name>       callers of the owning tenant who hold the role
    group:<name>      callers of the owning tenant in the group
    user:<subject>    that caller (API-key id or JWT subject) of the owning tenant

Each chunk stores the *reader tokens* its ACL grants (`readers_for`), each caller has the tokens
it holds (`Caller.reader_tokens`), and a chunk is readable iff the two sets meet — one
set-intersection predicate every store can index (LanceDB `array_has_any`, Weaviate
`contains_any`). Roles, groups and users are scoped to the owning tenant, so `role:admin` on
acme's document never admits another tenant's admin.

Errors: `VectorStoreError` (retriable) ⊃ `CollectionNotFoundError`, `DimensionMismatchError`;
`InvalidAclError` for an ACL entry outside the grammar (ingestion refuses the document).
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from sluicegate.errors import SluicegateError

if TYPE_CHECKING:
    from sluicegate.settings import RagSettings

COLLECTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_ACL_KINDS = ("tenant", "role", "group", "user")


# -- errors -----------------------------------------------------------------------------------


class VectorStoreError(SluicegateError):
    """The vector store refused an operation or could not be reached."""

    def __init__(
        self, message: str, *, collection: str | None = None, retriable: bool = True
    ) -> None:
        super().__init__(message)
        self.collection = collection
        self.retriable = retriable


class CollectionNotFoundError(VectorStoreError):
    def __init__(self, collection: str) -> None:
        super().__init__(f"no collection {collection!r}", collection=collection, retriable=False)


class DimensionMismatchError(VectorStoreError):
    def __init__(self, collection: str, *, expected: int, got: int) -> None:
        super().__init__(
            f"collection {collection!r} holds {expected}-d vectors, got {got}-d",
            collection=collection,
            retriable=False,
        )
        self.expected = expected
        self.got = got


class InvalidAclError(SluicegateError, ValueError):
    """An ACL entry outside the grammar; refusing it is safer than guessing what it meant."""

    def __init__(self, entry: str) -> None:
        super().__init__(f"ACL entry {entry!r} is not tenant:, role:, group: or user:<name>")
        self.entry = entry


def check_collection_name(name: str) -> str:
    """Names both stores accept: a letter, then letters, digits, `_` or `-` (≤ 63)."""
    if not COLLECTION_NAME.match(name):
        raise VectorStoreError(f"bad collection name {name!r}", collection=name, retriable=False)
    return name


# -- permissions ------------------------------------------------------------------------------


def readers_for(tenant_id: str, acl: Iterable[str]) -> frozenset[str]:
    """The reader tokens an ACL grants on a chunk owned by `tenant_id`."""
    tokens = set()
    for entry in acl:
        kind, sep, name = entry.strip().partition(":")
        if not sep or kind not in _ACL_KINDS or not name:
            raise InvalidAclError(entry)
        tokens.add(f"tenant:{name}" if kind == "tenant" else f"{tenant_id}/{kind}:{name}")
    return frozenset(tokens) if tokens else frozenset({f"tenant:{tenant_id}"})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as document ACLs care: tenant, subject, roles, groups."""

    tenant_id: str
    subject: str | None = None
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def reader_tokens(self) -> frozenset[str]:
        t = self.tenant_id
        tokens = {f"tenant:{t}"}
        tokens |= {f"{t}/role:{r}" for r in self.roles}
        tokens |= {f"{t}/group:{g}" for g in self.groups}
        if self.subject:
            tokens.add(f"{t}/user:{self.subject}")
        return frozenset(tokens)

    @classmethod
    def from_principal(cls, principal: Any, *, groups_attribute: str = "groups") -> Caller:
        """From `processors.identity.Principal`; groups from a comma-separated attribute."""
        raw = principal.attributes.get(groups_attribute, "") if principal.attributes else ""
        groups = frozenset(g.strip() for g in raw.split(",") if g.strip())
        return cls(
            tenant_id=principal.tenant_id,
            subject=principal.subject,
            roles=frozenset(principal.roles),
            groups=groups,
        )


# -- records and queries ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class ChunkRecord:
    """One stored chunk. `vector` is None for a parent chunk, which is fetched, never searched.

    `start`/`end` are character offsets in the document's text, for citations.
    """

    chunk_id: str
    doc_id: str
    tenant_id: str
    text: str
    vector: np.ndarray | None
    acl: tuple[str, ...] = ()
    title: str | None = None
    source_uri: str | None = None
    section: str = ""
    ordinal: int = 0
    start: int = 0
    end: int = 0
    parent_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    embedding_model: str = ""

    @property
    def is_parent(self) -> bool:
        return self.vector is None

    @property
    def key(self) -> str:
        """Unique within a collection: chunk ids are unique per tenant only."""
        return f"{self.tenant_id}/{self.chunk_id}"

    @property
    def readers(self) -> frozenset[str]:
        return readers_for(self.tenant_id, self.acl)

    @property
    def tags(self) -> list[str]:
        """Metadata as `key=value` strings: what metadata filters match on in every store."""
        return sorted(f"{k}={v}" for k, v in self.metadata.items())


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result: higher `score` is better (cosine similarity, or BM25); `rank` from 1."""

    record: ChunkRecord
    score: float
    rank: int


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What a search may return. Build it with `for_caller` (or `unrestricted` for admin
    tooling); `readers=None` is the only way to skip the permission check, so forgetting the
    caller fails closed (an empty token set matches nothing)."""

    readers: frozenset[str] | None
    doc_ids: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_caller(
        cls,
        caller: Caller,
        *,
        doc_ids: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> SearchFilter:
        return cls(
            readers=caller.reader_tokens(), doc_ids=tuple(doc_ids), metadata=dict(metadata or {})
        )

    @classmethod
    def unrestricted(
        cls, *, doc_ids: Sequence[str] = (), metadata: Mapping[str, str] | None = None
    ) -> SearchFilter:
        return cls(readers=None, doc_ids=tuple(doc_ids), metadata=dict(metadata or {}))

    @property
    def tags(self) -> list[str]:
        return sorted(f"{k}={v}" for k, v in self.metadata.items())

    def admits(self, record: ChunkRecord) -> bool:
        if self.readers is not None and not (record.readers & self.readers):
            return False
        if self.doc_ids and record.doc_id not in self.doc_ids:
            return False
        return all(record.metadata.get(k) == v for k, v in self.metadata.items())


@runtime_checkable
class VectorStore(Protocol):
    """Chunks of each knowledge base in a collection of their own."""

    def ensure_collection(self, collection: str, *, dimensions: int) -> None:
        """Create the collection if missing (idempotent)."""
        ...

    def upsert(self, collection: str, records: Sequence[ChunkRecord]) -> int:
        """Insert or replace by (tenant_id, chunk_id); creates the collection on first use."""
        ...

    def delete_document(self, collection: str, *, tenant_id: str, doc_id: str) -> int:
        """Remove every chunk (and parent) of one tenant's document; returns how many."""
        ...

    def dense_search(
        self, collection: str, vector: np.ndarray, *, top_k: int, where: SearchFilter
    ) -> list[Hit]:
        """Nearest searchable chunks by cosine similarity, best first."""
        ...

    def keyword_search(
        self, collection: str, query: str, *, top_k: int, where: SearchFilter
    ) -> list[Hit]:
        """Best searchable chunks by BM25 over their text, best first."""
        ...

    def fetch(
        self, collection: str, chunk_ids: Sequence[str], *, tenant_id: str, where: SearchFilter
    ) -> list[ChunkRecord]:
        """The named chunks or parents of `tenant_id` that `where` admits, in no order."""
        ...

    def count(self, collection: str) -> int: ...

    def drop_collection(self, collection: str) -> None: ...

    def close(self) -> None: ...


# -- BM25, shared by the in-memory store and the reranker -------------------------------------

STOP_WORDS = frozenset(
    "a an and are as at be but by for from has have how i if in into is it its of on or such "
    "that the their then there these they this to was were what when where which who why will "
    "with does do did can you your".split()
)
_WORD = re.compile(r"\w+")


def keyword_terms(text: str) -> list[str]:
    """Lower-cased, accent-folded word tokens without English stop words (no stemming)."""
    folded = unicodedata.normalize("NFKD", text.lower())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return [t for t in _WORD.findall(folded) if t not in STOP_WORDS]


class BM25:
    """Okapi BM25 over a fixed set of documents (k1=1.2, b=0.75, Lucene's idf)."""

    def __init__(
        self, *, documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75
    ) -> None:
        self._docs = [Counter(d) for d in documents]
        self._lengths = [len(d) for d in documents]
        self._avg = (sum(self._lengths) / len(documents)) if documents else 0.0
        df: Counter[str] = Counter()
        for counts in self._docs:
            df.update(counts.keys())
        n = len(documents)
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self._k1, self._b = k1, b

    def scores(self, query: Sequence[str]) -> list[float]:
        out = []
        for counts, length in zip(self._docs, self._lengths, strict=True):
            norm = self._k1 * (1 - self._b + self._b * length / (self._avg or 1.0))
            score = 0.0
            for term in set(query):
                tf = counts.get(term, 0)
                if tf:
                    score += self._idf[term] * tf * (self._k1 + 1) / (tf + norm)
            out.append(score)
        return out


# -- the in-memory fake -----------------------------------------------------------------------


class InMemoryVectorStore:
    """Exact cosine and BM25 over Python lists: for tests and tiny knowledge bases only."""

    def __init__(self) -> None:
        self._collections: dict[str, dict[str, ChunkRecord]] = {}
        self._dimensions: dict[str, int] = {}
        self._lock = threading.Lock()

    def ensure_collection(self, collection: str, *, dimensions: int) -> None:
        check_collection_name(collection)
        with self._lock:
            self._collections.setdefault(collection, {})
            self._dimensions.setdefault(collection, dimensions)

    def _records(self, collection: str) -> dict[str, ChunkRecord]:
        try:
            return self._collections[collection]
        except KeyError:
            raise CollectionNotFoundError(collection) from None

    def upsert(self, collection: str, records: Sequence[ChunkRecord]) -> int:
        vectors = [r.vector for r in records if r.vector is not None]
        if collection not in self._collections:
            if not vectors:
                raise VectorStoreError("first upsert needs a vector", collection=collection)
            self.ensure_collection(collection, dimensions=len(vectors[0]))
        expected = self._dimensions[collection]
        for record in records:
            record.readers  # noqa: B018  (validates the ACL before anything is stored)
            if record.vector is not None and len(record.vector) != expected:
                raise DimensionMismatchError(collection, expected=expected, got=len(record.vector))
        with self._lock:
            store = self._collections[collection]
            for record in records:
                store[record.key] = record
        return len(records)

    def delete_document(self, collection: str, *, tenant_id: str, doc_id: str) -> int:
        with self._lock:
            store = self._records(collection)
            doomed = [
                k for k, r in store.items() if r.doc_id == doc_id and r.tenant_id == tenant_id
            ]
            for key in doomed:
                del store[key]
        return len(doomed)

    def _searchable(self, collection: str, where: SearchFilter) -> list[ChunkRecord]:
        return [
            r for r in self._records(collection).values() if not r.is_parent and where.admits(r)
        ]

    def dense_search(
        self, collection: str, vector: np.ndarray, *, top_k: int, where: SearchFilter
    ) -> list[Hit]:
        records = self._searchable(collection, where)
        expected = self._dimensions[collection]
        if len(vector) != expected:
            raise DimensionMismatchError(collection, expected=expected, got=len(vector))
        if not records:
            return []
        matrix = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        query = np.asarray(vector, dtype=np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        scores = matrix @ query
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [Hit(records[i], float(scores[i]), rank) for rank, i in enumerate(order, 1)]

    def keyword_search(
        self, collection: str, query: str, *, top_k: int, where: SearchFilter
    ) -> list[Hit]:
        # Statistics over the whole collection, as a real index keeps them, not just the admitted.
        everything = [r for r in self._records(collection).values() if not r.is_parent]
        terms = keyword_terms(query)
        if not everything or not terms:
            return []
        scores = BM25(documents=[keyword_terms(r.text) for r in everything]).scores(terms)
        ranked = sorted(
            ((s, r) for s, r in zip(scores, everything, strict=True) if s > 0 and where.admits(r)),
            key=lambda pair: -pair[0],
        )[:top_k]
        return [Hit(r, s, rank) for rank, (s, r) in enumerate(ranked, 1)]

    def fetch(
        self, collection: str, chunk_ids: Sequence[str], *, tenant_id: str, where: SearchFilter
    ) -> list[ChunkRecord]:
        store = self._records(collection)
        found = (store.get(f"{tenant_id}/{c}") for c in dict.fromkeys(chunk_ids))
        return [r for r in found if r is not None and where.admits(r)]

    def count(self, collection: str) -> int:
        return len(self._records(collection))

    def drop_collection(self, collection: str) -> None:
        with self._lock:
            self._collections.pop(collection, None)
            self._dimensions.pop(collection, None)

    def close(self) -> None:
        pass


def build_vector_store(settings: RagSettings) -> VectorStore:
    """The configured adapter: LanceDB at `settings.path`, or Weaviate at `weaviate_url`."""
    if settings.store == "weaviate":
        from sluicegate.connectors.vector_weaviate import WeaviateVectorStore

        key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
        return WeaviateVectorStore(
            url=settings.weaviate_url, grpc_port=settings.weaviate_grpc_port, api_key=key
        )
    from sluicegate.connectors.vector_lancedb import LanceDBVectorStore

    return LanceDBVectorStore(path=settings.path)
