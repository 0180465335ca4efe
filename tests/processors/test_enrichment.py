"""Enrichment in admission: a request naming a knowledge base gets context and citations, and
only from chunks its caller may read."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pydantic import SecretStr

from sluicegate.connectors.vector_store import ChunkRecord, InMemoryVectorStore
from sluicegate.processors.admission import Admission, AwaitingEmbedding
from sluicegate.processors.cache import ResponseCache
from sluicegate.processors.cache_fill import CacheFiller
from sluicegate.processors.chunking import RegexTokenizer
from sluicegate.processors.enrichment import (
    AwaitingRetrieval,
    Enricher,
    RefusedError,
    RetrievalOutcome,
    cited,
    principal_of,
    query_of,
    requested_knowledge_base,
    with_context,
)
from sluicegate.processors.envelope import Emit
from sluicegate.processors.finish import Finisher
from sluicegate.processors.identity import ACTIVE, REVOKED
from sluicegate.processors.retrieval import Retriever
from sluicegate.schemas.models import (
    ApiKeyRecord,
    CacheFill,
    ChatMessage,
    InferenceTask,
    RequestEnriched,
    RequestReceived,
    RequestRejected,
    ResponseReady,
    SamplingParams,
    Span,
    TenantRecord,
    TokenUsage,
    VerifiedPrincipal,
)
from sluicegate.settings import (
    AccessRule,
    AuthSettings,
    Deployment,
    JwtSettings,
    ModelAlias,
    RagSettings,
    Settings,
)
from tests.builders import envelope
from tests.fakes.embedders import HashEmbedder

pytestmark = pytest.mark.unit

EMBEDDER = HashEmbedder()
NOW_MS = int(time.time() * 1000)


def settings(**rag: Any) -> Settings:
    return Settings(
        deployments=[Deployment(name="a", backend="openai", provider_model="gpt-x")],
        models=[
            ModelAlias(name="chat", deployments=["a"]),
            ModelAlias(name="rag-chat", deployments=["a"], knowledge_base="docs"),
        ],
        rag=RagSettings(**{"context_token_budget": 400, **rag}),
    )


class Directory:
    """The key registry as the worker folds it, in dicts."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKeyRecord] = {}
        self.tenants = {t: tenant(t) for t in ("acme", "globex")}
        self.rules: dict[str, tuple[AccessRule, ...]] = {}

    def add(self, key_id: str, tenant_id: str = "acme", **fields: Any) -> str:
        fields.setdefault("roles", ["developer"])
        fields.setdefault("status", ACTIVE)
        self.keys[key_id] = ApiKeyRecord(
            **envelope(tenant_id=tenant_id),
            key_id=key_id,
            secret_hash="x",
            created_at_ms=0,
            revision=1,
            **fields,
        )
        return key_id

    def key(self, key_id: str) -> ApiKeyRecord | None:
        return self.keys.get(key_id)

    def tenant(self, tenant_id: str) -> TenantRecord | None:
        return self.tenants.get(tenant_id)

    def access_rules(self, tenant_id: str) -> tuple[AccessRule, ...]:
        return self.rules.get(tenant_id, ())


def tenant(tenant_id: str, **fields: Any) -> TenantRecord:
    return TenantRecord(
        **envelope(tenant_id=tenant_id), name=tenant_id, status=ACTIVE, revision=1, **fields
    )


def record(chunk_id: str, text: str, *, tenant_id: str = "acme", **fields: Any) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=chunk_id,
        doc_id=chunk_id.split("#")[0],
        tenant_id=tenant_id,
        text=text,
        vector=EMBEDDER.embed([text])[0],
        title=chunk_id.split("#")[0].title(),
        **fields,
    )


def seeded_store() -> InMemoryVectorStore:
    store = InMemoryVectorStore()
    store.upsert(
        "docs",
        [
            record("guide#c0", "The gateway retries rate limited calls with backoff."),
            record(
                "board#c0",
                "Board minutes: the gateway retries budget is secret.",
                acl=("role:admin",),
            ),
            record("globex#c0", "Globex gateway retries notes.", tenant_id="globex"),
        ],
    )
    return store


class Retrievers:
    def __init__(self, store: InMemoryVectorStore, rag: RagSettings) -> None:
        self.store = store
        self.rag = rag
        self.fail = False

    def retriever(self, knowledge_base: str) -> Retriever:
        if self.fail:
            raise OSError("store unreachable")
        return Retriever(
            store=self.store, embedder=EMBEDDER, tokenizer=RegexTokenizer(), settings=self.rag
        )


def admission(
    config: Settings | None = None, *, store: InMemoryVectorStore | None = None, **kwargs: Any
) -> tuple[Admission, Directory, Retrievers]:
    config = config or settings()
    directory = Directory()
    retrievers = Retrievers(store or seeded_store(), config.rag)
    enricher = Enricher(
        rag=config.rag, auth=config.auth, retrievers=retrievers, directory=directory
    )
    return (
        Admission(settings=config, enricher=enricher, clock_ms=lambda: NOW_MS, **kwargs),
        directory,
        retrievers,
    )


def ask(model: str = "rag-chat", *, key: str | None = "k-dev", **fields: Any) -> RequestReceived:
    extra = fields.pop("extra", None)
    return RequestReceived(
        **envelope(**fields),
        model=model,
        messages=[
            ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content="How does the gateway retry?"),
        ],
        params=SamplingParams(
            temperature=0.0, max_tokens=16, extra_json=json.dumps(extra) if extra else None
        ),
        api_key_id=key,
    )


def resumed(outcome: Any) -> list[Any]:
    assert isinstance(outcome, AwaitingRetrieval)
    return outcome.resume(outcome.retrieve())


def test_the_alias_knowledge_base_adds_context_citations_and_events() -> None:
    gate, directory, _ = admission()
    directory.add("k-dev")
    incoming = ask()
    emits = resumed(gate.run(incoming))
    task = emits[0].event
    assert isinstance(task, InferenceTask)
    system, context, user = task.messages
    assert system.content == "You are terse." and user.content == incoming.messages[1].content
    assert context.role == "system" and "[1] Guide" in context.content
    assert "retries rate limited calls" in context.content
    assert context.content.startswith(settings().rag.context_preamble)
    citations = json.loads(task.citations_json)
    assert [(c["number"], c["doc_id"]) for c in citations] == [(1, "guide")]
    assert citations[0]["chunk_ids"] == ["guide#c0"] and citations[0]["spans"]
    enriched = next(e for e in emits if isinstance(e.event, RequestEnriched))
    assert enriched.topic == "enriched" and enriched.key == "acme"
    event = enriched.event
    assert event.knowledge_base == "docs" and event.mode == "hybrid"
    assert [c.doc_id for c in event.citations] == ["guide"] and event.citations[0].number == 1
    assert event.context in context.content and event.context_tokens > 0
    spans = [e.event for e in emits if isinstance(e.event, Span)]
    admission_span = spans[-1]
    assert admission_span.name == "admission" and emits[-1].event is admission_span
    enrich = next(s for s in spans if s.name == "enrich")
    assert enrich.parent_span_id == admission_span.span_id == task.span_id
    assert enrich.span_id == event.span_id and enrich.status == "ok"
    attrs = enrich.attributes
    assert (attrs["knowledge_base"], attrs["citations"], attrs["result"]) == ("docs", "1", "ok")
    assert {"embed_ms", "dense_ms", "keyword_ms", "retrieve_ms"} <= set(attrs)


def test_extra_body_names_a_knowledge_base_on_any_alias() -> None:
    gate, directory, _ = admission()
    directory.add("k-dev")
    outcome = gate.run(ask("chat", extra={"sluicegate": {"knowledge_base": "docs"}}))
    assert isinstance(outcome, AwaitingRetrieval)
    assert isinstance(gate.run(ask("chat")), list)  # no knowledge base: no pause


def test_a_bad_knowledge_base_name_is_a_400() -> None:
    gate, directory, _ = admission()
    directory.add("k-dev")
    emits = gate.run(ask("chat", extra={"sluicegate": {"knowledge_base": ["docs"]}}))
    rejected = emits[0].event
    assert isinstance(rejected, RequestRejected)
    assert (rejected.http_status, rejected.code) == (400, "invalid_knowledge_base")


def test_developers_never_see_an_admin_only_document_and_admins_do() -> None:
    gate, directory, _ = admission()
    directory.add("k-dev")
    directory.add("k-admin", roles=["admin"])
    dev = json.loads(resumed(gate.run(ask()))[0].event.citations_json)
    admin = json.loads(resumed(gate.run(ask(key="k-admin")))[0].event.citations_json)
    assert {c["doc_id"] for c in dev} == {"guide"}
    assert {c["doc_id"] for c in admin} == {"guide", "board"}


def test_another_tenants_caller_gets_nothing_of_this_tenant() -> None:
    gate, directory, _ = admission()
    directory.add("k-globex", tenant_id="globex")
    emits = resumed(gate.run(ask(key="k-globex", tenant_id="globex")))
    assert [c["doc_id"] for c in json.loads(emits[0].event.citations_json)] == ["globex"]


@pytest.mark.parametrize(
    ("key", "fields", "code"),
    [
        ("k-narrow", {"allowed_knowledge_bases": ["wiki"]}, "permission_denied"),
        ("k-revoked", {"status": REVOKED}, "permission_denied"),
        ("k-expired", {"expires_at_ms": NOW_MS - 1}, "permission_denied"),
        ("k-ghost", None, "permission_denied"),
        ("jwt:alice", None, "permission_denied"),  # JWTs are off in these settings
        (None, None, "permission_denied"),
    ],
)
def test_callers_who_may_not_read_the_knowledge_base_get_a_403(
    key: str | None, fields: dict | None, code: str
) -> None:
    gate, directory, retrievers = admission()
    if fields is not None:
        directory.add(key, **fields)
    retrievers.fail = True  # refused before any retrieval
    emits = gate.run(ask(key=key))
    assert isinstance(emits, list)
    rejected = emits[0].event
    assert isinstance(rejected, RequestRejected)
    assert (rejected.http_status, rejected.code) == (403, code)
    enrich = next(e.event for e in emits if isinstance(e.event, Span) and e.event.name == "enrich")
    assert enrich.status == "error" and enrich.attributes["result"] == f"refused:{code}"


def test_a_tenant_policy_can_deny_a_knowledge_base() -> None:
    gate, directory, _ = admission()
    directory.add("k-dev")
    directory.rules["acme"] = (
        AccessRule(name="no-docs", effect="deny", actions=["kb:read"], resources=["docs"]),
    )
    rejected = gate.run(ask())[0].event
    assert (rejected.http_status, rejected.code) == (403, "permission_denied")
    assert "no-docs" in rejected.message


def test_anonymous_callers_only_without_required_auth() -> None:
    request = ask(key=None)
    open_auth = AuthSettings(required=False)
    principal = principal_of(request, Directory(), open_auth, now_ms=NOW_MS)
    assert (principal.tenant_id, principal.roles) == ("acme", frozenset({"developer"}))


# -- JWT callers: rebuilt from the facts the bridge verified and journaled ---------------------

JWT_AUTH = AuthSettings(
    jwt=JwtSettings(enabled=True, algorithms=["HS256"], hmac_secret=SecretStr("s" * 32))
)


def facts(subject: str = "alice", tenant_id: str = "acme", **fields: Any) -> VerifiedPrincipal:
    fields.setdefault("roles", ["developer"])
    fields.setdefault("expires_at_ms", NOW_MS + 60_000)
    return VerifiedPrincipal(method="jwt", tenant_id=tenant_id, subject=subject, **fields)


def jwt_ask(verified: VerifiedPrincipal | None, *, key: str = "jwt:alice") -> RequestReceived:
    return ask(key=key).model_copy(update={"principal": verified})


def jwt_admission(store: InMemoryVectorStore | None = None) -> tuple[Admission, Directory]:
    config = settings().model_copy(update={"auth": JWT_AUTH})
    gate, directory, _ = admission(config, store=store)
    return gate, directory


def test_a_jwt_principal_is_rebuilt_from_its_journaled_facts() -> None:
    directory = Directory()
    directory.tenants["acme"] = tenant(
        "acme", allowed_knowledge_bases=["docs"], attributes={"region": "eu"}
    )
    verified = facts(roles=["viewer"], attributes={"groups": "sre", "region": "us"})
    principal = principal_of(jwt_ask(verified), directory, JWT_AUTH, now_ms=NOW_MS)
    assert (principal.method, principal.subject, principal.api_key_id) == (
        "jwt",
        "alice",
        "jwt:alice",
    )
    assert principal.roles == {"viewer"} and principal.key_id is None
    assert principal.attributes == {"groups": "sre", "region": "eu"}  # the tenant's win
    assert principal.tenant_knowledge_bases == ("docs",)
    assert principal.expires_at_ms == verified.expires_at_ms


@pytest.mark.parametrize(
    ("auth", "verified", "key", "status", "code"),
    [
        (AuthSettings(), facts(), "jwt:alice", 403, "permission_denied"),  # JWTs off here
        (JWT_AUTH, None, "jwt:alice", 403, "unverified_principal"),  # an older bridge
        (JWT_AUTH, facts("mallory"), "jwt:alice", 403, "unverified_principal"),
        (JWT_AUTH, facts(expires_at_ms=NOW_MS - 31_000), "jwt:alice", 401, "expired_token"),
        (JWT_AUTH, facts(expires_at_ms=None), "jwt:alice", 401, "expired_token"),
        (JWT_AUTH, facts(tenant_id="newco"), "jwt:alice", 403, "permission_denied"),
    ],
)
def test_jwt_facts_that_do_not_hold_are_refused(
    auth: AuthSettings, verified: VerifiedPrincipal | None, key: str, status: int, code: str
) -> None:
    with pytest.raises(RefusedError) as refused:
        principal_of(jwt_ask(verified, key=key), Directory(), auth, now_ms=NOW_MS)
    assert (refused.value.refusal.http_status, refused.value.refusal.code) == (status, code)


def test_a_token_within_the_leeway_and_an_unknown_tenant_when_allowed_pass() -> None:
    late = facts(expires_at_ms=NOW_MS - 29_000)  # the verifier's 30 s leeway
    assert principal_of(jwt_ask(late), Directory(), JWT_AUTH, now_ms=NOW_MS).subject == "alice"
    lenient = JWT_AUTH.model_copy(
        update={"jwt": JWT_AUTH.jwt.model_copy(update={"require_known_tenant": False})}
    )
    newco = facts(tenant_id="newco")
    assert principal_of(jwt_ask(newco), Directory(), lenient, now_ms=NOW_MS).tenant_id == "newco"
    directory = Directory()
    directory.tenants["acme"] = tenant("acme").model_copy(update={"status": "disabled"})
    with pytest.raises(RefusedError):
        principal_of(jwt_ask(facts()), directory, JWT_AUTH, now_ms=NOW_MS)


def test_jwt_callers_get_what_their_roles_and_groups_may_read() -> None:
    store = seeded_store()
    store.upsert(
        "docs",
        [record("pager#c0", "The gateway retries pages to on-call.", acl=("group:oncall",))],
    )
    gate, _ = jwt_admission(store)

    def cited(verified: VerifiedPrincipal) -> set[str]:
        task = resumed(gate.run(jwt_ask(verified)))[0].event
        return {c["doc_id"] for c in json.loads(task.citations_json)}

    assert cited(facts()) == {"guide"}
    assert cited(facts(attributes={"groups": "sre,oncall"})) == {"guide", "pager"}
    assert cited(facts(roles=["admin"])) == {"guide", "board"}
    assert cited(facts(roles=["viewer"])) == {"guide"}


def test_a_jwt_without_a_reading_role_or_past_its_expiry_never_retrieves() -> None:
    gate, _ = jwt_admission()
    for verified, code in (
        (facts(roles=[]), "permission_denied"),
        (facts(roles=["auditor"]), "permission_denied"),
        (facts(expires_at_ms=NOW_MS - 60_000), "expired_token"),
    ):
        emits = gate.run(jwt_ask(verified))
        assert isinstance(emits, list), verified  # refused before any retrieval
        rejected = emits[0].event
        assert isinstance(rejected, RequestRejected) and rejected.code == code
        assert not any(isinstance(e.event, InferenceTask | RequestEnriched) for e in emits)


def test_a_failed_retrieval_is_a_503_or_goes_on_without_context() -> None:
    gate, directory, retrievers = admission()
    directory.add("k-dev")
    retrievers.fail = True
    emits = resumed(gate.run(ask()))
    rejected = emits[0].event
    assert (rejected.http_status, rejected.code) == (503, "retrieval_unavailable")
    enrich = next(e.event for e in emits if isinstance(e.event, Span) and e.event.name == "enrich")
    assert enrich.status == "error" and "store unreachable" in enrich.attributes["error"]

    gate, directory, retrievers = admission(settings(on_retrieval_error="continue"))
    directory.add("k-dev")
    retrievers.fail = True
    task = resumed(gate.run(ask()))[0].event
    assert isinstance(task, InferenceTask) and len(task.messages) == 2
    assert task.citations_json is None


def test_an_empty_knowledge_base_adds_no_context_and_no_citations() -> None:
    gate, directory, _ = admission(store=InMemoryVectorStore())  # no collection at all
    directory.add("k-dev")
    emits = resumed(gate.run(ask()))
    task = emits[0].event
    assert len(task.messages) == 2 and json.loads(task.citations_json) == []
    enrich = next(e.event for e in emits if isinstance(e.event, Span) and e.event.name == "enrich")
    assert enrich.attributes["result"] == "empty"


def test_limits_hold_the_context_budget_before_it_is_known() -> None:
    gate, directory, _ = admission()
    directory.add("k-dev")
    plain = gate.run(ask("chat"))[0].event
    enriched = resumed(gate.run(ask()))[0].event
    assert enriched.estimated_tokens - plain.estimated_tokens >= 400


def test_a_cached_enriched_answer_still_carries_its_citations() -> None:
    config = settings()
    gate, directory, _ = admission(config, cache=ResponseCache(config.cache, {}))
    directory.add("k-dev")
    task = resumed(gate.run(ask()))[0].event
    assert task.cache_key is not None  # keyed on the enriched prompt
    CacheFiller(cache=gate._cache).run(
        CacheFill(
            **envelope(tenant_id="acme"),
            cache_key_json=task.cache_key,
            content="With backoff [1].",
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=4,
            deployment="a",
            provider_model="gpt-x",
            usd=0.001,
            latency_ms=5.0,
        )
    )
    again = resumed(gate.run(ask()))
    response = next(e.event for e in again if isinstance(e.event, ResponseReady))
    assert response.cache_hit and json.loads(response.citations_json)[0]["doc_id"] == "guide"


def test_inference_copies_the_citations_to_the_answer_and_the_last_chunk() -> None:
    gate, directory, _ = admission()
    directory.add("k-dev")
    task = resumed(gate.run(ask()))[0].event
    finisher = Finisher()
    assert finisher.chunk(task, 0, "With").event.citations_json is None
    last = finisher.chunk(task, 1, "", finish_reason="stop", usage=TokenUsage(
        prompt_tokens=1, completion_tokens=1, total_tokens=2
    )).event  # fmt: skip
    assert last.citations_json == task.citations_json
    retry = task.model_copy(update={"attempt": 2})  # retries and fallbacks copy the task
    assert retry.citations_json == task.citations_json


def test_helpers() -> None:
    request = ask()
    assert query_of(request) == "How does the gateway retry?"
    placed = with_context(request, "CTX", preamble="Use:")
    assert [m.role for m in placed.messages] == ["system", "system", "user"]
    assert placed.messages[1].content == "Use:\n\nCTX"
    alias = ModelAlias(name="x", deployments=["a"], knowledge_base="docs")
    assert requested_knowledge_base(ask("x", extra={"sluicegate": {}}), alias) == "docs"
    assert requested_knowledge_base(ask("x"), None) is None
    paused = cited(AwaitingEmbedding("q", lambda _v: [Emit("responses", "r", _answer())]), "[9]")
    assert isinstance(paused, AwaitingEmbedding)
    assert paused.resume(None)[0].event.citations_json == "[9]"


def _answer() -> ResponseReady:
    return ResponseReady(
        **envelope(),
        model="chat",
        deployment="a",
        provider_model="gpt-x",
        message=ChatMessage(role="assistant", content="hi"),
        finish_reason="stop",
        usage=TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
        latency_ms=1.0,
    )


def test_retrieval_outcome_never_raises() -> None:
    gate, directory, retrievers = admission()
    directory.add("k-dev")
    outcome = gate.run(ask())
    retrievers.fail = True
    result = outcome.retrieve()
    assert isinstance(result, RetrievalOutcome) and isinstance(result.error, OSError)


def test_routing_leaves_room_in_the_context_window_for_the_retrieved_context() -> None:
    config = Settings(
        deployments=[
            Deployment(name="small", backend="openai", provider_model="s", context_window=300),
            Deployment(
                name="large", backend="openai", provider_model="l", context_window=8000, priority=1
            ),
        ],
        models=[
            ModelAlias(name="chat", deployments=["small", "large"]),
            ModelAlias(name="rag-chat", deployments=["small", "large"], knowledge_base="docs"),
        ],
        rag=RagSettings(context_token_budget=400),
    )
    gate, directory, _ = admission(config)
    directory.add("k-dev")
    assert gate.run(ask("chat"))[0].event.deployment == "small"  # the bare prompt fits
    enriched = resumed(gate.run(ask()))[0].event
    # 400 tokens of context would not fit a 300-token window: routed past it.
    assert enriched.deployment == "large" and enriched.fallbacks == []
