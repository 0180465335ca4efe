"""The identity registry: folding key/tenant/policy records and authenticating bearer tokens."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from sluicegate.connectors.key_hashing import Argon2SecretHasher
from sluicegate.errors import (
    AuthenticationError,
    ExpiredCredentialsError,
    InvalidTokenError,
    MalformedCredentialsError,
    MissingCredentialsError,
    PermissionDeniedError,
    RevokedKeyError,
    TenantDisabledError,
    UnknownKeyError,
)
from sluicegate.processors.identity import (
    KEY_ID_LENGTH,
    IdentityRegistry,
    IssuedKey,
    TokenClaims,
    bootstrap_records,
    identity_envelope,
    issue_key,
    journaled_claims,
    journaled_principal,
    limit_rule,
    parse_key,
    record_key,
    revised,
    token_from_headers,
    token_principal,
)
from sluicegate.schemas.models import ApiKeyRecord, IdentityLimits, PolicyRecord, TenantRecord
from sluicegate.settings import AuthSettings, JwtSettings, LimitRule

pytestmark = pytest.mark.unit

NOW = 1_800_000_000_000
PREFIX = "sk-sg-"


class CountingHasher:
    """The argon2 adapter (cheap parameters), counting verifications through the port."""

    def __init__(self) -> None:
        self._inner = Argon2SecretHasher(time_cost=1, memory_kib=64, parallelism=1)
        self.verifications = 0

    def hash(self, secret: str) -> str:
        return self._inner.hash(secret)

    def verify(self, hashed: str, secret: str) -> bool:
        self.verifications += 1
        return self._inner.verify(hashed, secret)


class FakeVerifier:
    """A TokenVerifier standing in for the JWT adapter."""

    def __init__(self, claims: TokenClaims) -> None:
        self.claims = claims

    def verify(self, token: str, *, now_ms: int) -> TokenClaims:
        if token != "a.b.c":
            raise InvalidTokenError("bad token")
        expires = self.claims.expires_at_ms
        if expires is not None and now_ms >= expires:
            raise ExpiredCredentialsError("expired", code="expired_token")
        return self.claims


def tenant(tenant_id: str = "acme", **fields) -> TenantRecord:
    data = {"name": tenant_id, "status": "active", "revision": 1, **fields}
    return TenantRecord(**identity_envelope(tenant_id, producer="test"), **data)


def key(
    hasher: CountingHasher, issued: IssuedKey, tenant_id: str = "acme", **fields
) -> ApiKeyRecord:
    data = {
        "key_id": issued.key_id,
        "secret_hash": hasher.hash(issued.secret),
        "roles": ["developer"],
        "status": "active",
        "created_at_ms": NOW - 1000,
        "revision": 1,
        **fields,
    }
    return ApiKeyRecord(**identity_envelope(tenant_id, producer="test"), **data)


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def registry(hasher: CountingHasher) -> IdentityRegistry:
    registry = IdentityRegistry(settings=AuthSettings(), hasher=hasher)
    registry.apply(tenant())
    return registry


@pytest.fixture
def issued() -> IssuedKey:
    return issue_key(PREFIX)


# -- key format ------------------------------------------------------------------------------


def test_issued_keys_have_the_documented_shape_and_parse_back(issued: IssuedKey) -> None:
    assert issued.token == f"{PREFIX}{issued.key_id}_{issued.secret}"
    assert len(issued.key_id) == KEY_ID_LENGTH and issued.key_id.isalnum()
    assert len(issued.secret) >= 43
    assert parse_key(issued.token, PREFIX) == (issued.key_id, issued.secret)
    assert issued.secret not in repr(issued)
    assert issue_key(PREFIX).key_id != issued.key_id


@pytest.mark.parametrize(
    "token",
    [
        "sk-other-abcdefghijkl_" + "x" * 43,  # another prefix
        PREFIX + "abcdefghijkl_" + "x" * 42,  # secret too short
        PREFIX + "abcdefghijkl-" + "x" * 43,  # wrong separator
        PREFIX + "abcdefghij_l_" + "x" * 43,  # key id not alphanumeric
        PREFIX + "abcdefghijkl_" + "x" * 42 + "!",  # secret outside the url-safe alphabet
    ],
)
def test_malformed_keys_do_not_parse(token: str) -> None:
    assert parse_key(token, PREFIX) is None


def test_the_credential_comes_from_the_usual_headers() -> None:
    assert token_from_headers({"Authorization": "Bearer sk-1"}) == "sk-1"
    assert token_from_headers({"Authorization": "bearer  sk-1 "}) == "sk-1"
    assert token_from_headers({"api-key": "sk-2"}) == "sk-2"
    assert token_from_headers({"x-api-key": "sk-3"}) == "sk-3"
    assert token_from_headers({}) is None
    assert token_from_headers({"Authorization": "Basic dTpw"}) == "Basic dTpw"  # refused later


# -- authentication --------------------------------------------------------------------------


def test_a_valid_key_authenticates_to_its_principal(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    registry.apply(
        tenant(allowed_models=["gpt-4o*", "smollm2-135m"], attributes={"region": "eu"}, revision=2)
    )
    registry.apply(
        key(
            hasher,
            issued,
            name="ci",
            allowed_models=["gpt-4o-mini", "claude"],
            attributes={"department": "research", "region": "us"},
            limits=IdentityLimits(requests_per_minute=60),
        )
    )
    principal = registry.authenticate(issued.token, now_ms=NOW)
    assert principal.tenant_id == "acme"
    assert principal.method == "api_key"
    assert principal.key_id == principal.api_key_id == principal.subject == issued.key_id
    assert principal.roles == {"developer"}
    # the tenant's attributes (set by an operator) win over the key's (set by a tenant admin)
    assert principal.attributes == {"region": "eu", "department": "research"}
    assert principal.may_use_model("gpt-4o-mini")
    assert not principal.may_use_model("claude")  # the key allows it, the tenant does not
    assert not principal.may_use_model("smollm2-135m")  # the tenant allows it, the key does not
    assert limit_rule(principal.limits) == LimitRule(requests_per_minute=60)
    assert principal.describe()["allowed_models"] == ["gpt-4o-mini", "claude"]


def test_missing_credentials_are_refused_unless_auth_is_optional(hasher: CountingHasher) -> None:
    registry = IdentityRegistry(settings=AuthSettings(), hasher=hasher)
    with pytest.raises(MissingCredentialsError) as caught:
        registry.authenticate(None, now_ms=NOW)
    assert (caught.value.status, caught.value.code) == (401, "missing_api_key")
    open_registry = IdentityRegistry(
        settings=AuthSettings(required=False), hasher=hasher, anonymous_tenant="public"
    )
    anonymous = open_registry.authenticate("", now_ms=NOW)
    assert (anonymous.tenant_id, anonymous.method, anonymous.api_key_id) == (
        "public",
        "anonymous",
        "anonymous",
    )
    with pytest.raises(MalformedCredentialsError):  # a bad key is still refused
        open_registry.authenticate("sk-nonsense", now_ms=NOW)


@pytest.mark.parametrize("token", ["sk-nonsense", "a.b.c", "x" * 9000, "sk-sg-ÿ"])
def test_malformed_tokens_are_refused(registry: IdentityRegistry, token: str) -> None:
    with pytest.raises(MalformedCredentialsError) as caught:
        registry.authenticate(token, now_ms=NOW)
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")


def test_unknown_key_and_wrong_secret_look_the_same(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    registry.apply(key(hasher, issued))
    with pytest.raises(UnknownKeyError) as unknown:
        registry.authenticate(issue_key(PREFIX).token, now_ms=NOW)
    assert hasher.verifications == 0  # no argon2 for a key id nobody has
    wrong = f"{PREFIX}{issued.key_id}_{issue_key(PREFIX).secret}"
    with pytest.raises(UnknownKeyError) as mismatch:
        registry.authenticate(wrong, now_ms=NOW)
    assert hasher.verifications == 1
    assert (unknown.value.code, str(unknown.value)) == (mismatch.value.code, str(mismatch.value))
    assert issued.key_id not in str(mismatch.value)
    with pytest.raises(UnknownKeyError):  # the failure is remembered for a while: no argon2
        registry.authenticate(wrong, now_ms=NOW + 1000)
    assert hasher.verifications == 1
    with pytest.raises(UnknownKeyError):
        registry.authenticate(wrong, now_ms=NOW + 11_000)
    assert hasher.verifications == 2


def test_argon2_runs_once_then_the_cache_answers(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    registry.apply(key(hasher, issued))
    first = registry.authenticate(issued.token, now_ms=NOW)
    for offset in range(1, 50):
        assert registry.authenticate(issued.token, now_ms=NOW + offset) is first
    assert hasher.verifications == 1
    assert registry.stats.cache_hits == 49
    assert registry.cache_size == 1


def test_the_cache_expires_after_its_ttl(hasher: CountingHasher, issued: IssuedKey) -> None:
    registry = IdentityRegistry(settings=AuthSettings(cache_ttl_s=60), hasher=hasher)
    registry.apply(tenant())
    registry.apply(key(hasher, issued))
    registry.authenticate(issued.token, now_ms=NOW)
    registry.authenticate(issued.token, now_ms=NOW + 59_000)
    assert hasher.verifications == 1
    registry.authenticate(issued.token, now_ms=NOW + 61_000)
    assert hasher.verifications == 2


def test_a_revoked_key_is_refused_as_soon_as_the_revocation_is_folded(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    record = key(hasher, issued)
    registry.apply(record)
    registry.authenticate(issued.token, now_ms=NOW)  # now cached
    assert registry.apply(revised(record, producer="test", status="revoked"))
    with pytest.raises(RevokedKeyError) as caught:
        registry.authenticate(issued.token, now_ms=NOW + 1)
    assert (caught.value.status, caught.value.code) == (401, "revoked_api_key")
    assert registry.cache_size == 0


def test_a_rotated_key_refuses_the_old_secret_and_accepts_the_new(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    old = key(hasher, issued)
    registry.apply(old)
    registry.authenticate(issued.token, now_ms=NOW)
    successor = issue_key(PREFIX)
    registry.apply(key(hasher, successor, rotated_from=issued.key_id))
    registry.apply(revised(old, producer="test", status="revoked"))
    with pytest.raises(RevokedKeyError):
        registry.authenticate(issued.token, now_ms=NOW + 1)
    assert registry.authenticate(successor.token, now_ms=NOW + 1).key_id == successor.key_id


def test_an_expired_key_is_refused_even_from_the_cache(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    registry.apply(key(hasher, issued, expires_at_ms=NOW + 5000))
    registry.authenticate(issued.token, now_ms=NOW)
    registry.authenticate(issued.token, now_ms=NOW + 4999)
    with pytest.raises(ExpiredCredentialsError) as caught:
        registry.authenticate(issued.token, now_ms=NOW + 5000)
    assert caught.value.code == "expired_api_key"


def test_a_disabled_or_unknown_tenant_refuses_its_keys(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    registry.apply(key(hasher, issued))
    registry.authenticate(issued.token, now_ms=NOW)
    registry.apply(tenant(status="disabled", revision=2))
    with pytest.raises(TenantDisabledError) as caught:
        registry.authenticate(issued.token, now_ms=NOW + 1)
    assert (caught.value.status, caught.value.code) == (403, "tenant_disabled")
    assert isinstance(caught.value, PermissionDeniedError)
    orphan = issue_key(PREFIX)
    registry.apply(key(hasher, orphan, tenant_id="ghost"))
    with pytest.raises(TenantDisabledError) as unknown:
        registry.authenticate(orphan.token, now_ms=NOW)
    assert unknown.value.code == "tenant_unknown"


def test_a_changed_key_is_verified_again_and_carries_its_new_roles(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    record = key(hasher, issued)
    registry.apply(record)
    assert registry.authenticate(issued.token, now_ms=NOW).roles == {"developer"}
    registry.apply(revised(record, producer="test", roles=["viewer"]))
    assert registry.authenticate(issued.token, now_ms=NOW + 1).roles == {"viewer"}
    assert hasher.verifications == 2


def test_the_cache_is_bounded(hasher: CountingHasher) -> None:
    registry = IdentityRegistry(settings=AuthSettings(cache_max_entries=2), hasher=hasher)
    registry.apply(tenant())
    keys = [issue_key(PREFIX) for _ in range(3)]
    for issued in keys:
        registry.apply(key(hasher, issued))
        registry.authenticate(issued.token, now_ms=NOW)
    assert registry.cache_size == 2
    registry.authenticate(keys[0].token, now_ms=NOW)  # the oldest was evicted
    assert hasher.verifications == 4


async def test_concurrent_first_uses_verify_once(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    registry.apply(key(hasher, issued))
    principals = await asyncio.gather(
        *(registry.authenticate_async(issued.token, now_ms=NOW) for _ in range(8))
    )
    assert {p.key_id for p in principals} == {issued.key_id}
    assert hasher.verifications == 1
    with pytest.raises(UnknownKeyError):
        await registry.authenticate_async(f"{issued.token[:-1]}Z", now_ms=NOW)


# -- the fold --------------------------------------------------------------------------------


def test_the_highest_revision_wins_and_replays_change_nothing(
    registry: IdentityRegistry, hasher: CountingHasher, issued: IssuedKey
) -> None:
    first = key(hasher, issued)
    second = revised(first, producer="test", name="renamed")
    third = revised(second, producer="test", status="revoked")
    assert registry.apply(first) and registry.apply(third)
    assert not registry.apply(second)  # older than what is folded
    assert not registry.apply(third)  # a replay
    assert registry.key(issued.key_id) == third


def test_equal_revisions_converge_whatever_the_order(
    hasher: CountingHasher, issued: IssuedKey
) -> None:
    base = key(hasher, issued)
    a = revised(base, producer="bridge-a", name="a")
    b = revised(base, producer="bridge-b", name="b")
    b = b.model_copy(update={"occurred_at": a.occurred_at + timedelta(milliseconds=1)})
    outcomes = set()
    for order in ([a, b], [b, a]):
        registry = IdentityRegistry(settings=AuthSettings(), hasher=hasher)
        for record in order:
            registry.apply(record)
        outcomes.add(registry.key(issued.key_id).name)
    assert outcomes == {"b"}


def test_records_have_their_topic_keys(hasher: CountingHasher, issued: IssuedKey) -> None:
    policy = PolicyRecord(
        **identity_envelope("acme", producer="t"), version="v", policy_yaml="{}", revision=1
    )
    assert record_key(key(hasher, issued)) == f"key:{issued.key_id}"
    assert record_key(tenant()) == "tenant:acme"
    assert record_key(policy) == "policy:acme"


def test_policies_fold_into_access_rules_and_a_bad_one_is_ignored(
    registry: IdentityRegistry,
) -> None:
    def policy(text: str, revision: int) -> PolicyRecord:
        envelope = identity_envelope("acme", producer="t")
        return PolicyRecord(**envelope, version="v", policy_yaml=text, revision=revision)

    good = "access:\n  - {name: no-gpt4o, effect: deny, resources: [gpt-4o]}\nguard: {pii: mask}\n"
    assert registry.apply(policy(good, 1))
    assert [r.name for r in registry.access_rules("acme")] == ["no-gpt4o"]
    assert not registry.apply(policy("access: [{effect: maybe}]", 2))
    assert not registry.apply(policy("- just a list", 3))
    laughs = "a: &a [x, x]\nb: &b [*a, *a]\naccess: [*b, *b]\n"  # aliases: refused outright
    assert not registry.apply(policy(laughs, 4))
    assert [r.name for r in registry.access_rules("acme")] == ["no-gpt4o"]
    assert registry.policy("acme").revision == 1
    assert registry.access_rules("other") == ()


def test_bootstrap_makes_a_tenant_and_an_admin_key(hasher: CountingHasher) -> None:
    registry = IdentityRegistry(settings=AuthSettings(), hasher=hasher)
    assert registry.is_empty
    records, issued = bootstrap_records(settings=AuthSettings(), hasher=hasher, now_ms=NOW)
    for record in records:
        registry.apply(record)
    assert not registry.is_empty
    principal = registry.authenticate(issued.token, now_ms=NOW)
    assert (principal.tenant_id, principal.roles) == ("default", {"admin"})
    assert issued.token.startswith("sk-sg-")


# -- bearer tokens (JWT) through the TokenVerifier port --------------------------------------


def claims(tenant_id: str = "acme", **fields) -> TokenClaims:
    data = {"subject": "alice", "tenant_id": tenant_id, "roles": frozenset({"viewer"}), **fields}
    return TokenClaims(**data)


def test_a_token_authenticates_without_a_key_id(hasher: CountingHasher) -> None:
    verifier = FakeVerifier(
        claims(attributes={"department": "research"}, expires_at_ms=NOW + 60_000)
    )
    registry = IdentityRegistry(settings=AuthSettings(), hasher=hasher, token_verifier=verifier)
    registry.apply(tenant(allowed_models=["gpt-4o"], attributes={"region": "eu"}))
    principal = registry.authenticate("a.b.c", now_ms=NOW)
    assert (principal.method, principal.key_id, principal.api_key_id) == ("jwt", None, "jwt:alice")
    assert principal.attributes == {"region": "eu", "department": "research"}
    assert principal.may_use_model("gpt-4o") and not principal.may_use_model("claude")
    assert registry.authenticate("a.b.c", now_ms=NOW + 1) is principal  # cached
    with pytest.raises(InvalidTokenError):
        registry.authenticate("x.y.z", now_ms=NOW)
    with pytest.raises(AuthenticationError):  # the cache never outlives the token
        registry.authenticate("a.b.c", now_ms=NOW + 60_000)


def test_a_token_for_an_unknown_tenant_is_refused_unless_allowed(hasher: CountingHasher) -> None:
    verifier = FakeVerifier(claims("newco"))
    registry = IdentityRegistry(settings=AuthSettings(), hasher=hasher, token_verifier=verifier)
    with pytest.raises(TenantDisabledError) as caught:
        registry.authenticate("a.b.c", now_ms=NOW)
    assert caught.value.code == "tenant_unknown"
    lenient = AuthSettings(jwt=JwtSettings(require_known_tenant=False))
    registry = IdentityRegistry(settings=lenient, hasher=hasher, token_verifier=verifier)
    assert registry.authenticate("a.b.c", now_ms=NOW).tenant_id == "newco"


def test_the_journaled_facts_of_a_token_rebuild_the_same_principal(
    hasher: CountingHasher, issued: IssuedKey
) -> None:
    verifier = FakeVerifier(
        claims(
            roles=frozenset({"viewer", "oncall"}),
            attributes={"groups": "sre,dba"},
            allowed_models=("gpt-4o",),
            expires_at_ms=NOW + 60_000,
        )
    )
    registry = IdentityRegistry(settings=AuthSettings(), hasher=hasher, token_verifier=verifier)
    acme = tenant(allowed_knowledge_bases=["handbook"], attributes={"region": "eu"})
    registry.apply(acme)
    registry.apply(key(hasher, issued))
    principal = registry.authenticate("a.b.c", now_ms=NOW)
    facts = journaled_principal(principal)
    assert facts is not None and facts.method == "jwt" and facts.subject == "alice"
    assert (facts.roles, facts.expires_at_ms) == (["oncall", "viewer"], NOW + 60_000)
    assert facts.attributes == {"groups": "sre,dba", "region": "eu"}
    assert "a.b.c" not in facts.model_dump_json()  # facts, never the token
    assert token_principal(journaled_claims(facts), acme) == principal
    # API keys are rebuilt from sg.identity downstream: nothing is journaled for them.
    assert journaled_principal(registry.authenticate(issued.token, now_ms=NOW)) is None
