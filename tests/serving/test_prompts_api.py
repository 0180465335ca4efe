"""The prompt routes of the admin API: roles, tenant isolation, publish → label → rollback →
render, and a 4xx with the registry's code for every refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sluicegate.connectors.key_hashing import Argon2SecretHasher
from sluicegate.errors import BrokerError
from sluicegate.processors.identity import IdentityRegistry, identity_envelope, issue_key
from sluicegate.processors.prompt_registry import PromptRegistry, prompt_key
from sluicegate.schemas.models import ApiKeyRecord, PromptVersionPublished, TenantRecord
from sluicegate.serving.admin_api import AdminAudit
from sluicegate.serving.prompts_api import JournalPromptPublisher, build_prompts_app
from sluicegate.settings import AuthSettings
from tests.fakes.embedders import HashEmbedder

pytestmark = pytest.mark.unit

NOW = 1_800_000_000_000
HASHER = Argon2SecretHasher(time_cost=1, memory_kib=64, parallelism=1)
AUTH = AuthSettings(operator_tenant="ops")
PEOPLE = {
    "admin": ("acme", ["admin"]),
    "dev": ("acme", ["developer"]),
    "viewer": ("acme", ["viewer"]),
    "globex": ("globex", ["developer"]),
}
BASE = "/admin/v1/prompts"
SUPPORT = {
    "name": "support",
    "template": "Answer {{ question }}.",
    "variables": {"question": {"type": "string"}},
    "labels": ["prod"],
}


class FakePublisher:
    def __init__(self) -> None:
        self.events: list[PromptVersionPublished] = []
        self.fail = False

    async def publish(self, event: PromptVersionPublished) -> None:
        if self.fail:
            raise BrokerError("broker down", topic="sg.prompts", retriable=True)
        self.events.append(event)


@dataclass
class World:
    prompts: PromptRegistry
    publisher: FakePublisher
    tokens: dict[str, str]
    audit: list[AdminAudit] = field(default_factory=list)
    app: web.Application = field(default_factory=web.Application)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def world() -> World:
    identity = IdentityRegistry(settings=AUTH, hasher=HASHER)
    for tenant in ("acme", "globex"):
        identity.apply(
            TenantRecord(
                **identity_envelope(tenant, producer="t"), name=tenant, status="active", revision=1
            )
        )
    tokens = {}
    for who, (tenant, roles) in PEOPLE.items():
        issued = issue_key(AUTH.key_prefix)
        identity.apply(
            ApiKeyRecord(
                **identity_envelope(tenant, producer="t"),
                key_id=issued.key_id,
                name=who,
                secret_hash=HASHER.hash(issued.secret),
                roles=roles,
                status="active",
                created_at_ms=NOW,
                revision=1,
            )
        )
        tokens[who] = issued.token
    world = World(PromptRegistry(), FakePublisher(), tokens)

    async def audit(entry: AdminAudit) -> None:
        world.audit.append(entry)

    world.app = build_prompts_app(
        identity=identity,
        prompts=world.prompts,
        publisher=world.publisher,
        clock=lambda: NOW + len(world.publisher.events),
        audit=audit,
        embed=HashEmbedder().embed,
    )
    return world


@pytest_asyncio.fixture(loop_scope="function")
async def client(world: World) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(world.app)) as client:
        yield client


async def call(
    client: TestClient, world: World, who: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    response = await client.request(method, path, json=body, headers=world.auth(who))
    return response.status, await response.json()


async def test_publish_then_read_it_back(client: TestClient, world: World) -> None:
    status, body = await call(client, world, "dev", "POST", BASE, SUPPORT)
    assert status == 201 and body["prompt_ref"] == "support@1" and body["labels"] == ["prod"]
    event = world.publisher.events[0]
    assert prompt_key(event) == "acme/support@1" and event.author == body["author"]
    status, body = await call(
        client, world, "dev", "POST", BASE, {**SUPPORT, "template": "Please answer {{ question }}."}
    )
    assert (status, body["semver"], body["version"]) == (200, "1.1.0", 2)

    status, listed = await call(client, world, "viewer", "GET", BASE)
    assert status == 200 and [p["name"] for p in listed["data"]] == ["support"]
    assert listed["data"][0]["latest"]["version"] == 2 and listed["data"][0]["labels"] == {
        "prod": 2
    }
    status, one = await call(client, world, "viewer", "GET", f"{BASE}/support?ref=1")
    assert [v["version"] for v in one["versions"]] == [2, 1]
    assert one["resolved"]["template"] == "Answer {{ question }}."
    status, diff = await call(client, world, "viewer", "GET", f"{BASE}/support/diff?a=1&b=prod")
    assert status == 200 and "+Please answer {{ question }}." in diff["diff"]
    assert (diff["a"], diff["b"]) == ("support@1", "support@2")
    assert world.audit[0].action == "admin.prompts.publish" and world.audit[0].tenant_id == "acme"


async def test_labels_rollback_and_render(client: TestClient, world: World) -> None:
    await call(client, world, "dev", "POST", BASE, SUPPORT)
    await call(client, world, "dev", "POST", BASE, {**SUPPORT, "template": "Hi {{ question }}"})
    status, body = await call(client, world, "admin", "POST", f"{BASE}/support/rollback", {})
    assert status == 200 and (body["version"], body["labels"]) == (1, ["prod"])
    status, body = await call(
        client, world, "dev", "POST", f"{BASE}/support/labels", {"label": "canary", "version": 2}
    )
    assert status == 200 and body["labels"] == ["canary"]
    request = {
        "ref": "canary",
        "variables": {"question": "why"},
        "messages": [{"role": "system", "content": "S"}],
    }
    status, rendered = await call(
        client, world, "viewer", "POST", f"{BASE}/support/render", request
    )
    assert status == 200 and rendered["prompt_ref"] == "support@2"
    assert rendered["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Hi why"},
    ]
    status, rendered = await call(
        client, world, "viewer", "POST", f"{BASE}/support/render", {"variables": {"question": "x"}}
    )
    assert rendered["prompt_ref"] == "support@2"  # bare name: the latest (no `default`)
    audit = [(a.action, a.outcome) for a in world.audit]
    assert ("admin.prompts.rollback", "ok") in audit and ("admin.prompts.render", "ok") in audit


NO_CHANGE, BAD_VARS = "prompt_no_change", "prompt_variables_invalid"
BAD_BODY, LABELS = "invalid_body", f"{BASE}/support/labels"


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status", "code"),
    [
        ("viewer", "POST", BASE, SUPPORT, 403, "permission_denied"),
        ("viewer", "POST", f"{BASE}/support/rollback", {}, 403, "permission_denied"),
        ("dev", "GET", f"{BASE}/nope", None, 404, "prompt_not_found"),
        ("globex", "GET", f"{BASE}/support", None, 404, "prompt_not_found"),
        ("dev", "GET", f"{BASE}/support?ref=7", None, 404, "prompt_version_not_found"),
        ("dev", "GET", f"{BASE}/support?ref=canary", None, 404, "prompt_label_not_found"),
        ("dev", "GET", f"{BASE}/support/diff?a=1", None, 422, "invalid_query"),
        ("dev", "POST", BASE, {**SUPPORT, "template": "{{ city }}"}, 422, "prompt_invalid"),
        ("dev", "POST", BASE, SUPPORT, 409, "prompt_no_change"),
        ("dev", "POST", BASE, {"name": "x", "tempalte": "typo"}, 422, "invalid_body"),
        ("dev", "POST", f"{BASE}/support/labels", {"label": "prod", "version": 1}, 409, NO_CHANGE),
        ("dev", "POST", f"{BASE}/support/labels", {"label": "prod"}, 422, "invalid_body"),
        ("dev", "POST", f"{BASE}/support/rollback", {}, 404, "prompt_version_not_found"),
        ("dev", "POST", f"{BASE}/support/render", {"variables": {}}, 400, BAD_VARS),
        ("dev", "POST", f"{BASE}/support/render", {"variables": {"q": "q"}}, 400, BAD_VARS),
        # references the registry cannot parse are refused before it sees them (were 500s)
        ("dev", "GET", f"{BASE}/support?ref=%C2%B2", None, 422, "invalid_query"),
        ("dev", "GET", f"{BASE}/support?ref={'9' * 5000}", None, 422, "invalid_query"),
        ("dev", "GET", f"{BASE}/support/diff?a=1&b=%C2%B2", None, 422, "invalid_query"),
        ("dev", "POST", f"{BASE}/support/render", {"ref": "\u00b2"}, 422, "invalid_body"),
        ("dev", "GET", f"{BASE}/support?ref=", None, 422, "invalid_query"),
        ("dev", "GET", f"{BASE}?colour=red", None, 422, "invalid_query"),
        ("dev", "POST", LABELS, {"label": "x", "version": "1"}, 422, BAD_BODY),
        ("dev", "POST", LABELS, {"label": "1x", "version": 1}, 422, BAD_BODY),
        ("dev", "POST", BASE, {**SUPPORT, "name": "../x"}, 422, BAD_BODY),
    ],
)  # fmt: skip
async def test_every_refusal_is_a_4xx_with_its_code(
    client: TestClient,
    world: World,
    who: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
) -> None:
    assert (await call(client, world, "dev", "POST", BASE, SUPPORT))[0] == 201
    got, answer = await call(client, world, who, method, path, body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"]["message"]
    assert world.audit[-1].status == status


async def test_without_a_key_and_with_bad_bodies(client: TestClient, world: World) -> None:
    response = await client.get(BASE)
    assert response.status == 401
    response = await client.post(
        BASE, data=b"{", headers={**world.auth("dev"), "Content-Type": "application/json"}
    )
    assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_json"
    response = await client.post(
        BASE, data=b"name: x", headers={**world.auth("dev"), "Content-Type": "text/yaml"}
    )
    assert response.status == 415
    response = await client.post(
        BASE,
        data=b'{"name": "x", "template": "\\ud800"}',
        headers={**world.auth("dev"), "Content-Type": "application/json"},
    )
    assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_json"


async def test_a_failed_publish_changes_nothing(client: TestClient, world: World) -> None:
    world.publisher.fail = True
    status, body = await call(client, world, "dev", "POST", BASE, SUPPORT)
    assert (status, body["error"]["code"]) == (503, "publish_failed")
    assert world.prompts.names("acme") == []


async def test_the_journal_adapter_keys_by_version() -> None:
    sent: list[tuple[str, Any, bytes]] = []

    class Journal:
        async def publish(self, topic: str, key: Any, value: bytes) -> None:
            sent.append((topic, key, value))

    class Serde:
        def encode(self, event: Any) -> bytes:
            return event.prompt_name.encode()

    event = PromptRegistry().publish("acme", "p", template="x")
    await JournalPromptPublisher(journal=Journal(), serde=Serde(), topic="sg.prompts").publish(
        event
    )
    assert sent == [("sg.prompts", "acme/p@1", b"p")]
