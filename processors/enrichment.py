"""Enrichment: a request that names a knowledge base gets retrieved context before routing.

Admission calls it after the input guard and before the cache (processors/admission.py), so the
query is the guarded text and the cache keys on the enriched prompt:

1. **Which knowledge base** — `extra_body={"sluicegate": {"knowledge_base": "kb"}}`, else the
   alias's `knowledge_base` (settings / catalogue). None: nothing happens.
2. **May the caller read it** — `kb:read` on `Resource(tenant, kb)` by the Authorizer, for the
   caller's principal, rebuilt here (`principal_of`):
   - an **API key** from the key registry (`sg.identity`, which every worker follows): the
     key's roles, knowledge-base list and attributes *as they are now*, so a key revoked or
     narrowed after the request was journaled is refused;
   - a **JWT** from `RequestReceived.principal`, the facts the bridge verified (roles,
     attributes with the groups, subject, expiry; never the token), through the same
     `token_principal` the bridge used, with the tenant's lists, attributes and status as
     they are now. Refused with `unverified_principal` when the facts are missing or name
     another subject than `api_key_id`, with 401 `expired_token` once the token's `exp` (plus
     `auth.jwt.leeway_s`) has passed by admission time, and when JWTs are off here;
   - anonymous callers (only with `auth.required` off) read as the bridge lets them, a
     developer of the request's tenant.
   Why journaled facts may be trusted: whoever can write sg.requests can already name any
   `api_key_id` and be authorized as that key — the journal is exactly as trusted as the
   bridge that writes it, and topic ACLs, not this module, keep other writers off it. The
   facts grant a JWT caller nothing a journal writer could not already claim; what the bridge
   did not verify is not on the event. A refusal answers 403 (401 for an expired token).
3. **Retrieve** — `AwaitingRetrieval.retrieve` is blocking (query embedding, dense + BM25
   search, fusion, context assembly: ~20-100 ms), so the agent runs it on an executor and calls
   `resume`. The caller's `Caller` (tenant, key id, roles, groups) filters every search.
4. **Resume** — the context goes into a system message (after the caller's own leading system
   messages) with numbered sources; a `RequestEnriched` goes to sg.enriched; an `enrich` span
   (child of the admission span) records the mode, counts and per-stage timings; and the
   citations ride on the InferenceTask — and from there on ResponseReady and the last
   TokenChunk, or on a cached answer — as `citations_json`, which the bridge returns as
   `sluicegate.citations`.

A failed retrieval answers 503 `retrieval_unavailable`, or, with `rag.on_retrieval_error:
continue`, goes on without context (the span says why). A knowledge base nothing was indexed
into yet gives an empty context, not an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from sluicegate.connectors.vector_store import COLLECTION_NAME, Caller, CollectionNotFoundError
from sluicegate.processors.authz import KB_READ, Authorizer, Resource
from sluicegate.processors.envelope import Emit, child_envelope, new_span_id, now, span_emit
from sluicegate.processors.identity import (
    ACTIVE,
    Principal,
    journaled_claims,
    key_principal,
    token_principal,
)
from sluicegate.processors.request_options import request_options
from sluicegate.processors.retrieval import Citation as RetrievedCitation
from sluicegate.processors.retrieval import RetrievalResult, Retriever
from sluicegate.schemas.models import (
    ApiKeyRecord,
    ChatMessage,
    Citation,
    CitationSpan,
    InferenceTask,
    RequestEnriched,
    RequestReceived,
    ResponseReady,
    TenantRecord,
    TokenChunk,
)
from sluicegate.settings import AccessRule, AuthSettings, ModelAlias, RagSettings

PRODUCER = "admission"
_LEADING = ("system", "developer")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request's enrichment is refused, as admission answers it."""

    code: str
    message: str
    http_status: int
    error_type: str = "invalid_request_error"


class CallerDirectory(Protocol):
    """What the worker knows of callers: the key registry folded from sg.identity."""

    def key(self, key_id: str) -> ApiKeyRecord | None: ...

    def tenant(self, tenant_id: str) -> TenantRecord | None: ...

    def access_rules(self, tenant_id: str) -> tuple[AccessRule, ...]: ...


class Retrievers(Protocol):
    """The retriever of a knowledge base (connectors/knowledge.py: KnowledgeServices)."""

    def retriever(self, knowledge_base: str) -> Retriever: ...


@dataclass(frozen=True, slots=True)
class RetrievalOutcome:
    """What `AwaitingRetrieval.retrieve` returns: a result, or the error it failed with."""

    result: RetrievalResult | None
    error: BaseException | None = None
    elapsed_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class AwaitingRetrieval:
    """Admission paused before the cache: run `retrieve` (blocking, never raises) off the event
    loop and call `resume` with what it returned; `resume` may pause again (AwaitingEmbedding)."""

    retrieve: Callable[[], RetrievalOutcome]
    resume: Callable[[RetrievalOutcome], Any]


class RefusedError(Exception):
    """Flow control inside this module: carries the Refusal admission turns into a 4xx."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def requested_knowledge_base(request: RequestReceived, alias: ModelAlias | None) -> str | None:
    """`extra_body.sluicegate.knowledge_base`, else the alias's; RefusedError (400) for a
    value that is not a knowledge-base name."""
    named: Any = request_options(request.params.extra_json).get("knowledge_base")
    if named is None:
        return alias.knowledge_base if alias is not None else None
    if not isinstance(named, str) or not COLLECTION_NAME.match(named):
        raise RefusedError(
            Refusal(
                "invalid_knowledge_base",
                "sluicegate.knowledge_base must be a knowledge-base name (a letter, then "
                "letters, digits, `_` or `-`).",
                400,
            )
        )
    return named


def principal_of(
    request: RequestReceived, directory: CallerDirectory, auth: AuthSettings, *, now_ms: int
) -> Principal:
    """The caller of a journaled request: an API key from the key registry, a JWT from the
    journaled facts (see module doc)."""
    key_id = request.api_key_id
    if key_id is None or key_id == "anonymous":
        if auth.required:
            raise RefusedError(
                Refusal(
                    "permission_denied",
                    "Knowledge bases need an authenticated caller.",
                    403,
                    "permission_error",
                )
            )
        return Principal(
            tenant_id=request.tenant_id,
            subject="anonymous",
            method="anonymous",
            roles=frozenset({"developer"}),
        )
    if key_id.startswith("jwt:"):
        return jwt_principal_of(request, directory, auth, now_ms=now_ms)
    record = directory.key(key_id)
    tenant = directory.tenant(record.tenant_id) if record is not None else None
    live = (
        record is not None
        and tenant is not None
        and record.status == ACTIVE
        and tenant.status == ACTIVE
        and (record.expires_at_ms is None or record.expires_at_ms > now_ms)
    )
    if not live or record is None or tenant is None:
        raise RefusedError(
            Refusal(
                "permission_denied",
                f"The API key {key_id} is not active.",
                403,
                "permission_error",
            )
        )
    return key_principal(record, tenant)


def jwt_principal_of(
    request: RequestReceived, directory: CallerDirectory, auth: AuthSettings, *, now_ms: int
) -> Principal:
    """A JWT caller, rebuilt from the facts the bridge verified and journaled (see module doc):
    refused when JWTs are off here, when the facts are missing or name another subject, once
    the token has expired (with the verifier's leeway), and when its tenant is disabled (or
    unknown, with `auth.jwt.require_known_tenant`)."""
    facts = request.principal
    if not auth.jwt.enabled:
        raise _denied("JWT callers are not accepted here (auth.jwt.enabled is off).")
    if facts is None or facts.method != "jwt" or request.api_key_id != f"jwt:{facts.subject}":
        raise RefusedError(
            Refusal(
                "unverified_principal",
                "The request names a JWT caller but carries no verified principal for it "
                "(journaled by an older bridge, or not by a bridge).",
                403,
                "permission_error",
            )
        )
    expires = facts.expires_at_ms
    if expires is None or now_ms > expires + auth.jwt.leeway_s * 1000:
        raise RefusedError(
            Refusal("expired_token", "The token has expired.", 401, "authentication_error")
        )
    tenant = directory.tenant(facts.tenant_id)
    if tenant is None and auth.jwt.require_known_tenant:
        raise _denied(f"Tenant `{facts.tenant_id}` is not known to the gateway.")
    if tenant is not None and tenant.status != ACTIVE:
        raise _denied(f"Tenant `{facts.tenant_id}` is disabled.")
    return token_principal(journaled_claims(facts), tenant)


def _denied(message: str) -> RefusedError:
    return RefusedError(Refusal("permission_denied", message, 403, "permission_error"))


def query_of(request: RequestReceived) -> str:
    """What is searched for: the last user message's text."""
    for message in reversed(request.messages):
        if message.role == "user":
            return (message.content or "").strip()
    return ""


def with_context(request: RequestReceived, context: str, *, preamble: str) -> RequestReceived:
    """The request with the context as a system message after its leading system messages."""
    messages = list(request.messages)
    at = 0
    while at < len(messages) and messages[at].role in _LEADING:
        at += 1
    content = f"{preamble}\n\n{context}" if preamble else context
    messages.insert(at, ChatMessage(role="system", content=content))
    return request.model_copy(update={"messages": messages})


def citations_payload(citations: Sequence[RetrievedCitation]) -> list[dict[str, Any]]:
    """Citations as the bridge returns them in `sluicegate.citations`."""
    return [
        {
            "number": c.number,
            "doc_id": c.doc_id,
            "title": c.title,
            "source_uri": c.source_uri,
            "section": c.section,
            "chunk_ids": list(c.chunk_ids),
            "spans": [{"start": s, "end": e} for s, e in c.spans],
            "score": round(c.score, 6),
        }
        for c in citations
    ]


def cited(outcome: Any, citations_json: str) -> Any:
    """Admission's outcome with `citations_json` on the events that answer the caller: the
    InferenceTask (inference copies it onward), a cached ResponseReady, a stream's last chunk.
    An outcome that pauses again (AwaitingEmbedding) gets it when it resumes."""
    resume = getattr(outcome, "resume", None)
    if resume is not None:
        return replace(outcome, resume=lambda value: cited(resume(value), citations_json))
    stamped = []
    for emit in outcome:
        event = emit.event
        answers = isinstance(event, InferenceTask | ResponseReady) or (
            isinstance(event, TokenChunk) and event.finish_reason is not None
        )
        if answers:
            event = event.model_copy(update={"citations_json": citations_json})
        stamped.append(Emit(emit.topic, emit.key, event) if answers else emit)
    return stamped


class Enricher:
    """Resolves, authorizes and plans the enrichment of one request (see module doc)."""

    def __init__(
        self,
        *,
        rag: RagSettings,
        auth: AuthSettings,
        retrievers: Retrievers,
        directory: CallerDirectory | None,
    ) -> None:
        self._rag = rag
        self._auth = auth
        self._retrievers = retrievers
        self._directory = directory
        self._authz = Authorizer(
            settings=auth,
            tenant_rules=directory.access_rules if directory is not None else lambda _t: (),
        )

    @property
    def reserved_tokens(self) -> int:
        """What limits and budgets hold for the context before it is known: the whole budget
        (the real usage settles it)."""
        return self._rag.context_token_budget + len(self._rag.context_preamble) // 4 + 8

    def knowledge_base(
        self, request: RequestReceived, alias: ModelAlias | None
    ) -> str | Refusal | None:
        """The knowledge base the request names (None: none), or why the name is refused."""
        try:
            return requested_knowledge_base(request, alias)
        except RefusedError as refused:
            return refused.refusal

    def plan(
        self,
        request: RequestReceived,
        knowledge_base: str,
        *,
        admission_span_id: str,
        now_ms: int,
        extras: list[Emit],
        proceed: Callable[[RequestReceived], Any],
        refuse: Callable[[Refusal], Any],
    ) -> Any:
        """A refusal (admission's rejection events), or an AwaitingRetrieval whose `resume`
        appends the enrich span and RequestEnriched to `extras` and continues with `proceed`
        on the enriched request."""
        started = now()
        span_id = new_span_id()
        base = {"knowledge_base": knowledge_base}
        try:
            caller = self._caller(request, knowledge_base, now_ms)
        except RefusedError as refused:
            attributes = {**base, "result": f"refused:{refused.refusal.code}"}
            span = self._span(request, admission_span_id, span_id, started, "error", attributes)
            extras.append(span)
            return refuse(refused.refusal)
        query = query_of(request)
        retriever = self._retrievers

        def retrieve() -> RetrievalOutcome:
            clock = time.perf_counter()
            try:
                if not query:
                    result = _empty(query, knowledge_base, "hybrid")
                else:
                    result = retriever.retriever(knowledge_base).run(
                        query=query, knowledge_base=knowledge_base, caller=caller
                    )
            except CollectionNotFoundError:
                result = _empty(query, knowledge_base, self._rag.routing)
            except Exception as error:  # the store or the embedder failed: decided in resume
                return RetrievalOutcome(None, error, _ms(clock))
            return RetrievalOutcome(result, None, _ms(clock))

        def resume(outcome: RetrievalOutcome) -> Any:
            result = outcome.result
            if result is None:
                error = outcome.error
                attributes = {
                    **base,
                    "result": "error",
                    "error": f"{type(error).__name__}: {error}"[:500],
                    "retrieve_ms": f"{outcome.elapsed_ms:.1f}",
                }
                extras.append(
                    self._span(request, admission_span_id, span_id, started, "error", attributes)
                )
                if self._rag.on_retrieval_error == "reject":
                    return refuse(
                        Refusal(
                            "retrieval_unavailable",
                            f"Knowledge base `{knowledge_base}` could not be searched; retry.",
                            503,
                            "server_error",
                        )
                    )
                return proceed(request)
            attributes = {
                **base,
                **_result_attributes(result),
                "retrieve_ms": f"{outcome.elapsed_ms:.1f}",
            }
            span = self._span(request, admission_span_id, span_id, started, "ok", attributes)
            extras.append(span)
            extras.append(self._enriched(request, admission_span_id, span_id, result))
            enriched = request
            if result.context:
                enriched = with_context(
                    request, result.context, preamble=self._rag.context_preamble
                )
            payload = json.dumps(citations_payload(result.citations), separators=(",", ":"))
            return cited(proceed(enriched), payload)

        return AwaitingRetrieval(retrieve=retrieve, resume=resume)

    def _caller(self, request: RequestReceived, knowledge_base: str, now_ms: int) -> Caller:
        directory = self._directory if self._directory is not None else _NoKeys()
        principal = principal_of(request, directory, self._auth, now_ms=now_ms)
        decision = self._authz.authorize(
            principal, KB_READ, Resource(request.tenant_id, name=knowledge_base)
        )
        if not decision.allowed:
            raise RefusedError(
                Refusal("permission_denied", decision.reason, 403, "permission_error")
            )
        return Caller.from_principal(principal)

    @staticmethod
    def _span(
        request: RequestReceived,
        admission_span_id: str,
        span_id: str,
        started: datetime,
        status: str,
        attributes: dict[str, str],
    ) -> Emit:
        envelope = child_envelope(request, producer=PRODUCER, span_id=span_id)
        envelope["parent_span_id"] = admission_span_id
        return span_emit(
            envelope, name="enrich", started=started, status=status, attributes=attributes
        )

    @staticmethod
    def _enriched(
        request: RequestReceived, admission_span_id: str, span_id: str, result: RetrievalResult
    ) -> Emit:
        envelope = child_envelope(request, producer=PRODUCER, span_id=span_id)
        envelope["parent_span_id"] = admission_span_id
        event = RequestEnriched(
            **envelope,
            knowledge_base=result.knowledge_base,
            context=result.context,
            citations=[
                Citation(
                    doc_id=c.doc_id,
                    chunk_id=c.chunk_ids[0] if c.chunk_ids else "",
                    score=c.score,
                    number=c.number,
                    title=c.title,
                    source_uri=c.source_uri,
                    section=c.section,
                    chunk_ids=list(c.chunk_ids),
                    spans=[CitationSpan(start=s, end=e) for s, e in c.spans],
                )
                for c in result.citations
            ],
            context_tokens=result.context_tokens,
            mode=result.mode,
        )
        return Emit("enriched", request.tenant_id, event)


class _NoKeys:
    def key(self, key_id: str) -> ApiKeyRecord | None:
        return None

    def tenant(self, tenant_id: str) -> TenantRecord | None:
        return None

    def access_rules(self, tenant_id: str) -> tuple[AccessRule, ...]:
        return ()


def _empty(query: str, knowledge_base: str, mode: str) -> RetrievalResult:
    resolved = mode if mode in ("keyword", "semantic", "hybrid") else "hybrid"
    return RetrievalResult(
        query=query,
        knowledge_base=knowledge_base,
        mode=resolved,
        candidates=[],  # type: ignore[arg-type]
    )


def _result_attributes(result: RetrievalResult) -> dict[str, str]:
    attributes = {
        "result": "ok" if result.citations else "empty",
        "mode": result.mode,
        "candidates": str(len(result.candidates)),
        "citations": str(len(result.citations)),
        "context_tokens": str(result.context_tokens),
    }
    if result.citations:
        attributes["doc_ids"] = ",".join(dict.fromkeys(c.doc_id for c in result.citations))[:500]
    for stage, ms in result.timings_ms.items():
        attributes[f"{stage}_ms"] = f"{ms:.1f}"
    return attributes


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
