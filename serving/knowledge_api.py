"""Knowledge bases on the bridge: upload and delete documents, search directly.

    POST   /v1/knowledge/{kb}/documents        kb:write   a file → DocumentSubmitted (202 + ids)
    DELETE /v1/knowledge/{kb}/documents/{id}   kb:write   → DocumentDeleted (202)
    POST   /v1/knowledge/{kb}/search           kb:read    ranked chunks, context and citations

All authenticate like every bridge route (`Bridge._principal`); the tenant is the caller's,
never the request's; the Authorizer decides `kb:write` / `kb:read` on `Resource(tenant, kb)`
(roles, the key's and tenant's knowledge-base lists, ABAC rules) and a refusal is a 403 naming
the rule.

**Upload.** `multipart/form-data` with a `file` part (and optional fields `doc_id`, `title`,
`acl` — repeat it —, `metadata` as a JSON object of strings), or the file as the raw body with
its `Content-Type` (`application/pdf`, `text/html`, `text/markdown`, `text/plain`,
`application/json`, `application/x-ndjson`, `text/csv`, …; `application/octet-stream` detects
the format) and the same fields as query parameters, plus `filename`. The file is parsed here,
off the event loop (connectors/document_parsers.py), so a bad one is refused at once: 415 for a
format without a parser, 422 for a file that does not read (corrupt, encrypted, no text), 400 for
an ACL outside the grammar, 413 over `rag.max_upload_bytes` or a document text over
`rag.max_document_bytes`. A JSON or CSV file is one document per record. The answer, 202, comes
once every DocumentSubmitted is on sg.documents (acks=all); the rag worker makes it searchable
within seconds (embedding is the slow part).

**Delete.** Journals a DocumentDeleted for the caller's tenant under the document's key on
sg.documents and answers 202 once it is acknowledged; the rag worker carries it behind the
document's earlier records and removes its chunks from the store (processors/ingestion.py).
Never 404: the store cannot tell a document nobody submitted from one whose chunks are still
on their way, and the deletion, ordered after them, removes those too; deleting an unknown id
is harmless. The id is the rest of the path (URL-encode `#` as `%23`; `/` may stay).

**Search.** JSON `{"query": "...", "top_k": 5, "mode": "hybrid" | "keyword" | "semantic" |
"auto", "doc_ids": [...], "metadata": {"k": "v"}}`: the retriever the request path uses
(processors/retrieval.py), with the caller's ACL filter, returning the ranked chunks, the
context the chat request would get, its numbered citations and per-stage timings.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from sluicegate.connectors.document_parsers import (
    DocumentError,
    EmptyDocumentError,
    UnsupportedFormatError,
    parse,
)
from sluicegate.connectors.knowledge import KnowledgeServices
from sluicegate.connectors.vector_store import Caller, CollectionNotFoundError
from sluicegate.errors import BrokerError
from sluicegate.processors.authz import KB_READ, KB_WRITE, Resource
from sluicegate.processors.enrichment import citations_payload
from sluicegate.processors.ingestion import (
    InvalidDocumentError,
    check_knowledge_base,
    deleted,
    submitted,
)
from sluicegate.processors.retrieval import RetrievalResult
from sluicegate.serving import openai_format as fmt

if TYPE_CHECKING:
    from sluicegate.serving.bridge import Bridge

MODES = ("auto", "keyword", "semantic", "hybrid")
MAX_TOP_K = 50
_CHUNK = 1 << 16


class KnowledgeApiError(Exception):
    """An answer in OpenAI's error format with its HTTP status."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = fmt.error_body(message, code=code, param=param)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answering_errors(handler: Handler) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KnowledgeApiError as error:
            return web.json_response(error.body, status=error.status)

    return handle


class KnowledgeApi:
    """The knowledge routes, on the bridge's identity, authorizer and journal producer."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._rag = bridge.settings.rag
        self._services: KnowledgeServices | None = None
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="knowledge")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/knowledge/{kb}/documents", _answering_errors(self.upload))
        app.router.add_delete(
            "/v1/knowledge/{kb}/documents/{doc_id:.+}", _answering_errors(self.delete)
        )
        app.router.add_post("/v1/knowledge/{kb}/search", _answering_errors(self.search))
        app.on_cleanup.append(self._close)

    @property
    def services(self) -> KnowledgeServices:
        """Store, embedder and retriever, built on the first search (not at bridge start)."""
        if self._services is None:
            self._services = KnowledgeServices(
                self._rag, executor=ThreadPoolExecutor(2, thread_name_prefix="bm25")
            )
        return self._services

    async def _close(self, _app: web.Application) -> None:
        if self._services is not None:
            self._services.close()
        self._pool.shutdown(wait=False)

    async def _caller(self, request: web.Request, action: str) -> tuple[Any, str, str]:
        """(principal, tenant, knowledge base), or 401/403/400."""
        bridge = self._bridge
        principal = await bridge._principal(request)
        tenant = bridge._tenant(principal, request)
        kb = request.match_info["kb"]
        try:
            check_knowledge_base(kb)
        except InvalidDocumentError as error:
            raise KnowledgeApiError(400, str(error), code="invalid_knowledge_base") from None
        bridge.authz.require(principal, action, Resource(tenant, name=kb))
        return principal, tenant, kb

    # -- upload ---------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        _principal, tenant, kb = await self._caller(request, KB_WRITE)
        form = await self._form(request)
        source = form["filename"] or form["doc_id"] or f"upload-{uuid.uuid4().hex[:12]}"
        loop = asyncio.get_running_loop()
        try:
            parsed = await loop.run_in_executor(
                self._pool,
                lambda: parse(form["data"], source=source, media_type=form["media_type"]),
            )
            events = [
                submitted(
                    doc,
                    knowledge_base=kb,
                    tenant_id=tenant,
                    producer=self._bridge.instance_id,
                    acl=form["acl"],
                    metadata=form["metadata"],
                    title=form["title"],
                    doc_id=form["doc_id"] if len(parsed) == 1 else None,
                    max_bytes=self._rag.max_document_bytes,
                )
                for doc in parsed
            ]
        except UnsupportedFormatError as error:
            raise KnowledgeApiError(415, str(error), code="unsupported_media_type") from None
        except DocumentError as error:  # corrupt, encrypted, binary, or no text at all
            code = (
                "empty_document" if isinstance(error, EmptyDocumentError) else "unreadable_document"
            )
            raise KnowledgeApiError(422, str(error), code=code) from None
        except InvalidDocumentError as error:
            status = 413 if error.reason == "too_large" else 400
            raise KnowledgeApiError(status, str(error), code=error.reason) from None
        journal = self._bridge.journal
        assert journal is not None
        topic = self._bridge.settings.topic("documents")
        serde = self._bridge.serde
        try:
            await asyncio.gather(
                *(journal.publish(topic, e.doc_id, serde.encode(e)) for e in events)
            )
        except BrokerError as error:
            raise KnowledgeApiError(
                503, f"The document could not be journaled: {error}", code="journal_unavailable"
            ) from None
        documents = [
            {
                "doc_id": e.doc_id,
                "title": e.title,
                "media_type": e.media_type,
                "characters": len(e.text),
                "acl": list(e.acl),
            }
            for e in events
        ]
        return web.json_response(
            {
                "object": "knowledge.upload",
                "knowledge_base": kb,
                "status": "submitted",
                "doc_id": documents[0]["doc_id"],
                "documents": documents,
            },
            status=202,
        )

    # -- delete ---------------------------------------------------------------------------

    async def delete(self, request: web.Request) -> web.Response:
        principal, tenant, kb = await self._caller(request, KB_WRITE)
        doc_id = request.match_info["doc_id"]
        try:
            event = deleted(
                knowledge_base=kb,
                tenant_id=tenant,
                doc_id=doc_id,
                producer=self._bridge.instance_id,
                requested_by=principal.api_key_id,
            )
        except InvalidDocumentError as error:
            raise KnowledgeApiError(400, str(error), code=error.reason) from None
        journal = self._bridge.journal
        assert journal is not None
        topic = self._bridge.settings.topic("documents")
        try:
            await journal.publish(topic, doc_id, self._bridge.serde.encode(event))
        except BrokerError as error:
            raise KnowledgeApiError(
                503, f"The deletion could not be journaled: {error}", code="journal_unavailable"
            ) from None
        return web.json_response(
            {
                "object": "knowledge.document.deletion",
                "knowledge_base": kb,
                "doc_id": doc_id,
                "status": "submitted",
            },
            status=202,
        )

    async def _form(self, request: web.Request) -> dict[str, Any]:
        """The file and its fields, from a multipart form or a raw body with query fields."""
        limit = self._rag.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        fields: dict[str, Any] = {
            "data": b"",
            "filename": request.query.get("filename"),
            "media_type": None,
            "doc_id": request.query.get("doc_id"),
            "title": request.query.get("title"),
            "acl": request.query.getall("acl", []),
            "metadata": request.query.get("metadata"),
        }
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            found = False
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "file":
                    found = True
                    fields["data"] = await _read_limited(part.read_chunk, limit)
                    fields["filename"] = part.filename or fields["filename"]
                    kind = part.headers.get("Content-Type", "")
                    fields["media_type"] = _media_type(kind)
                elif part.name in ("doc_id", "title", "metadata", "filename"):
                    fields[part.name] = await part.text()
                elif part.name == "acl":
                    fields["acl"].append(await part.text())
            if not found:
                raise KnowledgeApiError(
                    400, "The form has no `file` part.", code="missing_file", param="file"
                )
        else:
            fields["data"] = await _read_limited(request.content.read, limit)
            fields["media_type"] = _media_type(request.content_type)
        if not fields["data"]:
            raise KnowledgeApiError(400, "The document is empty.", code="empty_document")
        fields["metadata"] = _metadata(fields["metadata"])
        fields["acl"] = [a for a in fields["acl"] if a.strip()]
        return fields

    # -- search ---------------------------------------------------------------------------

    async def search(self, request: web.Request) -> web.Response:
        principal, tenant, kb = await self._caller(request, KB_READ)
        body = await self._bridge._json_body(request)
        query, top_k, mode, doc_ids, metadata = _search_body(body)
        caller = replace(Caller.from_principal(principal), tenant_id=tenant)
        services = self.services

        def run() -> RetrievalResult:
            try:
                return services.retriever(kb).run(
                    query=query,
                    knowledge_base=kb,
                    caller=caller,
                    top_k=top_k,
                    mode=mode,
                    doc_ids=doc_ids,
                    metadata=metadata,
                )
            except CollectionNotFoundError:  # nothing indexed into it yet
                resolved = mode if mode in ("keyword", "semantic") else "hybrid"
                return RetrievalResult(query=query, knowledge_base=kb, mode=resolved, candidates=[])

        result = await asyncio.get_running_loop().run_in_executor(self._pool, run)
        return web.json_response(render_search(result))


def render_search(result: RetrievalResult) -> dict[str, Any]:
    """The search answer: ranked chunks (each with the number of the citation that covers it),
    the assembled context and the citations."""
    cited = {cid: c.number for c in result.citations for cid in c.chunk_ids}
    data = [
        {
            "rank": rank,
            "chunk_id": c.record.chunk_id,
            "doc_id": c.record.doc_id,
            "score": round(c.score, 6),
            "dense_score": c.dense_score,
            "keyword_score": c.keyword_score,
            "text": c.record.text,
            "title": c.record.title,
            "source_uri": c.record.source_uri,
            "section": c.record.section,
            "start": c.record.start,
            "end": c.record.end,
            "metadata": dict(c.record.metadata),
            "citation": cited.get(c.record.chunk_id),
        }
        for rank, c in enumerate(result.candidates, 1)
    ]
    return {
        "object": "list",
        "knowledge_base": result.knowledge_base,
        "query": result.query,
        "mode": result.mode,
        "data": data,
        "citations": citations_payload(result.citations),
        "context": result.context,
        "context_tokens": result.context_tokens,
        "timings_ms": result.timings_ms,
    }


def _search_body(body: Any) -> tuple[str, int | None, Any, list[str], dict[str, str]]:
    if not isinstance(body, dict):
        raise KnowledgeApiError(400, "The body must be a JSON object.", code="invalid_body")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise KnowledgeApiError(400, "'query' must be a non-empty string.", code="invalid_query")
    top_k = body.get("top_k")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K
    ):
        raise KnowledgeApiError(
            400, f"'top_k' must be an integer from 1 to {MAX_TOP_K}.", code="invalid_top_k"
        )
    mode = body.get("mode")
    if mode is not None and mode not in MODES:
        raise KnowledgeApiError(400, f"'mode' must be one of {list(MODES)}.", code="invalid_mode")
    doc_ids = body.get("doc_ids") or []
    if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
        raise KnowledgeApiError(400, "'doc_ids' must be strings.", code="invalid_doc_ids")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise KnowledgeApiError(
            400, "'metadata' must map names to strings.", code="invalid_metadata"
        )
    return query, top_k, mode, doc_ids, metadata


def _metadata(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise KnowledgeApiError(
            400, "'metadata' must be a JSON object.", code="invalid_metadata", param="metadata"
        )
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def _media_type(content_type: str) -> str | None:
    """The declared format, or None to detect it (no type, or a generic binary one)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return None if kind in ("", "application/octet-stream", "multipart/form-data") else kind


async def _read_limited(read: Callable[[int], Awaitable[bytes]], limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await read(_CHUNK)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)


def _too_large(limit: int) -> KnowledgeApiError:
    return KnowledgeApiError(
        413, f"The document exceeds the upload limit of {limit} bytes.", code="request_too_large"
    )


def add_routes(app: web.Application, bridge: Bridge) -> None:
    """Mount the knowledge routes on the bridge's application."""
    KnowledgeApi(bridge).add_routes(app)
