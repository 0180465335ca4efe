"""Authorization: may this principal do this action on this resource? Every answer names the
rule that decided it.

Evaluation, in order; the first step that refuses decides:

1. `unknown-action` — the action is not one of `ACTIONS`.
2. `tenant-isolation` — the resource belongs to another tenant. Only operators (admins of
   `auth.operator_tenant`) cross tenants, and only for `admin:*` actions.
3. `rbac` — no role of the principal grants the action (`ROLE_ACTIONS`).
4. `operator-only` — `admin:tenants:write` (creating tenants, changing their status, models and
   limits) is for operators: a tenant admin must not widen its own tenant's access.
5. `key-models` / `tenant-models` (for `model:use`), `key-knowledge-bases` /
   `tenant-knowledge-bases` (for `kb:*`) — the resource is outside the key's or the tenant's
   list (the intersection of the two applies; an empty list does not restrict).
6. ABAC rules: `auth.rules` from the settings (named `settings:<name>`), then the rules of the
   caller's tenant policy (`policy:<name>`), in order; the first whose actions, resources and
   conditions match decides, allow or deny. Rules only narrow what the roles permit.
7. Otherwise allowed by `rbac:<role>`.

Conditions (`when`, `unless`) compare attributes — the request's, overridden by the key's or
token's, overridden by the tenant's (so neither a request nor a tenant admin can fake what an
operator set) — plus `tenant`, `method` (api_key, jwt, anonymous) and `role` (matches if the
caller has any of the listed roles). Example, model `gpt-4o` for the research department only:

    access:
      - {name: research-gpt4o, effect: allow, actions: [model:use], resources: [gpt-4o],
         when: {department: research}}
      - {name: no-gpt4o, effect: deny, actions: [model:use], resources: [gpt-4o],
         reason: gpt-4o is reserved for research}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from sluicegate.errors import PermissionDeniedError
from sluicegate.processors.identity import Principal, within
from sluicegate.settings import AccessRule, AttributeCondition, AuthSettings

MODEL_USE = "model:use"
KB_READ = "kb:read"
KB_WRITE = "kb:write"
TRACE_READ = "trace:read"
ADMIN_READ = "admin:read"
ADMIN_KEYS_WRITE = "admin:keys:write"
ADMIN_TENANTS_WRITE = "admin:tenants:write"
ADMIN_POLICIES_WRITE = "admin:policies:write"

ACTIONS = frozenset(
    {
        MODEL_USE,
        KB_READ,
        KB_WRITE,
        TRACE_READ,
        ADMIN_READ,
        ADMIN_KEYS_WRITE,
        ADMIN_TENANTS_WRITE,
        ADMIN_POLICIES_WRITE,
    }
)
ROLE_ACTIONS: Mapping[str, frozenset[str]] = {
    "admin": ACTIONS,
    "developer": frozenset({MODEL_USE, KB_READ, KB_WRITE, TRACE_READ}),
    "viewer": frozenset({KB_READ, TRACE_READ}),
    "service": frozenset({MODEL_USE, KB_READ}),
}
OPERATOR_ONLY = frozenset({ADMIN_TENANTS_WRITE})


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action is on: its tenant and its name (a model alias, a knowledge base, a key
    id; empty when the action has no single target)."""

    tenant_id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: str

    def raise_if_denied(self) -> Decision:
        if not self.allowed:
            code = "model_not_allowed" if self.rule.endswith("-models") else "permission_denied"
            raise PermissionDeniedError(self.reason, rule=self.rule, reason=self.reason, code=code)
        return self


def _holds(
    condition: AttributeCondition, context: Mapping[str, str], roles: frozenset[str]
) -> bool:
    for name, expected in condition.items():
        values = (expected,) if isinstance(expected, str) else tuple(expected)
        if name == "role":
            if roles.isdisjoint(values):
                return False
        elif context.get(name) not in values:
            return False
    return True


def _violated(
    condition: AttributeCondition, context: Mapping[str, str], roles: frozenset[str]
) -> bool:
    """`unless`: true if any single condition holds."""
    return any(_holds({name: value}, context, roles) for name, value in condition.items())


def rule_matches(
    rule: AccessRule,
    action: str,
    resource: str,
    context: Mapping[str, str],
    roles: frozenset[str],
) -> bool:
    return (
        any(fnmatchcase(action, pattern) for pattern in rule.actions)
        and any(fnmatchcase(resource, pattern) for pattern in rule.resources)
        and _holds(rule.when, context, roles)
        and not _violated(rule.unless, context, roles)
    )


class Authorizer:
    """Decides `authorize(principal, action, resource)`; pure, a few µs per decision."""

    def __init__(
        self,
        *,
        settings: AuthSettings,
        tenant_rules: Callable[[str], Sequence[AccessRule]] = lambda _tenant: (),
    ) -> None:
        self._settings = settings
        self._tenant_rules = tenant_rules

    def is_operator(self, principal: Principal) -> bool:
        """An admin of the operator tenant: administers every tenant."""
        return principal.tenant_id == self._settings.operator_tenant and "admin" in principal.roles

    def authorize(
        self,
        principal: Principal,
        action: str,
        resource: Resource,
        attributes: Mapping[str, str] | None = None,
    ) -> Decision:
        if action not in ACTIONS:
            return Decision(False, f"`{action}` is not a known action.", "unknown-action")
        operator = self.is_operator(principal)
        if resource.tenant_id != principal.tenant_id and not (
            operator and action.startswith("admin:")
        ):
            return Decision(
                False,
                f"Tenant `{principal.tenant_id}` cannot act on tenant `{resource.tenant_id}`.",
                "tenant-isolation",
            )
        granting = sorted(r for r in principal.roles if action in ROLE_ACTIONS.get(r, ()))
        if not granting:
            roles = ", ".join(sorted(principal.roles)) or "none"
            return Decision(False, f"Roles [{roles}] do not grant `{action}`.", "rbac")
        if action in OPERATOR_ONLY and not operator:
            return Decision(
                False,
                f"`{action}` needs an admin of the operator tenant.",
                "operator-only",
            )
        scoped = self._scope(principal, action, resource.name)
        if scoped is not None:
            return scoped
        context = {  # the caller's attributes win over the request's
            **(attributes or {}),
            **principal.attributes,
            "tenant": principal.tenant_id,
            "method": principal.method,
        }
        for source, rules in (
            ("settings", self._settings.rules),
            ("policy", self._tenant_rules(principal.tenant_id)),
        ):
            for rule in rules:
                if rule_matches(rule, action, resource.name, context, principal.roles):
                    allowed = rule.effect == "allow"
                    reason = rule.reason or (
                        f"Rule `{rule.name}` {'allows' if allowed else 'denies'} `{action}`"
                        + (f" on `{resource.name}`." if resource.name else ".")
                    )
                    return Decision(allowed, reason, f"{source}:{rule.name}")
        return Decision(True, f"Role `{granting[0]}` grants `{action}`.", f"rbac:{granting[0]}")

    def require(
        self,
        principal: Principal,
        action: str,
        resource: Resource,
        attributes: Mapping[str, str] | None = None,
    ) -> Decision:
        """`authorize`, raising PermissionDeniedError (403, with the rule) on a denial."""
        return self.authorize(principal, action, resource, attributes).raise_if_denied()

    @staticmethod
    def _scope(principal: Principal, action: str, name: str) -> Decision | None:
        if not name or action not in (MODEL_USE, KB_READ, KB_WRITE):
            return None
        if action == MODEL_USE:
            what, suffix = "model", "models"
            levels = (("key", principal.key_models), ("tenant", principal.tenant_models))
        else:
            what, suffix = "knowledge base", "knowledge-bases"
            levels = (
                ("key", principal.key_knowledge_bases),
                ("tenant", principal.tenant_knowledge_bases),
            )
        for level, patterns in levels:
            if not within(name, patterns):
                return Decision(
                    False,
                    f"The {what} `{name}` is not allowed for this {level}.",
                    f"{level}-{suffix}",
                )
        return None
