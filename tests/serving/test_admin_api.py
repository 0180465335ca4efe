"""The admin API: authentication and role checks on every route, tenant isolation, the key
lifecycle (create, rotate, revoke), model access, policies, bad input, and a schemathesis run
over the served OpenAPI description (which covers the prompt routes mounted next to it)."""

from __future__ import annotations

import asyncio
import re
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import hypothesis
import pytest
import pytest_asyncio
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sluicegate.connectors.key_hashing import Argon2SecretHasher
from sluicegate.errors import BrokerError
from sluicegate.processors.identity import (
    IdentityRecord,
    IdentityRegistry,
    identity_envelope,
    issue_key,
)
from sluicegate.processors.prompt_registry import PromptRegistry
from sluicegate.schemas.models import (
    ApiKeyRecord,
    PolicyRecord,
    PromptVersionPublished,
    TenantRecord,
)
from sluicegate.serving.admin_api import ROUTES, AdminAudit, build_admin_app, openapi
from sluicegate.serving.prompts_api import PROMPT_ROUTES, PromptsApi
from sluicegate.settings import AuthSettings, Settings

pytestmark = pytest.mark.unit

NOW = 1_800_000_000_000
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5", "smollm2-135m"]
HASHER = Argon2SecretHasher(time_cost=1, memory_kib=64, parallelism=1)
SETTINGS = Settings(auth=AuthSettings(operator_tenant="ops"))

# who: (tenant, roles)
PEOPLE = {
    "operator": ("ops", ["admin"]),
    "acme-admin": ("acme", ["admin"]),
    "acme-dev": ("acme", ["developer"]),
    "acme-viewer": ("acme", ["viewer"]),
    "acme-service": ("acme", ["service"]),
    "globex-admin": ("globex", ["admin"]),
}


class FakePublisher:
    def __init__(self) -> None:
        self.records: list[IdentityRecord] = []
        self.fail = False

    async def publish(self, record: IdentityRecord) -> None:
        if self.fail:
            raise BrokerError("broker down", topic="sg.identity", retriable=True)
        self.records.append(record)


class FakePromptPublisher:
    def __init__(self) -> None:
        self.events: list[PromptVersionPublished] = []

    async def publish(self, event: PromptVersionPublished) -> None:
        self.events.append(event)


@dataclass
class World:
    registry: IdentityRegistry
    publisher: FakePublisher
    app: web.Application
    tokens: dict[str, str]
    key_ids: dict[str, str]
    audit: list[AdminAudit] = field(default_factory=list)
    now: list[int] = field(default_factory=lambda: [NOW])
    prompts: PromptRegistry = field(default_factory=PromptRegistry)
    prompt_publisher: FakePromptPublisher = field(default_factory=FakePromptPublisher)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


def make_world() -> World:
    registry = IdentityRegistry(settings=SETTINGS.auth, hasher=HASHER)
    for tenant_id in ("ops", "acme", "globex"):
        registry.apply(
            TenantRecord(
                **identity_envelope(tenant_id, producer="test"),
                name=tenant_id,
                status="active",
                revision=1,
            )
        )
    tokens, key_ids = {}, {}
    for who, (tenant_id, roles) in PEOPLE.items():
        issued = issue_key(SETTINGS.auth.key_prefix)
        registry.apply(
            ApiKeyRecord(
                **identity_envelope(tenant_id, producer="test"),
                key_id=issued.key_id,
                name=who,
                secret_hash=HASHER.hash(issued.secret),
                roles=roles,
                status="active",
                created_at_ms=NOW,
                revision=1,
            )
        )
        tokens[who], key_ids[who] = issued.token, issued.key_id
    publisher = FakePublisher()
    world = World(registry, publisher, web.Application(), tokens, key_ids)

    async def audit(entry: AdminAudit) -> None:
        world.audit.append(entry)

    world.app = build_admin_app(
        registry=registry,
        publisher=publisher,
        hasher=HASHER,
        settings=SETTINGS,
        clock=lambda: world.now[0],
        audit=audit,
        model_names=lambda: MODELS,
    )
    PromptsApi(  # served next to the admin routes, as by the bridge
        identity=registry,
        prompts=world.prompts,
        publisher=world.prompt_publisher,
        clock=lambda: world.now[0],
        audit=audit,
    ).add_routes(world.app)
    return world


@pytest.fixture
def world() -> World:
    return make_world()


@pytest_asyncio.fixture(loop_scope="function")
async def client(world: World) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(world.app)) as client:
        yield client


# -- the description -------------------------------------------------------------------------


async def test_the_openapi_description_is_served_and_covers_every_route(
    client: TestClient, world: World
) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    spec = await response.json()
    assert spec["openapi"].startswith("3.1")
    served = {
        (route.method, route.resource.canonical)
        for route in world.app.router.routes()
        if route.method != "HEAD" and route.resource.canonical.startswith("/admin/")
    }
    described = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    assert served == described
    assert {(r.method, r.path) for r in PROMPT_ROUTES} < described
    assert ("POST", "/admin/v1/prompts") in described
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert {"401", "403"} <= set(operation["responses"]), path
            params = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert params == set(re.findall(r"{(\w+)}", path))


# -- authentication and roles ----------------------------------------------------------------


async def test_whoami_answers_any_authenticated_caller(client: TestClient, world: World) -> None:
    response = await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))
    assert response.status == 200
    me = await response.json()
    assert (me["tenant_id"], me["roles"], me["operator"]) == ("acme", ["developer"], False)
    assert me["api_key_id"] == world.key_ids["acme-dev"]
    operator = await (await client.get("/admin/v1/whoami", headers=world.auth("operator"))).json()
    assert operator["operator"] is True


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer sk-sg-nope"}, "invalid_api_key"),
        ({"Authorization": "Bearer sk-sg-abcdefghijkl_" + "x" * 43}, "invalid_api_key"),
    ],
)
async def test_callers_without_a_valid_key_get_401(
    client: TestClient, headers: dict[str, str], code: str
) -> None:
    response = await client.get("/admin/v1/keys", headers=headers)
    assert response.status == 401
    body = await response.json()
    assert body["error"]["code"] == code
    assert body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("method", "path"), [(r.method, r.path) for r in ROUTES if r.audit is not None]
)
@pytest.mark.parametrize("who", ["acme-dev", "acme-viewer", "acme-service"])
async def test_every_admin_route_refuses_non_admin_roles(
    client: TestClient, world: World, method: str, path: str, who: str
) -> None:
    path = path.format(tenant_id="acme", key_id=world.key_ids["acme-dev"])
    response = await client.request(method, path, headers=world.auth(who), json={})
    assert response.status == 403, await response.text()
    body = await response.json()
    assert body["error"]["code"] == "permission_denied"
    assert world.publisher.records == []
    assert world.audit[-1].outcome == "denied"
    assert world.audit[-1].detail["rule"] == "rbac"
    anonymous = await client.request(method, path, json={})
    assert anonymous.status == 401


# -- the key lifecycle -----------------------------------------------------------------------


async def test_a_created_key_is_shown_once_and_works_at_once(
    client: TestClient, world: World
) -> None:
    response = await client.post(
        "/admin/v1/keys",
        headers=world.auth("acme-admin"),
        json={"name": "ci", "roles": ["service"], "attributes": {"department": "research"}},
    )
    assert response.status == 201, await response.text()
    created = await response.json()
    token, key = created["api_key"], created["key"]
    assert token.startswith(f"sk-sg-{key['key_id']}_")
    assert (key["tenant_id"], key["roles"], key["status"]) == ("acme", ["service"], "active")
    assert "secret_hash" not in key
    (record,) = world.publisher.records
    assert isinstance(record, ApiKeyRecord) and record.tenant_id == "acme"
    assert token.split("_", 1)[1] not in record.model_dump_json()
    me = await client.get("/admin/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert (await me.json())["api_key_id"] == key["key_id"]
    again = await (
        await client.get(f"/admin/v1/keys/{key['key_id']}", headers=world.auth("acme-admin"))
    ).json()
    assert "api_key" not in again and again["key_id"] == key["key_id"]
    entry = world.audit[-2]  # the last one is the GET
    assert (entry.action, entry.outcome, entry.tenant_id) == ("admin.create_key", "ok", "acme")
    assert entry.resource == f"key:{key['key_id']}"
    assert entry.actor == world.key_ids["acme-admin"]
    assert token not in entry.detail_json()


async def test_a_revoked_key_is_refused_right_after_the_revoke(
    client: TestClient, world: World
) -> None:
    victim = world.key_ids["acme-dev"]
    assert (await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))).status == 200
    response = await client.post(
        f"/admin/v1/keys/{victim}/revoke", headers=world.auth("acme-admin")
    )
    assert response.status == 200
    assert (await response.json())["status"] == "revoked"
    refused = await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "revoked_api_key"
    again = await client.post(f"/admin/v1/keys/{victim}/revoke", headers=world.auth("acme-admin"))
    assert again.status == 200
    assert len(world.publisher.records) == 1  # revoking twice publishes once


async def test_rotation_refuses_the_old_secret_and_accepts_the_new(
    client: TestClient, world: World
) -> None:
    old = world.key_ids["acme-dev"]
    response = await client.post(f"/admin/v1/keys/{old}/rotate", headers=world.auth("acme-admin"))
    assert response.status == 201, await response.text()
    rotated = await response.json()
    assert rotated["key"]["rotated_from"] == old
    assert rotated["previous"]["status"] == "revoked"
    new_auth = {"Authorization": f"Bearer {rotated['api_key']}"}
    me = await (await client.get("/admin/v1/whoami", headers=new_auth)).json()
    assert (me["key_id"], me["roles"]) == (rotated["key"]["key_id"], ["developer"])
    assert (await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))).status == 401
    twice = await client.post(f"/admin/v1/keys/{old}/rotate", headers=world.auth("acme-admin"))
    assert twice.status == 409


async def test_rotation_with_a_grace_period_keeps_the_old_key_for_that_long(
    client: TestClient, world: World
) -> None:
    old = world.key_ids["acme-dev"]
    response = await client.post(
        f"/admin/v1/keys/{old}/rotate", headers=world.auth("acme-admin"), json={"grace_s": 60}
    )
    assert response.status == 201
    assert (await response.json())["previous"]["expires_at_ms"] == NOW + 60_000
    assert (await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))).status == 200
    world.now[0] = NOW + 60_000
    expired = await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))
    assert (await expired.json())["error"]["code"] == "expired_api_key"


async def test_a_key_can_be_changed_but_not_once_revoked(client: TestClient, world: World) -> None:
    key_id = world.key_ids["acme-dev"]
    response = await client.patch(
        f"/admin/v1/keys/{key_id}",
        headers=world.auth("acme-admin"),
        json={"roles": ["viewer"], "limits": {"requests_per_minute": 5}},
    )
    assert response.status == 200
    changed = await response.json()
    assert (changed["roles"], changed["limits"]["requests_per_minute"]) == (["viewer"], 5)
    assert changed["revision"] == 2
    me = await (await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))).json()
    assert me["roles"] == ["viewer"]
    await client.post(f"/admin/v1/keys/{key_id}/revoke", headers=world.auth("acme-admin"))
    late = await client.patch(
        f"/admin/v1/keys/{key_id}", headers=world.auth("acme-admin"), json={"name": "x"}
    )
    assert late.status == 409


async def test_an_expiring_key_expires(client: TestClient, world: World) -> None:
    response = await client.post(
        "/admin/v1/keys", headers=world.auth("acme-admin"), json={"expires_in_s": 10}
    )
    created = await response.json()
    assert created["key"]["expires_at_ms"] == NOW + 10_000
    auth = {"Authorization": f"Bearer {created['api_key']}"}
    assert (await client.get("/admin/v1/whoami", headers=auth)).status == 200
    world.now[0] = NOW + 10_000
    assert (await client.get("/admin/v1/whoami", headers=auth)).status == 401


# -- tenant isolation ------------------------------------------------------------------------


async def test_a_tenant_admin_sees_and_manages_only_its_tenant(
    client: TestClient, world: World
) -> None:
    acme = world.auth("acme-admin")
    listed = await (await client.get("/admin/v1/keys", headers=acme)).json()
    assert {k["tenant_id"] for k in listed["data"]} == {"acme"}
    assert len(listed["data"]) == 4
    other = world.key_ids["globex-admin"]
    assert (await client.get("/admin/v1/keys?tenant_id=globex", headers=acme)).status == 403
    for method, path in [
        ("GET", f"/admin/v1/keys/{other}"),
        ("GET", f"/admin/v1/keys/{other}/access"),
        ("PATCH", f"/admin/v1/keys/{other}"),
        ("POST", f"/admin/v1/keys/{other}/revoke"),
        ("POST", f"/admin/v1/keys/{other}/rotate"),
        ("GET", "/admin/v1/tenants/globex"),
        ("GET", "/admin/v1/policies/globex"),
    ]:
        response = await client.request(method, path, headers=acme, json={"name": "x"})
        assert response.status == 404, (method, path)
        assert world.audit[-1].detail["rule"] == "tenant-isolation"
    for method, path, body in [
        ("POST", "/admin/v1/keys", {"tenant_id": "globex"}),
        ("PUT", "/admin/v1/policies/globex", {"policy_yaml": "a: 1"}),
    ]:
        response = await client.request(method, path, headers=acme, json=body)
        assert response.status == 403, (method, path)
    tenants = await (await client.get("/admin/v1/tenants", headers=acme)).json()
    assert [t["tenant_id"] for t in tenants["data"]] == ["acme"]
    assert world.publisher.records == []
    assert (await client.get("/admin/v1/whoami", headers=world.auth("globex-admin"))).status == 200


async def test_an_operator_administers_every_tenant(client: TestClient, world: World) -> None:
    ops = world.auth("operator")
    listed = await (await client.get("/admin/v1/keys", headers=ops)).json()
    assert {k["tenant_id"] for k in listed["data"]} == {"ops", "acme", "globex"}
    only = await (await client.get("/admin/v1/keys?tenant_id=globex", headers=ops)).json()
    assert [k["key_id"] for k in only["data"]] == [world.key_ids["globex-admin"]]
    response = await client.post(
        "/admin/v1/keys", headers=ops, json={"tenant_id": "globex", "roles": ["developer"]}
    )
    assert response.status == 201
    assert (await response.json())["key"]["tenant_id"] == "globex"
    missing = await client.post("/admin/v1/keys", headers=ops, json={"tenant_id": "nobody"})
    assert missing.status == 404


async def test_only_operators_create_and_change_tenants(client: TestClient, world: World) -> None:
    acme = world.auth("acme-admin")
    for method, path in [
        ("POST", "/admin/v1/tenants"),
        ("PATCH", "/admin/v1/tenants/acme"),
        ("PUT", "/admin/v1/tenants/acme/access"),
    ]:
        body = {"tenant_id": "newco"} if method == "POST" else {}
        response = await client.request(method, path, headers=acme, json=body)
        assert response.status == 403, (method, path)
        assert world.audit[-1].detail["rule"] == "operator-only"
    ops = world.auth("operator")
    created = await client.post(
        "/admin/v1/tenants", headers=ops, json={"tenant_id": "newco", "allowed_models": ["gpt-*"]}
    )
    assert created.status == 201
    assert (await created.json())["allowed_models"] == ["gpt-*"]
    duplicate = await client.post("/admin/v1/tenants", headers=ops, json={"tenant_id": "newco"})
    assert duplicate.status == 409
    lockout = await client.patch("/admin/v1/tenants/ops", headers=ops, json={"status": "disabled"})
    assert lockout.status == 409


async def test_a_disabled_tenant_is_refused_at_once(client: TestClient, world: World) -> None:
    assert (await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))).status == 200
    response = await client.patch(
        "/admin/v1/tenants/acme", headers=world.auth("operator"), json={"status": "disabled"}
    )
    assert response.status == 200
    assert (await response.json())["status"] == "disabled"
    refused = await client.get("/admin/v1/whoami", headers=world.auth("acme-dev"))
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "tenant_disabled"


# -- model access and policies ---------------------------------------------------------------


async def test_model_access_is_the_key_list_within_the_tenant_list(
    client: TestClient, world: World
) -> None:
    ops, key_id = world.auth("operator"), world.key_ids["acme-dev"]
    response = await client.put(
        "/admin/v1/tenants/acme/access", headers=ops, json={"allowed_models": ["gpt-4o*"]}
    )
    assert (await response.json())["effective_models"] == ["gpt-4o", "gpt-4o-mini"]
    response = await client.put(
        f"/admin/v1/keys/{key_id}/access",
        headers=world.auth("acme-admin"),
        json={"allowed_models": ["gpt-4o-mini", "claude-3-5"], "allowed_knowledge_bases": ["hr"]},
    )
    assert response.status == 200
    access = await response.json()
    assert access["effective_models"] == ["gpt-4o-mini"]
    assert access["tenant_allowed_models"] == ["gpt-4o*"]
    me = world.registry.authenticate(world.tokens["acme-dev"], now_ms=NOW)
    assert me.may_use_model("gpt-4o-mini") and not me.may_use_model("claude-3-5")
    assert me.may_read_knowledge_base("hr") and not me.may_read_knowledge_base("finance")
    read = await client.get(f"/admin/v1/keys/{key_id}/access", headers=world.auth("acme-admin"))
    assert (await read.json()) == access


async def test_a_policy_is_stored_validated_and_folded(client: TestClient, world: World) -> None:
    acme = world.auth("acme-admin")
    assert (await client.get("/admin/v1/policies/acme", headers=acme)).status == 404
    text = (
        "access:\n  - {name: no-claude, effect: deny, resources: [claude*]}\nguard: {pii: mask}\n"
    )
    response = await client.put("/admin/v1/policies/acme", headers=acme, json={"policy_yaml": text})
    assert response.status == 200
    stored = await response.json()
    assert stored["version"].startswith("sha256:") and stored["revision"] == 1
    assert isinstance(world.publisher.records[-1], PolicyRecord)
    assert [r.name for r in world.registry.access_rules("acme")] == ["no-claude"]
    read = await (await client.get("/admin/v1/policies/acme", headers=acme)).json()
    assert read["policy_yaml"] == text
    bad_ones = [
        "- a list",
        "a: [unclosed",
        "access: [{name: x, effect: maybe}]",
        "'scalar'",
        "a: &a [x, x]\nb: [*a, *a]",
    ]
    for bad in bad_ones:
        refused = await client.put(
            "/admin/v1/policies/acme", headers=acme, json={"policy_yaml": bad}
        )
        assert refused.status == 422, bad
        assert (await refused.json())["error"]["code"] == "invalid_policy"
    assert world.registry.policy("acme").revision == 1


# -- bad input and failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b'{"name": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"roles": ["root"]}', "application/json", 422, "invalid_body"),
        (b'{"roles": "admin"}', "application/json", 422, "invalid_body"),
        (b'{"name": "x", "colour": "red"}', "application/json", 422, "invalid_body"),
        (b'{"expires_in_s": "60"}', "application/json", 422, "invalid_body"),
        (b'{"attributes": {"a": "\\ud800"}}', "application/json", 400, "invalid_json"),
        (b'{"limits": {"usd_per_day": 1e400}}', "application/json", 422, "invalid_body"),
        (b"[]", "application/json", 422, "invalid_body"),
        (b"", "application/json", 400, "missing_body"),
    ],
)
async def test_bad_bodies_get_a_4xx_with_a_clear_message(
    client: TestClient, world: World, data: bytes, content_type: str, status: int, code: str
) -> None:
    response = await client.post(
        "/admin/v1/keys",
        headers={**world.auth("acme-admin"), "Content-Type": content_type},
        data=data,
    )
    assert response.status == status, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == code and error["message"]
    assert world.publisher.records == []


async def test_a_huge_body_is_refused(client: TestClient, world: World) -> None:
    response = await client.put(
        "/admin/v1/policies/acme",
        headers=world.auth("acme-admin"),
        json={"policy_yaml": "a: " + "x" * 4_000_000},
    )
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"


async def test_a_failed_publish_answers_503_and_changes_nothing(
    client: TestClient, world: World
) -> None:
    world.publisher.fail = True
    key_id = world.key_ids["acme-dev"]
    response = await client.post(
        f"/admin/v1/keys/{key_id}/revoke", headers=world.auth("acme-admin")
    )
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "publish_failed"
    assert world.registry.key(key_id).status == "active"
    assert world.audit[-1].outcome == "failed"


# -- schemathesis ----------------------------------------------------------------------------


class ThreadedServer:
    """The admin app on a loopback port, served from a thread of its own (schemathesis calls
    it synchronously)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self._app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[World, ThreadedServer]]:
    world = make_world()
    _seed_prompt(world)
    with ThreadedServer(world.app) as server:
        yield world, server


schema = schemathesis.openapi.from_dict(openapi([*ROUTES, *PROMPT_ROUTES]))
# A policy document is a YAML *mapping*, which JSON Schema cannot say of a string: a valid
# string that is not one is refused with 422, so "valid data is accepted" does not hold there.
# Likewise a prompt's templates must parse and use only declared variables, and a render's
# variables must match the prompt's declarations (400).
SEMANTIC_422 = {
    "PUT /admin/v1/policies/{tenant_id}",
    "POST /admin/v1/prompts",
    "POST /admin/v1/prompts/{name}/render",
}
PROMPT = "support"
REFS = ["1", "2", "prod", "1.0.0", "1.1.0"]


def _seed_prompt(world: World) -> None:
    """The operator's tenant holds a prompt with two versions, so labels, rollbacks, diffs
    and renders have something to act on."""
    for template in ("Answer {{ question }}.", "Please answer {{ question }}."):
        event = world.prompts.publish(
            "ops",
            PROMPT,
            template=template,
            variables={"question": {"type": "string", "required": False}},
            labels=["prod"],
            now_ms=NOW,
        )
        world.prompts.apply(event)


def _aim_at_real_objects(case: schemathesis.Case, world: World) -> None:
    """Random 12-character key ids, tenant ids and prompt names almost never exist, so a
    schema-valid path gets a fresh real key, `acme` or the seeded prompt half of the time: the
    handlers past the 404 get fuzzed."""
    if case.meta is None or case.meta.is_negative_at(ParameterLocation.PATH):
        return
    params = case.path_parameters or {}
    if hash(repr(case.body)) % 2:
        return
    if "key_id" in params:
        issued = issue_key(SETTINGS.auth.key_prefix)
        world.registry.apply(
            ApiKeyRecord(
                **identity_envelope("acme", producer="test"),
                key_id=issued.key_id,
                secret_hash=HASHER.hash(issued.secret),
                roles=["developer"],
                status="active",
                created_at_ms=NOW,
                revision=1,
            )
        )
        params["key_id"] = issued.key_id
    if "tenant_id" in params:
        params["tenant_id"] = "acme"


def _aim_at_the_prompt(case: schemathesis.Case) -> None:
    """Random prompt names, references and contents almost never exist or check, so most
    schema-valid prompt calls are aimed at the seeded prompt: its name in the path, one of its
    references in the query, and (one time in four) a render's variables or a publish's
    content made valid, so the answers past the registry's refusals get checked too."""
    if case.meta is None or not case.operation.path.startswith("/admin/v1/prompts"):
        return
    coin = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    params = case.path_parameters or {}
    if "name" in params and coin % 4 and not case.meta.is_negative_at(ParameterLocation.PATH):
        params["name"] = PROMPT
    if case.query and coin % 3 and not case.meta.is_negative_at(ParameterLocation.QUERY):
        for name in set(case.query) & {"ref", "a", "b"}:
            case.query[name] = REFS[(coin >> 4) % len(REFS)]
            coin //= len(REFS)
    body = case.body
    if not isinstance(body, dict) or coin % 4 or case.meta.is_negative_at(ParameterLocation.BODY):
        return
    if case.operation.label == "POST /admin/v1/prompts/{name}/render":
        body.update(variables={"question": "why"}, ref=REFS[(coin >> 4) % len(REFS)])
    if case.operation.label == "POST /admin/v1/prompts":
        body.update(kind="template", template="Hi {{ who }}", variables={"who": {"type": "string"}})
        body.update(messages=None, few_shot=None, reasoning=None)


@schema.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_schemathesis_finds_no_server_error_and_no_spec_drift(
    case: schemathesis.Case, fuzzed: tuple[World, ThreadedServer]
) -> None:
    world, server = fuzzed
    _aim_at_real_objects(case, world)
    _aim_at_the_prompt(case)
    excluded = [positive_data_acceptance] if case.operation.label in SEMANTIC_422 else []
    response = case.call(base_url=server.url, headers=world.auth("operator"))
    assert response.status_code < 500, response.text
    case.validate_response(response, excluded_checks=excluded)
