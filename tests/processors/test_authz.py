"""Authorization: roles, tenant isolation, model and knowledge-base scope, attribute rules —
and every decision names the rule that made it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluicegate.errors import PermissionDeniedError
from sluicegate.processors import authz
from sluicegate.processors.authz import ACTIONS, ROLE_ACTIONS, Authorizer, Resource
from sluicegate.processors.identity import Principal
from sluicegate.settings import AccessRule, AuthSettings

pytestmark = pytest.mark.unit

ACME = Resource("acme")


def who(*roles: str, tenant: str = "acme", **fields) -> Principal:
    return Principal(
        tenant_id=tenant, subject="k", method="api_key", roles=frozenset(roles), **fields
    )


@pytest.fixture
def authorizer() -> Authorizer:
    return Authorizer(settings=AuthSettings(operator_tenant="ops"))


EXPECTED = {
    "admin": ACTIONS,
    "developer": {"model:use", "kb:read", "kb:write", "trace:read"},
    "viewer": {"kb:read", "trace:read"},
    "service": {"model:use", "kb:read"},
}


@pytest.mark.parametrize("role", sorted(EXPECTED))
@pytest.mark.parametrize("action", sorted(ACTIONS - {authz.ADMIN_TENANTS_WRITE}))  # see below
def test_roles_grant_exactly_their_actions(authorizer: Authorizer, role: str, action: str) -> None:
    decision = authorizer.authorize(who(role), action, ACME)
    assert decision.allowed == (action in EXPECTED[role])
    assert decision.rule == (f"rbac:{role}" if decision.allowed else "rbac")
    assert decision.reason


def test_the_role_table_is_the_documented_one() -> None:
    assert {role: set(actions) for role, actions in ROLE_ACTIONS.items()} == {
        role: set(actions) for role, actions in EXPECTED.items()
    }


def test_several_roles_add_up(authorizer: Authorizer) -> None:
    principal = who("viewer", "service")
    assert authorizer.authorize(principal, "trace:read", ACME).allowed
    assert authorizer.authorize(principal, "model:use", ACME).allowed
    assert not authorizer.authorize(principal, "kb:write", ACME).allowed


def test_unknown_actions_are_refused(authorizer: Authorizer) -> None:
    decision = authorizer.authorize(who("admin"), "admin:everything", ACME)
    assert (decision.allowed, decision.rule) == (False, "unknown-action")


def test_tenants_are_isolated_except_for_operators_admin_actions(authorizer: Authorizer) -> None:
    other = Resource("globex")
    for action in ("model:use", "trace:read", "admin:read", "admin:keys:write"):
        decision = authorizer.authorize(who("admin"), action, other)
        assert (decision.allowed, decision.rule) == (False, "tenant-isolation"), action
    operator = who("admin", tenant="ops")
    assert authorizer.is_operator(operator) and not authorizer.is_operator(who("admin"))
    assert not authorizer.is_operator(who("developer", tenant="ops"))
    assert authorizer.authorize(operator, "admin:keys:write", other).allowed
    assert authorizer.authorize(operator, "admin:read", other).allowed
    # an operator administers other tenants; it does not act as them
    assert authorizer.authorize(operator, "model:use", other).rule == "tenant-isolation"
    assert authorizer.authorize(operator, "trace:read", other).rule == "tenant-isolation"


def test_only_operators_write_tenants(authorizer: Authorizer) -> None:
    decision = authorizer.authorize(who("admin"), authz.ADMIN_TENANTS_WRITE, ACME)
    assert (decision.allowed, decision.rule) == (False, "operator-only")
    decision = authorizer.authorize(who("developer"), authz.ADMIN_TENANTS_WRITE, ACME)
    assert decision.rule == "rbac"  # the role is the first reason
    operator = who("admin", tenant="ops")
    assert authorizer.authorize(operator, authz.ADMIN_TENANTS_WRITE, ACME).allowed


def test_model_access_is_the_key_list_within_the_tenant_list(authorizer: Authorizer) -> None:
    principal = who(
        "developer", key_models=("gpt-4o*", "claude-3-5"), tenant_models=("gpt-4o-mini", "claude*")
    )

    def decide(model: str) -> tuple[bool, str]:
        decision = authorizer.authorize(principal, "model:use", Resource("acme", model))
        return decision.allowed, decision.rule

    assert decide("gpt-4o-mini") == (True, "rbac:developer")
    assert decide("claude-3-5") == (True, "rbac:developer")
    assert decide("gpt-4o") == (False, "tenant-models")
    assert decide("llama") == (False, "key-models")
    unrestricted = who("developer")
    assert authorizer.authorize(unrestricted, "model:use", Resource("acme", "anything")).allowed


def test_knowledge_bases_are_scoped_like_models(authorizer: Authorizer) -> None:
    principal = who("developer", key_knowledge_bases=("hr-*",), tenant_knowledge_bases=("hr-eu",))
    for action in ("kb:read", "kb:write"):
        assert authorizer.authorize(principal, action, Resource("acme", "hr-eu")).allowed
        refused = authorizer.authorize(principal, action, Resource("acme", "hr-us"))
        assert refused.rule == "tenant-knowledge-bases"
        refused = authorizer.authorize(principal, action, Resource("acme", "finance"))
        assert refused.rule == "key-knowledge-bases"


RESEARCH_ONLY = [
    AccessRule(
        name="research-gpt4o",
        effect="allow",
        actions=["model:use"],
        resources=["gpt-4o"],
        when={"department": "research"},
    ),
    AccessRule(
        name="no-gpt4o",
        effect="deny",
        actions=["model:use"],
        resources=["gpt-4o"],
        reason="gpt-4o is reserved for research",
    ),
]


def test_a_model_only_for_one_department(authorizer: Authorizer) -> None:
    rules = Authorizer(settings=AuthSettings(rules=RESEARCH_ONLY))
    gpt4o = Resource("acme", "gpt-4o")
    research = who("developer", attributes={"department": "research"})
    sales = who("developer", attributes={"department": "sales"})
    nobody = who("developer")
    assert rules.authorize(research, "model:use", gpt4o).rule == "settings:research-gpt4o"
    denied = rules.authorize(sales, "model:use", gpt4o)
    assert (denied.allowed, denied.rule) == (False, "settings:no-gpt4o")
    assert denied.reason == "gpt-4o is reserved for research"
    assert not rules.authorize(nobody, "model:use", gpt4o).allowed
    other = rules.authorize(sales, "model:use", Resource("acme", "gpt-4o-mini"))
    assert (other.allowed, other.rule) == (True, "rbac:developer")


def test_conditions_cover_lists_roles_request_attributes_and_unless() -> None:
    rules = [
        AccessRule(
            name="eu-only",
            effect="deny",
            actions=["model:*"],
            unless={"region": ["eu-west", "eu-central"]},
        ),
        AccessRule(name="services-read-nothing", effect="deny", when={"role": "service"}),
    ]
    authorizer = Authorizer(settings=AuthSettings(rules=rules))
    model = Resource("acme", "m")
    assert authorizer.authorize(who("developer"), "model:use", model, {"region": "eu-west"}).allowed
    assert (
        authorizer.authorize(who("developer"), "model:use", model, {"region": "us"}).rule
        == "settings:eu-only"
    )
    assert not authorizer.authorize(who("developer"), "model:use", model).allowed
    refused = authorizer.authorize(who("service"), "kb:read", ACME)
    assert refused.rule == "settings:services-read-nothing"
    assert authorizer.authorize(who("developer"), "kb:read", ACME).allowed


def test_request_attributes_cannot_override_the_callers() -> None:
    authorizer = Authorizer(settings=AuthSettings(rules=RESEARCH_ONLY))
    sales = who("developer", attributes={"department": "sales"})
    gpt4o = Resource("acme", "gpt-4o")
    forged = authorizer.authorize(sales, "model:use", gpt4o, {"department": "research"})
    assert (forged.allowed, forged.rule) == (False, "settings:no-gpt4o")
    forged = authorizer.authorize(sales, "model:use", gpt4o, {"tenant": "ops", "role": "admin"})
    assert not forged.allowed


def test_tenant_policy_rules_follow_the_settings_rules() -> None:
    tenant_rules = {
        "acme": [AccessRule(name="acme-no-kb-writes", effect="deny", actions=["kb:write"])],
    }
    settings = AuthSettings(
        rules=[AccessRule(name="writers", effect="allow", actions=["kb:write"], when={"w": "1"})]
    )
    authorizer = Authorizer(settings=settings, tenant_rules=lambda t: tenant_rules.get(t, []))
    kb = Resource("acme", "docs")
    assert authorizer.authorize(who("developer"), "kb:write", kb).rule == "policy:acme-no-kb-writes"
    writer = who("developer", attributes={"w": "1"})
    assert authorizer.authorize(writer, "kb:write", kb).rule == "settings:writers"
    other = who("developer", tenant="globex")
    assert authorizer.authorize(other, "kb:write", Resource("globex", "docs")).allowed


def test_rules_narrow_roles_and_never_widen_them() -> None:
    generous = [AccessRule(name="everything", effect="allow", actions=["*"])]
    authorizer = Authorizer(settings=AuthSettings(rules=generous))
    decision = authorizer.authorize(who("viewer"), "model:use", ACME)
    assert (decision.allowed, decision.rule) == (False, "rbac")
    assert not authorizer.authorize(who("admin"), "model:use", Resource("globex")).allowed


def test_a_denial_raises_with_its_rule(authorizer: Authorizer) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        authorizer.require(who("viewer"), "model:use", ACME)
    assert (caught.value.status, caught.value.code, caught.value.rule) == (
        403,
        "permission_denied",
        "rbac",
    )
    limited = who("developer", key_models=("a",))
    with pytest.raises(PermissionDeniedError) as caught:
        authorizer.require(limited, "model:use", Resource("acme", "b"))
    assert (caught.value.code, caught.value.rule) == ("model_not_allowed", "key-models")
    assert authorizer.require(limited, "model:use", Resource("acme", "a")).allowed


def test_rules_in_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        AuthSettings(rules=[{"name": "x", "effect": "maybe"}])
    with pytest.raises(ValidationError):
        AuthSettings(rules=[{"name": "x", "effect": "deny", "colour": "red"}])
    parsed = AuthSettings.model_validate({"rules": [{"name": "x", "effect": "deny"}]})
    assert parsed.rules[0].actions == ["*"] and parsed.rules[0].resources == ["*"]
