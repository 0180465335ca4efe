"""RAG end to end: upload over HTTP → the rag worker indexes it → a chat request on an alias
with a knowledge base reaches the upstream with the retrieved context and comes back with
citations; other tenants and roles the document's ACL leaves out never see it. JWT callers are
enriched by the roles and groups the bridge verified, and a document deleted over HTTP leaves
search and chat."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import openai
import pytest
from pydantic import SecretStr

from sluicegate.settings import (
    AccessRule,
    BridgeSettings,
    JwtSettings,
    KafkaSettings,
    ModelAlias,
    RagSettings,
    Settings,
    WorkerSettings,
)
from sluicegate.streams.topics import ensure_topics
from tests.conftest import (
    ADMIN,
    CALLER,
    GLOBEX,
    CallerKey,
    Workers,
    _spawn,
    _stop,
    free_port,
    publish_test_keys,
    start_bridge,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

KB = "handbook"
PUBLIC = (
    "# Incident handbook\n\n## Paging\n\n"
    "The on-call engineer acknowledges a page within 7 minutes, then opens the incident "
    "channel named after the ticket number."
)
SECRET = (
    "# Board notes\n\nThe emergency budget for incident response is 42,000 euros; only "
    "admins may read this."
)


JWT_SECRET = "an-hs256-secret-of-the-rag-tests-0123456789"
JWT = JwtSettings(
    enabled=True,
    algorithms=["HS256"],
    hmac_secret=SecretStr(JWT_SECRET),
    attribute_claims={"groups": "groups", "department": "department"},
)
# JWT callers read the handbook only from a staff department: an attribute rule the worker can
# only apply to a chat request from the facts the bridge journaled.
STAFF_ONLY = AccessRule(
    name="handbook-staff",
    effect="deny",
    actions=["kb:read"],
    resources=[KB],
    when={"method": "jwt"},
    unless={"department": ["sre", "support"]},
)


@dataclass(frozen=True)
class Token:
    """A JWT caller of the default tenant (what `Rag` needs of a caller: a token)."""

    roles: tuple[str, ...]
    groups: str | None = None
    department: str | None = "sre"
    subject: str = "alice"

    @property
    def token(self) -> str:
        claims: dict[str, Any] = {
            "sub": self.subject,
            "tenant": "default",
            "roles": list(self.roles),
            "exp": int(time.time()) + 600,
        }
        for name in ("groups", "department"):
            if getattr(self, name) is not None:
                claims[name] = getattr(self, name)
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@dataclass
class Rag:
    settings: Settings
    url: str

    def client(self, key: CallerKey | Token) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=key.token, max_retries=0, timeout=60
        )

    def upload(self, key: CallerKey, name: str, text: str, **params: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/knowledge/{KB}/documents",
            params={"filename": name, **params},
            content=text.encode(),
            headers={"Authorization": f"Bearer {key.token}", "Content-Type": "text/markdown"},
            timeout=30,
        )

    def delete(self, key: CallerKey | Token, doc_id: str) -> httpx.Response:
        return httpx.delete(
            f"{self.url}/v1/knowledge/{KB}/documents/{doc_id}",
            headers={"Authorization": f"Bearer {key.token}"},
            timeout=30,
        )

    def search(self, key: CallerKey | Token, query: str) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/v1/knowledge/{KB}/search",
            json={"query": query},
            headers={"Authorization": f"Bearer {key.token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def rag(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rag]:
    run = uuid.uuid4().hex[:8]
    own = settings.model_copy(
        update={
            "kafka": KafkaSettings(
                bootstrap_servers=settings.kafka.bootstrap_servers, topic_prefix=f"g{run}."
            ),
            "worker": WorkerSettings(
                app_id=f"sluicegate-rag-{run}",
                inference_concurrency=4,
                data_dir=tmp_path_factory.mktemp("rag-worker"),
                metrics_port=None,
                inference_metrics_port=None,
            ),
            "bridge": BridgeSettings(port=free_port(), request_timeout_s=60),
            "auth": settings.auth.model_copy(
                update={"jwt": JWT, "rules": [*settings.auth.rules, STAFF_ONLY]}
            ),
            "rag": RagSettings(
                path=tmp_path_factory.mktemp("rag-lancedb"), embed_batch_s=0.1, index_batch_s=0.2
            ),
            "models": [
                *settings.models,
                ModelAlias(name="gpt-rag", deployments=["fake"], knowledge_base=KB),
            ],
        }
    )
    ensure_topics(own)
    publish_test_keys(own)
    logs = tmp_path_factory.mktemp("rag-logs")
    workers = Workers(own, logs)
    rag_worker = _spawn("rag", own, logs / "rag.log")
    bridge: subprocess.Popen[bytes] | None = None
    try:
        workers.wait_ready()
        bridge = start_bridge(own, logs / "bridge.log")
        yield Rag(own, f"http://127.0.0.1:{own.bridge.port}")
    finally:
        if bridge is not None:
            _stop(bridge)
        _stop(rag_worker)
        workers.stop()


@pytest.fixture(scope="module")
def indexed(rag: Rag) -> dict[str, str]:
    """The two documents, uploaded over HTTP and searchable; their doc ids."""
    public = rag.upload(CALLER, "paging.md", PUBLIC)
    assert public.status_code == 202, public.text
    secret = rag.upload(CALLER, "board.md", SECRET, acl="role:admin")
    assert secret.status_code == 202, secret.text
    assert secret.json()["documents"][0]["acl"] == ["role:admin"]
    deadline = time.monotonic() + 60
    while True:
        found = {d["doc_id"] for d in rag.search(ADMIN, "incident")["data"]}
        if {"paging.md", "board.md"} <= found:
            return {"public": public.json()["doc_id"], "secret": secret.json()["doc_id"]}
        assert time.monotonic() < deadline, f"not searchable after 60 s: {found}"
        time.sleep(0.5)


def sent_with(upstream: Any, marker: str) -> dict[str, Any]:
    """The body the fake upstream received for the request whose question holds `marker`."""
    matches = [r for r in upstream.requests if marker in r["messages"][-1]["content"]]
    assert len(matches) == 1, f"{len(matches)} upstream requests carry {marker}"
    return matches[0]


def test_an_alias_with_a_knowledge_base_answers_with_context_and_citations(
    rag: Rag, indexed: dict[str, str], upstream: Any
) -> None:
    marker = uuid.uuid4().hex[:8]
    question = f"How fast must on-call acknowledge a page? ({marker})"
    started = time.perf_counter()
    reply = rag.client(CALLER).chat.completions.create(
        model="gpt-rag", messages=[{"role": "user", "content": question}]
    )
    took = time.perf_counter() - started
    sent = sent_with(upstream, marker)
    system = [m["content"] for m in sent["messages"] if m["role"] == "system"]
    assert len(system) == 1 and "[1] Incident handbook" in system[0]
    assert "within 7 minutes" in system[0] and "42,000" not in system[0]
    citations = reply.model_extra["sluicegate"]["citations"]
    assert [c["doc_id"] for c in citations] == [indexed["public"]]
    assert citations[0]["number"] == 1 and citations[0]["title"] == "Incident handbook"
    assert citations[0]["chunk_ids"] and citations[0]["spans"][0]["end"] > 0
    print(f"\nenriched request answered in {took * 1000:.0f} ms")

    # The same knowledge base named per request, on an alias without one; and streamed.
    marker = uuid.uuid4().hex[:8]
    chunks = list(
        rag.client(CALLER).chat.completions.create(
            model="gpt-fake",
            messages=[{"role": "user", "content": f"Who opens the incident channel? ({marker})"}],
            extra_body={"sluicegate": {"knowledge_base": KB}},
            stream=True,
        )
    )
    assert "within 7 minutes" in sent_with(upstream, marker)["messages"][0]["content"]
    last = chunks[-1].model_extra or {}
    assert [c["doc_id"] for c in last["sluicegate"]["citations"]] == [indexed["public"]]


def test_a_document_the_acl_keeps_from_a_role_is_never_retrieved(
    rag: Rag, indexed: dict[str, str], upstream: Any
) -> None:
    for key, sees in ((CALLER, False), (ADMIN, True)):
        marker = uuid.uuid4().hex[:8]
        reply = rag.client(key).chat.completions.create(
            model="gpt-rag",
            messages=[{"role": "user", "content": f"What is the emergency budget? ({marker})"}],
        )
        cited = {c["doc_id"] for c in reply.model_extra["sluicegate"]["citations"]}
        context = " ".join(
            m["content"] for m in sent_with(upstream, marker)["messages"] if m["role"] == "system"
        )
        assert (indexed["secret"] in cited) is sees
        assert ("42,000" in context) is sees
        found = {d["doc_id"] for d in rag.search(key, "emergency budget board")["data"]}
        assert (indexed["secret"] in found) is sees


def test_another_tenant_gets_nothing_from_this_knowledge_base(
    rag: Rag, indexed: dict[str, str], upstream: Any
) -> None:
    assert rag.search(GLOBEX, "incident page on-call")["data"] == []
    marker = uuid.uuid4().hex[:8]
    reply = rag.client(GLOBEX).chat.completions.create(
        model="gpt-rag",
        messages=[{"role": "user", "content": f"How fast is a page acknowledged? ({marker})"}],
    )
    assert reply.model_extra["sluicegate"]["citations"] == []
    assert [m["role"] for m in sent_with(upstream, marker)["messages"]] == ["user"]


def test_uploads_need_kb_write_and_a_readable_file(rag: Rag) -> None:
    refused = httpx.post(
        f"{rag.url}/v1/knowledge/{KB}/documents",
        content=b"%PDF-1.7 broken",
        headers={"Authorization": f"Bearer {CALLER.token}", "Content-Type": "application/pdf"},
        timeout=30,
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unreadable_document"
    anonymous = httpx.post(f"{rag.url}/v1/knowledge/{KB}/search", json={"query": "x"})
    assert anonymous.status_code == 401


def test_what_enrichment_adds_to_a_request(rag: Rag, indexed: dict[str, str]) -> None:
    client = rag.client(CALLER)

    def p50(model: str) -> float:
        took = []
        for i in range(12):
            started = time.perf_counter()
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"Paging rules, take {i}?"}]
            )
            took.append(time.perf_counter() - started)
        return sorted(took[2:])[len(took[2:]) // 2] * 1000  # the first two warm up

    plain, enriched = p50("gpt-fake"), p50("gpt-rag")
    print(f"\nround trip p50: {plain:.0f} ms plain, {enriched:.0f} ms enriched")
    assert enriched - plain < 1500  # retrieval is tens of ms; seconds would be a regression


ROTA = (
    "# On-call rota\n\nThe standby pager for the quarter is held by the storage team; the "
    "escalation passphrase is walrus-lantern."
)


def cited(reply: Any) -> set[str]:
    return {c["doc_id"] for c in reply.model_extra["sluicegate"]["citations"]}


def test_jwt_callers_are_enriched_by_their_verified_roles_and_groups(
    rag: Rag, indexed: dict[str, str], upstream: Any
) -> None:
    rota = rag.upload(CALLER, "rota.md", ROTA, acl="group:oncall")
    assert rota.status_code == 202, rota.text
    oncall = Token(roles=("developer",), groups="sre,oncall")
    deadline = time.monotonic() + 60
    while "rota.md" not in {d["doc_id"] for d in rag.search(oncall, "standby pager")["data"]}:
        assert time.monotonic() < deadline, "rota.md not searchable after 60 s"
        time.sleep(0.5)

    def ask(caller: Token, question: str) -> tuple[set[str], str]:
        marker = uuid.uuid4().hex[:8]
        reply = rag.client(caller).chat.completions.create(
            model="gpt-rag", messages=[{"role": "user", "content": f"{question} ({marker})"}]
        )
        sent = sent_with(upstream, marker)["messages"]
        return cited(reply), " ".join(m["content"] for m in sent if m["role"] == "system")

    # In the group: the group's document is cited, its text reached the model.
    sources, context = ask(oncall, "Who holds the standby pager?")
    assert "rota.md" in sources and "walrus-lantern" in context
    # The same role without the group: never the group's document.
    sources, context = ask(Token(roles=("developer",), groups="sre"), "Who holds the pager?")
    assert "rota.md" not in sources and "walrus-lantern" not in context
    # Roles decide the rest, as for a key: an admin reads the board notes, a service does not.
    sources, context = ask(Token(roles=("admin",)), "What is the emergency budget?")
    assert indexed["secret"] in sources and "42,000" in context
    sources, context = ask(Token(roles=("service",)), "What is the emergency budget?")
    assert indexed["secret"] not in sources and "42,000" not in context

    # Outside a staff department (the attribute rule), even in the group: the bridge lets the
    # chat request in (model:use), admission refuses it (kb:read), nothing reaches the model.
    marker = uuid.uuid4().hex[:8]
    outsider = Token(roles=("developer",), groups="oncall", department="sales")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        rag.client(outsider).chat.completions.create(
            model="gpt-rag",
            messages=[{"role": "user", "content": f"Who holds the standby pager? ({marker})"}],
        )
    assert refused.value.status_code == 403 and "handbook-staff" in str(refused.value)
    assert not [r for r in upstream.requests if marker in r["messages"][-1]["content"]]
    assert (
        rag.client(outsider)
        .chat.completions.create(  # the same caller, no knowledge base
            model="gpt-fake", messages=[{"role": "user", "content": "Hello?"}]
        )
        .choices
    )


def test_a_document_deleted_over_http_leaves_search_and_chat(
    rag: Rag, indexed: dict[str, str], upstream: Any
) -> None:
    text = "# Heliograph\n\nThe heliograph on the roof signals the ferry at noon."
    assert rag.upload(CALLER, "heliograph.md", text).status_code == 202

    def found() -> bool:
        return "heliograph.md" in {d["doc_id"] for d in rag.search(CALLER, "heliograph")["data"]}

    def wait(until: bool) -> None:
        deadline = time.monotonic() + 60
        while found() is not until:
            assert time.monotonic() < deadline, f"searchable is not {until} after 60 s"
            time.sleep(0.5)

    wait(True)
    refused = rag.delete(Token(roles=("viewer",)), "heliograph.md")  # kb:read only
    assert refused.status_code == 403
    answer = rag.delete(CALLER, "heliograph.md")
    assert answer.status_code == 202, answer.text
    assert answer.json()["doc_id"] == "heliograph.md"
    wait(False)
    marker = uuid.uuid4().hex[:8]
    reply = rag.client(CALLER).chat.completions.create(
        model="gpt-rag",
        messages=[{"role": "user", "content": f"What does the heliograph signal? ({marker})"}],
    )
    assert "heliograph.md" not in cited(reply)
    assert rag.upload(CALLER, "heliograph.md", text).status_code == 202  # it can come back
    wait(True)
