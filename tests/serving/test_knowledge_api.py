"""The knowledge routes on a stand-in bridge: upload → DocumentSubmitted, direct search."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sluicegate.connectors.knowledge import KnowledgeServices
from sluicegate.connectors.vector_store import ChunkRecord, InMemoryVectorStore
from sluicegate.errors import AuthError
from sluicegate.processors.authz import Authorizer
from sluicegate.processors.chunking import RegexTokenizer
from sluicegate.processors.identity import Principal
from sluicegate.schemas.models import DocumentDeleted, DocumentSubmitted
from sluicegate.serving.bridge import Bridge
from sluicegate.serving.knowledge_api import KnowledgeApi
from sluicegate.settings import RagSettings, Settings
from tests.fakes.embedders import HashEmbedder

pytestmark = pytest.mark.unit

EMBEDDER = HashEmbedder()


def _principal(tenant: str, subject: str, role: str) -> Principal:
    return Principal(
        tenant_id=tenant, subject=subject, method="api_key", roles=frozenset({role}), key_id=subject
    )


PRINCIPALS = {
    "dev": _principal("acme", "k-dev", "developer"),
    "admin": _principal("acme", "k-adm", "admin"),
    "viewer": _principal("acme", "k-view", "viewer"),
    "globex": _principal("globex", "k-g", "developer"),
}


class Journal:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, bytes]] = []

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        self.records.append((topic, key, value))


class Serde:
    """Keeps the events it encodes, so the test reads them back without a registry."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def encode(self, event: Any) -> bytes:
        self.events.append(event)
        return b"event"


class FakeBridge:
    """What the knowledge routes use of `Bridge`: identity, tenant, authorizer, journal."""

    _json_body = Bridge._json_body

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serde = Serde()
        self.journal = Journal()
        self.instance_id = "bridge-test"
        self.authz = Authorizer(settings=settings.auth)

    async def _principal(self, request: web.Request) -> Principal:
        return PRINCIPALS[request.headers["Authorization"].removeprefix("Bearer ")]

    def _tenant(self, principal: Principal, _request: web.Request) -> str:
        return principal.tenant_id


@web.middleware
async def auth_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except AuthError as error:
        return web.json_response({"error": {"code": error.code}}, status=error.status)


def seeded() -> InMemoryVectorStore:
    store = InMemoryVectorStore()
    texts = {
        "guide#c0": ("acme", (), "Rotate the signing key every ninety days."),
        "board#c0": ("acme", ("role:admin",), "Board: the signing key budget."),
        "globex#c0": ("globex", (), "Globex signing key notes."),
    }
    store.upsert(
        "docs",
        [
            ChunkRecord(
                chunk_id=cid,
                doc_id=cid.split("#")[0],
                tenant_id=tenant,
                text=text,
                vector=EMBEDDER.embed([text])[0],
                acl=acl,
                title=cid.split("#")[0],
            )
            for cid, (tenant, acl, text) in texts.items()
        ],
    )
    return store


@pytest_asyncio.fixture(loop_scope="function")
async def client() -> AsyncIterator[tuple[TestClient, FakeBridge]]:
    settings = Settings(rag=RagSettings(max_upload_bytes=4096, max_document_bytes=2048))
    bridge = FakeBridge(settings)
    api = KnowledgeApi(bridge)  # type: ignore[arg-type]
    api._services = KnowledgeServices(
        settings.rag, store=seeded(), embedders=[EMBEDDER], tokenizer=RegexTokenizer()
    )
    # The bridge's own body limit (for chat requests) does not bound uploads.
    app = web.Application(middlewares=[auth_errors], client_max_size=1024)
    api.add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, bridge


def auth(who: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}", **headers}


async def test_a_raw_upload_is_journaled_and_answered_202(client) -> None:
    http, bridge = client
    response = await http.post(
        "/v1/knowledge/docs/documents?filename=guide.md&acl=role:ops&title=The+guide",
        data=b"# Guide\n\nRotate keys.",
        headers=auth("dev", **{"Content-Type": "text/markdown"}),
    )
    body = await response.json()
    assert response.status == 202, body
    assert body["doc_id"] == "guide.md" and body["knowledge_base"] == "docs"
    (event,) = bridge.serde.events
    assert isinstance(event, DocumentSubmitted)
    assert (event.tenant_id, event.doc_id, event.acl) == ("acme", "guide.md", ["role:ops"])
    assert (event.title, event.media_type, event.producer) == (
        "The guide",
        "text/markdown",
        "bridge-test",
    )
    assert bridge.journal.records == [("sg.documents", "guide.md", b"event")]


async def test_a_multipart_csv_is_one_document_per_row(client) -> None:
    http, bridge = client
    form = aiohttp.FormData()
    form.add_field(
        "file",
        b"id,title,text\n1,One,first row\n2,Two,second row\n",
        filename="t.csv",
        content_type="text/csv",
    )
    form.add_field("acl", "role:ops")
    form.add_field("metadata", json.dumps({"team": "infra"}))
    response = await http.post("/v1/knowledge/docs/documents", data=form, headers=auth("dev"))
    body = await response.json()
    assert response.status == 202, body
    assert [d["doc_id"] for d in body["documents"]] == ["t.csv#1", "t.csv#2"]
    assert all(e.metadata["team"] == "infra" and e.acl == ["role:ops"] for e in bridge.serde.events)


@pytest.mark.parametrize(
    ("who", "data", "content_type", "query", "status", "code"),
    [
        ("dev", b"\x89PNG....", "image/png", "", 415, "unsupported_media_type"),
        ("dev", b"%PDF-1.4 not really a pdf", "application/pdf", "", 422, "unreadable_document"),
        ("dev", b"# T\n\ntext", "text/markdown", "?acl=admins", 400, "bad_acl"),
        ("dev", b"x" * 5000, "text/plain", "", 413, "request_too_large"),
        ("dev", b"word " * 500, "text/plain", "", 413, "too_large"),  # text over 2048 bytes
        ("dev", b"", "text/plain", "", 400, "empty_document"),
        ("viewer", b"text", "text/plain", "", 403, "permission_denied"),
    ],
)
async def test_uploads_refused_at_the_door(
    client, who, data, content_type, query, status, code
) -> None:
    http, bridge = client
    response = await http.post(
        f"/v1/knowledge/docs/documents{query}",
        data=data,
        headers=auth(who, **{"Content-Type": content_type}),
    )
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (status, code)
    assert bridge.journal.records == []


async def test_a_bad_knowledge_base_name_is_a_400(client) -> None:
    http, _ = client
    response = await http.post(
        "/v1/knowledge/bad.name/search", json={"query": "x"}, headers=auth("dev")
    )
    assert response.status == 400


async def search(http: TestClient, who: str, **body: Any) -> tuple[int, dict]:
    response = await http.post("/v1/knowledge/docs/search", json=body, headers=auth(who))
    return response.status, await response.json()


async def test_search_returns_ranked_chunks_context_and_citations(client) -> None:
    http, _ = client
    status, body = await search(http, "dev", query="signing key rotation", top_k=3)
    assert status == 200, body
    assert [d["doc_id"] for d in body["data"]] == ["guide"]  # not board (admins), not globex
    assert body["data"][0]["citation"] == 1 and body["citations"][0]["doc_id"] == "guide"
    assert "[1] guide" in body["context"] and body["mode"] == "hybrid"
    assert {"embed", "dense", "keyword"} <= set(body["timings_ms"])


async def test_search_filters_by_role_and_tenant(client) -> None:
    http, _ = client
    _, admin = await search(http, "admin", query="signing key")
    assert {d["doc_id"] for d in admin["data"]} == {"guide", "board"}
    _, globex = await search(http, "globex", query="signing key")
    assert {d["doc_id"] for d in globex["data"]} == {"globex"}
    _, viewer = await search(http, "viewer", query="signing key", mode="keyword")
    assert {d["doc_id"] for d in viewer["data"]} == {"guide"} and viewer["mode"] == "keyword"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query": ""},
        {"query": "x", "top_k": 0},
        {"query": "x", "mode": "fuzzy"},
        {"query": "x", "doc_ids": [1]},
    ],
)
async def test_search_validates_its_body(client, body) -> None:
    http, _ = client
    status, _ = await search(http, "dev", **body)
    assert status == 400


async def test_search_on_an_empty_knowledge_base_is_empty(client) -> None:
    http, _ = client
    response = await http.post(
        "/v1/knowledge/empty/search", json={"query": "x"}, headers=auth("dev")
    )
    body = await response.json()
    assert response.status == 200 and body["data"] == [] and body["citations"] == []


async def test_the_upload_limit_is_its_own_not_the_chat_body_limit(client) -> None:
    http, _ = client
    text = b"Rotate the signing key every ninety days. " * 35  # ~1.5 KB > client_max_size
    response = await http.post(
        "/v1/knowledge/docs/documents?filename=long.txt",
        data=text,
        headers=auth("dev", **{"Content-Type": "text/plain"}),
    )
    assert response.status == 202, await response.text()


@pytest.mark.parametrize(
    ("path", "doc_id"),
    [
        ("guide.md", "guide.md"),
        ("errors.csv%230", "errors.csv#0"),  # a row of a CSV
        ("docs/deep/page.html", "docs/deep/page.html"),  # the rest of the path
    ],
)
async def test_a_deletion_is_journaled_for_the_callers_tenant_and_answered_202(
    client, path: str, doc_id: str
) -> None:
    http, bridge = client
    response = await http.delete(f"/v1/knowledge/docs/documents/{path}", headers=auth("dev"))
    body = await response.json()
    assert response.status == 202, body
    assert (body["doc_id"], body["knowledge_base"], body["status"]) == (doc_id, "docs", "submitted")
    (event,) = bridge.serde.events
    assert isinstance(event, DocumentDeleted)
    assert (event.tenant_id, event.doc_id, event.knowledge_base) == ("acme", doc_id, "docs")
    assert (event.requested_by, event.producer) == ("k-dev", "bridge-test")
    assert bridge.journal.records == [("sg.documents", doc_id, b"event")]


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        ("viewer", "/v1/knowledge/docs/documents/guide.md", 403),  # kb:read only
        ("dev", "/v1/knowledge/bad.name/documents/guide.md", 400),
        ("dev", "/v1/knowledge/docs/documents/", 404),  # no document id: no route
    ],
)
async def test_deletions_refused_at_the_door(client, who: str, path: str, status: int) -> None:
    http, bridge = client
    response = await http.delete(path, headers=auth(who))
    assert response.status == status
    assert bridge.journal.records == []
