"""Identity end to end: keys on sg.identity, the tenant from the key, model access, the admin
API's keys taking effect (and being revoked) on the running bridge, and the audit chain."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from sluicegate.connectors.schema_registry import build_serde
from sluicegate.processors.audit import verify_chain
from sluicegate.schemas.models import AuditRecord, RequestReceived
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from tests.conftest import ADMIN, CALLER_TOKEN, FAKE_ONLY, GLOBEX
from tests.topics_io import wait_for, wait_for_event

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def serde(settings: Settings) -> AvroSerde:
    return build_serde(settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_nothing_is_open_without_a_valid_key(bridge_url: str) -> None:
    url = f"{bridge_url}/v1/chat/completions"
    body = {"model": "gpt-fake", "messages": HELLO}
    missing = httpx.post(url, json=body, timeout=30)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    forged = CALLER_TOKEN[:-4] + "AAAA"
    wrong = httpx.post(url, json=body, headers=bearer(forged), timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{bridge_url}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{bridge_url}/healthz", timeout=30).status_code == 200  # probes stay open


def test_the_tenant_is_the_keys_whatever_the_request_says(
    bridge_url: str, settings: Settings, serde: AvroSerde
) -> None:
    client = openai.OpenAI(base_url=f"{bridge_url}/v1", api_key=GLOBEX.token, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-fake",
        messages=HELLO,
        extra_headers={"X-Sluicegate-Tenant": "default"},
        user="someone",
    )
    request_id = raw.parse().id.removeprefix("chatcmpl-")
    journaled = wait_for_event(
        settings, serde, settings.topic("requests"), RequestReceived, request_id
    )
    assert journaled.tenant_id == "globex" and journaled.api_key_id == GLOBEX.key_id


def test_a_key_limited_to_some_models_sees_and_uses_only_those(bridge_url: str) -> None:
    narrow = openai.OpenAI(base_url=f"{bridge_url}/v1", api_key=FAKE_ONLY.token, max_retries=0)
    assert [m.id for m in narrow.models.list()] == ["gpt-fake"]
    assert narrow.chat.completions.create(model="gpt-fake", messages=HELLO).choices
    with pytest.raises(openai.PermissionDeniedError) as denied:
        narrow.chat.completions.create(model="gpt-cheap", messages=HELLO)
    assert denied.value.code == "model_not_allowed"
    with pytest.raises(openai.NotFoundError):
        narrow.models.retrieve("gpt-cheap")


@pytest.mark.timeout(90)
def test_admin_api_keys_work_at_once_revocation_too_and_every_call_is_audited(
    bridge_url: str, settings: Settings, serde: AvroSerde
) -> None:
    admin = httpx.Client(base_url=f"{bridge_url}/admin/v1", headers=bearer(ADMIN.token))
    developer = httpx.Client(base_url=f"{bridge_url}/admin/v1", headers=bearer(CALLER_TOKEN))
    assert developer.get("/keys").status_code == 403
    assert admin.get("/whoami").json()["tenant_id"] == "default"
    spec = httpx.get(f"{bridge_url}/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/admin/v1/keys" in spec["paths"]

    created = admin.post(
        "/keys", json={"tenant_id": "default", "name": "e2e", "roles": ["developer"]}
    )
    assert created.status_code == 201, created.text
    token, key_id = created.json()["api_key"], created.json()["key"]["key_id"]
    client = openai.OpenAI(base_url=f"{bridge_url}/v1", api_key=token, max_retries=0)
    # The bridge folded its own write before answering: usable at once.
    assert client.chat.completions.create(model="gpt-fake", messages=HELLO).choices

    assert admin.post(f"/keys/{key_id}/revoke").status_code == 200
    deadline = time.monotonic() + 10
    while True:
        try:
            client.chat.completions.create(model="gpt-fake", messages=HELLO)
        except openai.AuthenticationError as refused:
            assert refused.code == "revoked_api_key"
            break
        assert time.monotonic() < deadline, "the revoked key still works after 10 s"
        time.sleep(0.2)

    # Both admin writes are on sg.audit, chained by the audit agent.
    records: list[AuditRecord] = []

    def collect(_key: bytes | None, value: bytes) -> bool:
        event = serde.decode(value)
        if isinstance(event, AuditRecord):
            records.append(event)
        return (
            isinstance(event, AuditRecord)
            and event.resource == f"key:{key_id}"
            and (event.action.endswith("revoke_key"))
        )

    wait_for(settings, settings.topic("audit"), collect, timeout_s=30)
    default = [r for r in records if r.tenant_id == "default"]
    actions = [r.action for r in default if r.resource == f"key:{key_id}"]
    assert actions == ["admin.create_key", "admin.revoke_key"]
    assert all(r.hash for r in default)
    assert verify_chain(default)[1] == []


def test_hostile_credentials_and_headers_get_4xx_and_the_bridge_stays_up(bridge_url: str) -> None:
    url = f"{bridge_url}/v1/chat/completions"
    body = {"model": "gpt-fake", "messages": HELLO}
    # {"alg":"none","typ":"JWT"}.{"sub":"x","tenant":"default"}. — unsigned
    unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwidGVuYW50IjoiZGVmYXVsdCJ9."
    for token in (unsigned, "a.b.c", "x" * 5000, "sk-sg-" + "é" * 20):
        raw = {"Authorization": f"Bearer {token}".encode()}  # latin-1 bytes, as an attacker may
        answer = httpx.post(url, json=body, headers=raw, timeout=30)
        assert answer.status_code in (400, 401), (token[:20], answer.status_code)
    huge = httpx.post(url, json=body, headers={"X-Padding": "x" * 20_000}, timeout=30)
    assert 400 <= huge.status_code < 500
    fuzzed = httpx.post(
        url,
        content=b"\xff\xfe{not json",
        headers={**bearer(CALLER_TOKEN), "Content-Type": "application/json"},
        timeout=30,
    )
    assert fuzzed.status_code == 400
    assert httpx.get(f"{bridge_url}/healthz", timeout=30).status_code == 200
    client = openai.OpenAI(base_url=f"{bridge_url}/v1", api_key=CALLER_TOKEN, max_retries=0)
    assert client.chat.completions.create(model="gpt-fake", messages=HELLO).choices
