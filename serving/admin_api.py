"""The admin API: tenants, keys, policies and model access under `/admin/v1`, with its OpenAPI
3.1 description at `/openapi.json`.

Thin like the bridge: parse the body into a model, authorize, publish the new record, answer.
Every route but `/openapi.json` authenticates the caller with the same `IdentityRegistry` the
bridge uses (`Authorization: Bearer <key or JWT>`) and authorizes it with `Authorizer`:

- an **operator** (an admin of `auth.operator_tenant`) administers every tenant and alone
  creates tenants and changes their status, model access and limits (`admin:tenants:write`);
- a **tenant admin** (role `admin` in any other tenant) reads its tenant and manages its keys
  and its policy; another tenant's key or policy is answered 404 (its existence is not told),
  an explicit other `tenant_id` 403;
- other roles get 403 on every admin route; `GET /admin/v1/whoami` answers any caller.

A write publishes an `ApiKeyRecord`, `TenantRecord` or `PolicyRecord` through the
`RecordPublisher` port, then folds it into the local registry, so a read right after a write
sees it (other processes see it when they fold the topic). A created or rotated key's token is
in that one response and nowhere else. Every admin call past authentication is described by an
`AdminAudit` handed to the `audit` sink (the caller turns it into an AuditRecord); no secret
is ever in it.

The handlers answer errors themselves (OpenAI-style bodies), so the routes can be served as
an application of their own (`build_admin_app`) or added to another (`AdminApi.add_routes`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from aiohttp import web
from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from sluicegate.connectors.key_hashing import SecretHasher
from sluicegate.errors import AuthError, BrokerError
from sluicegate.processors import authz
from sluicegate.processors.authz import Authorizer, Resource
from sluicegate.processors.identity import (
    ACTIVE,
    REVOKED,
    TENANT_ID_PATTERN,
    IdentityRecord,
    IdentityRegistry,
    IssuedKey,
    Principal,
    identity_envelope,
    issue_key,
    policy_access_rules,
    policy_version,
    revised,
    token_from_headers,
    within,
)
from sluicegate.schemas.models import ApiKeyRecord, IdentityLimits, PolicyRecord, TenantRecord
from sluicegate.serving.admin_models import (
    MAX_POLICY_CHARS,
    AccessUpdate,
    AccessView,
    CreatedKey,
    ErrorBody,
    KeyCreate,
    KeyList,
    KeyRotate,
    KeyUpdate,
    KeyView,
    Limits,
    PolicyUpdate,
    PolicyView,
    RotatedKey,
    TenantCreate,
    TenantList,
    TenantUpdate,
    TenantView,
    WhoAmI,
)
from sluicegate.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "/admin/v1"
PRODUCER = "admin-api"
KEY_ID_PATTERN = r"^[A-Za-z0-9]{12}$"
MAX_BODY_BYTES = 12 * MAX_POLICY_CHARS + 64 * 1024


class RecordPublisher(Protocol):
    """Appends an identity record to the compacted identity topic (key: `record_key`)."""

    async def publish(self, record: IdentityRecord) -> None: ...


Outcome = Literal["ok", "denied", "not_found", "invalid", "conflict", "failed"]


@dataclass(frozen=True, slots=True)
class AdminAudit:
    """What one admin call did, for the audit trail. `tenant_id` is the tenant acted on."""

    actor: str
    actor_tenant: str
    action: str
    resource: str
    tenant_id: str
    outcome: Outcome
    status: int
    detail: Mapping[str, Any] = field(default_factory=dict)

    def detail_json(self) -> str:
        return json.dumps(
            {"outcome": self.outcome, "status": self.status, **self.detail},
            sort_keys=True,
            separators=(",", ":"),
        )


AuditSink = Callable[[AdminAudit], Awaitable[None]]
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


# -- errors, calls and routes ----------------------------------------------------------------

_ERRORS: dict[int, tuple[str, Outcome, str]] = {
    400: ("invalid_request_error", "invalid", "The body is missing or not JSON."),
    401: ("authentication_error", "denied", "No valid key or token."),
    403: ("permission_error", "denied", "Not allowed; `param` is null, the message says why."),
    404: ("not_found_error", "not_found", "No such object, or not the caller's to see."),
    409: ("conflict_error", "conflict", "Conflicts with the current state."),
    413: ("invalid_request_error", "invalid", "The body is too large."),
    415: ("invalid_request_error", "invalid", "The body is not application/json."),
    422: ("invalid_request_error", "invalid", "The body or the query is invalid."),
    503: ("server_error", "failed", "The change could not be published; nothing changed."),
}


def audit_outcome(status: int) -> Outcome:
    if status < 400:
        return "ok"
    return _ERRORS[status][1] if status in _ERRORS else "invalid"


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str, param: str | None = None, **detail: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.detail = detail


def error_response(
    status: int, message: str, *, code: str | None, param: str | None = None
) -> web.Response:
    """An OpenAI-style error answer."""
    kind = _ERRORS.get(status, ("invalid_request_error",))[0]
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


@dataclass(slots=True)
class _Call:
    """One admin call: who, and what it is about (filled in by the handler for the audit)."""

    request: web.Request
    principal: Principal
    tenant_id: str
    resource: str
    detail: dict[str, Any] = field(default_factory=dict)


Query = tuple[tuple[str, dict[str, Any]], ...]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    path: str
    handler: str  # the AdminApi method's name
    summary: str
    response: type[BaseModel]
    status: int
    body: type[BaseModel] | None
    body_required: bool
    audit: str | None  # the audited action; None: not an admin action (whoami)
    query: Query
    errors: frozenset[int]
    also_ok: tuple[int, ...] = ()  # other success statuses, answered with the same model
    params: Query = ()  # path parameter schemas besides `_PATH_PARAMS`
    required_query: frozenset[str] = frozenset()

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def operation_id(self) -> str:
        first, *rest = self.handler.split("_")
        return first + "".join(word.title() for word in rest)


ROUTES: list[_Route] = []  # the admin routes (AdminApi); other APIs declare into their own list
# The routes an application serves, as declared: what its `/openapi.json` describes.
DESCRIBED = web.AppKey("sluicegate.described_routes", list[_Route])
_M = TypeVar("_M", bound=BaseModel)


async def read_json_body(request: web.Request, model: type[_M], *, required: bool = True) -> _M:
    """The request's JSON body as `model`, strictly: 413 too large, 400 missing or not JSON,
    415 another content type, 422 not the model (the first problems, `param` the first)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        raise ApiError(413, f"Body too large: {error.text}", code="request_too_large") from None
    if not raw:
        if required:
            raise ApiError(400, "This route needs a JSON body.", code="missing_body")
        return model()
    if request.content_type != "application/json":
        message = f"Content-Type must be application/json, got '{request.content_type}'."
        raise ApiError(415, message, code="unsupported_media_type")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            message = f"The body is not valid JSON: {first['msg']}"
            raise ApiError(400, message, code="invalid_json") from None
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors()[:5]
        )
        param = ".".join(map(str, first["loc"])) or None
        raise ApiError(422, f"Invalid body: {problems}", code="invalid_body", param=param) from None


async def record_admin_call(
    audit: AuditSink | None,
    action: str,
    *,
    principal: Principal,
    tenant_id: str,
    resource: str,
    status: int,
    detail: dict[str, Any],
) -> None:
    """Hand one admin call past authentication to the audit sink; a lost entry is logged
    loudly, never raised (the action itself happened)."""
    if audit is None:
        return
    entry = AdminAudit(
        actor=principal.api_key_id,
        actor_tenant=principal.tenant_id,
        action=action,
        resource=resource,
        tenant_id=tenant_id,
        outcome=audit_outcome(status),
        status=status,
        detail=detail,
    )
    try:
        await audit(entry)
    except Exception:  # the action happened; losing its audit entry must be loud
        log.exception("audit entry not recorded: %s", entry)


_F = TypeVar("_F", bound=Callable[..., Awaitable[BaseModel]])


def _route(
    method: str,
    path: str,
    response: type[BaseModel],
    status: int = 200,
    body: type[BaseModel] | None = None,
    *,
    body_required: bool = True,
    query: Query = (),
    also: tuple[int, ...] = (),
    audited: bool = True,
    into: list[_Route] = ROUTES,
    action: str | None = None,
    also_ok: tuple[int, ...] = (),
    params: Query = (),
    required_query: tuple[str, ...] = (),
    writes: bool | None = None,
) -> Callable[[_F], _F]:
    """Declare a handler's route: the served route and its OpenAPI operation in one place,
    appended to `into` (the admin `ROUTES` unless another API keeps its own list). The summary
    is the handler's docstring, the audited action `action` (default `admin.<handler name>`).
    The documented errors are derived (401, 403, 422 always; 404 with a path parameter; 400,
    413, 415 with a body; 503 for a write: by default any method but GET) plus `also`."""

    def declare(handler: _F) -> _F:
        errors = {401, 403, 422, *also}
        errors |= {404} if "{" in path else set()
        errors |= {400, 413, 415} if body is not None else set()
        errors |= {503} if (method != "GET" if writes is None else writes) else set()
        summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
        audit = (action or f"admin.{handler.__name__}") if audited else None
        into.append(
            _Route(
                method, PREFIX + path, handler.__name__, summary, response, status, body,
                body_required, audit, query, frozenset(errors), also_ok, params,
                frozenset(required_query),
            )
        )  # fmt: skip
        return handler

    return declare


def describe_routes(app: web.Application, routes: Iterable[_Route]) -> None:
    """Record routes an API serves from `app`, for the `/openapi.json` it serves (call it
    from `add_routes`, before the application starts)."""
    if DESCRIBED not in app:
        app[DESCRIBED] = []
    app[DESCRIBED].extend(routes)


def _limits(body: Limits | None) -> IdentityLimits | None:
    return IdentityLimits(**body.model_dump()) if body is not None else None


def _changes(body: BaseModel) -> dict[str, Any]:
    """The fields a PATCH body sets; `limits: null` clears, another null leaves as is."""
    changes: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "limits":
            changes[name] = _limits(value)
        elif value is not None:
            changes[name] = list(dict.fromkeys(value)) if name == "roles" else value
    return changes


_BY_TENANT = ("tenant_id", {"type": "string", "pattern": TENANT_ID_PATTERN})
_BY_STATUS = ("status", {"type": "string", "enum": [ACTIVE, REVOKED]})
_PATH_PARAMS = {
    "tenant_id": {"type": "string", "pattern": TENANT_ID_PATTERN},
    "key_id": {"type": "string", "pattern": KEY_ID_PATTERN},
}


# -- the API ---------------------------------------------------------------------------------


class AdminApi:
    """The admin routes over one registry; see the module docstring for who may do what."""

    def __init__(
        self,
        *,
        registry: IdentityRegistry,
        publisher: RecordPublisher,
        hasher: SecretHasher,
        settings: Settings,
        clock: Clock = wall_clock_ms,
        audit: AuditSink | None = None,
        model_names: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._registry = registry
        self._publisher = publisher
        self._hasher = hasher
        self._settings = settings
        self._clock = clock
        self._audit = audit
        self._authz = Authorizer(settings=settings.auth, tenant_rules=registry.access_rules)
        self._model_names = model_names or (lambda: [m.name for m in settings.models])
        self._writes = asyncio.Lock()

    def add_routes(self, app: web.Application) -> None:
        """Serve the admin routes and `/openapi.json` from `app`."""
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._endpoint(route))
        describe_routes(app, ROUTES)
        app.router.add_get("/openapi.json", self._openapi)

    # -- the envelope of every call ------------------------------------------------------------

    def _endpoint(self, route: _Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        handler: Callable[[_Call], Awaitable[BaseModel]] = getattr(self, route.handler)
        allowed_query = {name for name, _ in route.query}

        async def endpoint(request: web.Request) -> web.Response:
            try:
                principal = await self._registry.authenticate_async(
                    token_from_headers(request.headers), now_ms=self._clock()
                )
            except AuthError as error:  # not audited: nobody to name
                return error_response(error.status, str(error), code=error.code)
            call = _Call(request, principal, principal.tenant_id, request.path)
            status = route.status
            try:
                unknown = sorted(set(request.query) - allowed_query)
                if unknown:
                    raise ApiError(
                        422, f"Unknown query parameters {unknown}.", code="invalid_query"
                    )
                body = await handler(call)
                response = web.json_response(body.model_dump(mode="json"), status=status)
            except ApiError as error:
                status = error.status
                call.detail.update(error.detail, error=error.code)
                response = error_response(status, error.message, code=error.code, param=error.param)
            except BrokerError as error:
                status, call.detail["error"] = 503, "publish_failed"
                message = f"The change could not be recorded: {error}"
                response = error_response(503, message, code="publish_failed")
            if route.audit is not None:
                await self._record(route.audit, call, status)
            return response

        return endpoint

    async def _record(self, action: str, call: _Call, status: int) -> None:
        await record_admin_call(
            self._audit,
            action,
            principal=call.principal,
            tenant_id=call.tenant_id,
            resource=call.resource,
            status=status,
            detail=call.detail,
        )

    async def _body(self, call: _Call, model: type[_M], *, required: bool = True) -> _M:
        return await read_json_body(call.request, model, required=required)

    # -- authorization and lookups -------------------------------------------------------------

    def _require(self, call: _Call, action: str, tenant_id: str) -> None:
        decision = self._authz.authorize(call.principal, action, Resource(tenant_id))
        if not decision.allowed:
            raise ApiError(403, decision.reason, code="permission_denied", rule=decision.rule)

    def _visible(self, call: _Call, action: str, tenant_id: str, what: str) -> None:
        """Authorize on an object of `tenant_id`: the caller's roles first (403), then the
        object's tenant, answered 404 so a tenant admin learns nothing of other tenants."""
        self._require(call, action, call.principal.tenant_id)
        decision = self._authz.authorize(call.principal, action, Resource(tenant_id))
        if not decision.allowed:
            raise ApiError(404, f"No {what}.", code="not_found", rule=decision.rule)

    def _tenant(self, tenant_id: str) -> TenantRecord:
        tenant = self._registry.tenant(tenant_id)
        if tenant is None:
            raise ApiError(404, f"No tenant `{tenant_id}`.", code="tenant_not_found")
        return tenant

    def _path_tenant(self, call: _Call, action: str, *, hide: bool = True) -> str:
        """The `{tenant_id}` of the path, authorized; `hide`: another tenant's is a 404."""
        tenant_id = call.request.match_info["tenant_id"]
        call.resource, call.tenant_id = f"tenant:{tenant_id}", tenant_id
        if hide:
            self._visible(call, action, tenant_id, f"tenant `{tenant_id}`")
        else:
            self._require(call, action, tenant_id)
        return tenant_id

    def _key(self, call: _Call, action: str) -> ApiKeyRecord:
        """The `{key_id}` of the path, authorized; another tenant's key is a 404."""
        key_id = call.request.match_info["key_id"]
        call.resource = f"key:{key_id}"
        key = self._registry.key(key_id)
        if key is None:
            self._require(call, action, call.principal.tenant_id)
            raise ApiError(404, f"No key `{key_id}`.", code="key_not_found")
        call.tenant_id = key.tenant_id
        self._visible(call, action, key.tenant_id, f"key `{key_id}`")
        return key

    def _active_key(self, key: ApiKeyRecord) -> ApiKeyRecord:
        """The key as folded now (under the write lock), refused once revoked."""
        current = self._registry.key(key.key_id) or key
        if current.status != ACTIVE:
            raise ApiError(409, f"The key `{key.key_id}` is revoked.", code="key_revoked")
        return current

    async def _publish(self, *records: IdentityRecord) -> None:
        """Publish, then fold locally: a read right after this write sees it."""
        for record in records:
            await self._publisher.publish(record)
            self._registry.apply(record)

    async def _new_secret_hash(self) -> tuple[IssuedKey, str]:
        issued = issue_key(self._settings.auth.key_prefix)
        loop = asyncio.get_running_loop()
        return issued, await loop.run_in_executor(None, self._hasher.hash, issued.secret)

    def _access(
        self, models: Sequence[str], kbs: Sequence[str], tenant: TenantRecord
    ) -> AccessView:
        effective = [
            name
            for name in self._model_names()
            if within(name, tuple(models)) and within(name, tuple(tenant.allowed_models))
        ]
        return AccessView(
            allowed_models=list(models),
            allowed_knowledge_bases=list(kbs),
            tenant_allowed_models=list(tenant.allowed_models),
            tenant_allowed_knowledge_bases=list(tenant.allowed_knowledge_bases),
            effective_models=effective,
        )

    # -- whoami and tenants --------------------------------------------------------------------

    @_route("GET", "/whoami", WhoAmI, audited=False)
    async def whoami(self, call: _Call) -> BaseModel:
        """The calling principal (any role)"""
        operator = self._authz.is_operator(call.principal)
        return WhoAmI(**call.principal.describe(), operator=operator)

    @_route("GET", "/tenants", TenantList)
    async def list_tenants(self, call: _Call) -> BaseModel:
        """Tenants: all of them for operators, else the caller's"""
        call.resource = "tenants"
        self._require(call, authz.ADMIN_READ, call.principal.tenant_id)
        everyone = self._authz.is_operator(call.principal)
        mine = call.principal.tenant_id
        return TenantList(
            data=[
                TenantView.of(t)
                for t in self._registry.tenants()
                if everyone or t.tenant_id == mine
            ]
        )

    @_route("POST", "/tenants", TenantView, 201, TenantCreate, also=(409,))
    async def create_tenant(self, call: _Call) -> BaseModel:
        """Create a tenant (operators)"""
        self._require(call, authz.ADMIN_TENANTS_WRITE, call.principal.tenant_id)
        body = await self._body(call, TenantCreate)
        call.resource, call.tenant_id = f"tenant:{body.tenant_id}", body.tenant_id
        self._require(call, authz.ADMIN_TENANTS_WRITE, body.tenant_id)
        async with self._writes:
            if self._registry.tenant(body.tenant_id) is not None:
                raise ApiError(409, f"Tenant `{body.tenant_id}` exists.", code="tenant_exists")
            fields = body.model_dump(exclude={"tenant_id", "limits"})
            record = TenantRecord(
                **identity_envelope(body.tenant_id, producer=PRODUCER),
                **fields,
                status=ACTIVE,
                limits=_limits(body.limits),
                revision=1,
            )
            await self._publish(record)
        return TenantView.of(record)

    @_route("GET", "/tenants/{tenant_id}", TenantView)
    async def get_tenant(self, call: _Call) -> BaseModel:
        """A tenant"""
        return TenantView.of(self._tenant(self._path_tenant(call, authz.ADMIN_READ)))

    @_route("PATCH", "/tenants/{tenant_id}", TenantView, 200, TenantUpdate, also=(409,))
    async def update_tenant(self, call: _Call) -> BaseModel:
        """Change a tenant's name, status, attributes or limits (operators)"""
        tenant_id = self._path_tenant(call, authz.ADMIN_TENANTS_WRITE, hide=False)
        changes = _changes(await self._body(call, TenantUpdate))
        if changes.get("status") == "disabled" and tenant_id == self._settings.auth.operator_tenant:
            raise ApiError(409, "The operator tenant cannot be disabled.", code="operator_tenant")
        async with self._writes:
            record = revised(self._tenant(tenant_id), producer=PRODUCER, **changes)
            await self._publish(record)
        call.detail.update(changed=sorted(changes), revision=record.revision)
        return TenantView.of(record)

    @_route("GET", "/tenants/{tenant_id}/access", AccessView)
    async def get_tenant_access(self, call: _Call) -> BaseModel:
        """A tenant's model and knowledge-base access"""
        tenant = self._tenant(self._path_tenant(call, authz.ADMIN_READ))
        return self._access(tenant.allowed_models, tenant.allowed_knowledge_bases, tenant)

    @_route("PUT", "/tenants/{tenant_id}/access", AccessView, 200, AccessUpdate)
    async def set_tenant_access(self, call: _Call) -> BaseModel:
        """Set a tenant's model and knowledge-base access (operators)"""
        tenant_id = self._path_tenant(call, authz.ADMIN_TENANTS_WRITE, hide=False)
        body = await self._body(call, AccessUpdate)
        async with self._writes:
            record = revised(self._tenant(tenant_id), producer=PRODUCER, **body.model_dump())
            await self._publish(record)
        call.detail.update(body.model_dump(), revision=record.revision)
        return self._access(body.allowed_models, body.allowed_knowledge_bases, record)

    # -- keys ----------------------------------------------------------------------------------

    @_route("GET", "/keys", KeyList, query=(_BY_TENANT, _BY_STATUS))
    async def list_keys(self, call: _Call) -> BaseModel:
        """API keys: operators see every tenant's, others their tenant's"""
        call.resource = "keys"
        tenant_id, status = call.request.query.get("tenant_id"), call.request.query.get("status")
        if tenant_id is not None and not re.match(TENANT_ID_PATTERN, tenant_id):
            raise ApiError(
                422, "`tenant_id` is not a tenant id.", code="invalid_query", param="tenant_id"
            )
        if status not in (None, ACTIVE, REVOKED):
            raise ApiError(
                422, "`status` is active or revoked.", code="invalid_query", param="status"
            )
        if tenant_id is not None:
            call.tenant_id = tenant_id
        self._require(call, authz.ADMIN_READ, call.tenant_id)
        if tenant_id is None and not self._authz.is_operator(call.principal):
            tenant_id = call.principal.tenant_id
        keys = self._registry.keys(tenant_id)
        return KeyList(data=[KeyView.of(k) for k in keys if status in (None, k.status)])

    @_route("POST", "/keys", CreatedKey, 201, KeyCreate, also=(404,))
    async def create_key(self, call: _Call) -> BaseModel:
        """Create an API key; the answer holds its token, once"""
        self._require(call, authz.ADMIN_KEYS_WRITE, call.principal.tenant_id)
        body = await self._body(call, KeyCreate)
        call.tenant_id = body.tenant_id or call.principal.tenant_id
        self._require(call, authz.ADMIN_KEYS_WRITE, call.tenant_id)
        self._tenant(call.tenant_id)
        issued, secret_hash = await self._new_secret_hash()
        now_ms = self._clock()
        fields = body.model_dump(exclude={"tenant_id", "limits", "expires_in_s", "roles"})
        record = ApiKeyRecord(
            **identity_envelope(call.tenant_id, producer=PRODUCER),
            **fields,
            key_id=issued.key_id,
            secret_hash=secret_hash,
            roles=list(dict.fromkeys(body.roles)),
            limits=_limits(body.limits),
            status=ACTIVE,
            created_at_ms=now_ms,
            expires_at_ms=now_ms + body.expires_in_s * 1000 if body.expires_in_s else None,
            revision=1,
        )
        async with self._writes:
            await self._publish(record)
        call.resource = f"key:{record.key_id}"
        call.detail.update(roles=record.roles, expires_at_ms=record.expires_at_ms)
        return CreatedKey(key=KeyView.of(record), api_key=issued.token)

    @_route("GET", "/keys/{key_id}", KeyView)
    async def get_key(self, call: _Call) -> BaseModel:
        """An API key (never its token)"""
        return KeyView.of(self._key(call, authz.ADMIN_READ))

    @_route("PATCH", "/keys/{key_id}", KeyView, 200, KeyUpdate, also=(409,))
    async def update_key(self, call: _Call) -> BaseModel:
        """Change a key's name, roles, attributes or limits"""
        key = self._key(call, authz.ADMIN_KEYS_WRITE)
        changes = _changes(await self._body(call, KeyUpdate))
        async with self._writes:
            record = revised(self._active_key(key), producer=PRODUCER, **changes)
            await self._publish(record)
        call.detail.update(changed=sorted(changes), revision=record.revision)
        return KeyView.of(record)

    @_route(
        "POST",
        "/keys/{key_id}/rotate",
        RotatedKey,
        201,
        KeyRotate,
        body_required=False,
        also=(409,),
    )
    async def rotate_key(self, call: _Call) -> BaseModel:
        """Replace a key by a new one (same grants); the answer holds its token, once"""
        key = self._key(call, authz.ADMIN_KEYS_WRITE)
        body = await self._body(call, KeyRotate, required=False)
        issued, secret_hash = await self._new_secret_hash()
        now_ms = self._clock()
        async with self._writes:
            old = self._active_key(key)
            new = ApiKeyRecord(
                **{
                    **old.model_dump(),
                    **identity_envelope(old.tenant_id, producer=PRODUCER),
                    "key_id": issued.key_id,
                    "secret_hash": secret_hash,
                    "created_at_ms": now_ms,
                    "rotated_from": old.key_id,
                    "revision": 1,
                }
            )
            if body.grace_s:
                ends = min(now_ms + body.grace_s * 1000, old.expires_at_ms or 2**62)
                retired = revised(old, producer=PRODUCER, expires_at_ms=ends)
            else:
                retired = revised(old, producer=PRODUCER, status=REVOKED)
            await self._publish(new, retired)
        call.detail.update(new_key_id=new.key_id, grace_s=body.grace_s)
        previous = KeyView.of(retired)
        return RotatedKey(key=KeyView.of(new), api_key=issued.token, previous=previous)

    @_route("POST", "/keys/{key_id}/revoke", KeyView)
    async def revoke_key(self, call: _Call) -> BaseModel:
        """Revoke a key (again: no change)"""
        key = self._key(call, authz.ADMIN_KEYS_WRITE)
        async with self._writes:
            current = self._registry.key(key.key_id) or key
            if current.status == REVOKED:
                call.detail["already_revoked"] = True
                return KeyView.of(current)
            record = revised(current, producer=PRODUCER, status=REVOKED)
            await self._publish(record)
        call.detail["revision"] = record.revision
        return KeyView.of(record)

    @_route("GET", "/keys/{key_id}/access", AccessView)
    async def get_key_access(self, call: _Call) -> BaseModel:
        """A key's model and knowledge-base access, and what is effective"""
        key = self._key(call, authz.ADMIN_READ)
        tenant = self._tenant(key.tenant_id)
        return self._access(key.allowed_models, key.allowed_knowledge_bases, tenant)

    @_route("PUT", "/keys/{key_id}/access", AccessView, 200, AccessUpdate, also=(409,))
    async def set_key_access(self, call: _Call) -> BaseModel:
        """Set a key's model and knowledge-base access"""
        key = self._key(call, authz.ADMIN_KEYS_WRITE)
        body = await self._body(call, AccessUpdate)
        async with self._writes:
            record = revised(self._active_key(key), producer=PRODUCER, **body.model_dump())
            await self._publish(record)
        call.detail.update(body.model_dump(), revision=record.revision)
        tenant = self._tenant(record.tenant_id)
        return self._access(body.allowed_models, body.allowed_knowledge_bases, tenant)

    # -- policies ------------------------------------------------------------------------------

    @_route("GET", "/policies/{tenant_id}", PolicyView)
    async def get_policy(self, call: _Call) -> BaseModel:
        """A tenant's policy document"""
        tenant_id = self._path_tenant(call, authz.ADMIN_READ)
        call.resource = f"policy:{tenant_id}"
        policy = self._registry.policy(tenant_id)
        if policy is None:
            raise ApiError(404, f"Tenant `{tenant_id}` has no policy.", code="policy_not_found")
        return PolicyView.model_validate(policy.model_dump())

    @_route("PUT", "/policies/{tenant_id}", PolicyView, 200, PolicyUpdate)
    async def set_policy(self, call: _Call) -> BaseModel:
        """Store a tenant's policy document (a YAML mapping; `access` holds ABAC rules)"""
        tenant_id = self._path_tenant(call, authz.ADMIN_POLICIES_WRITE, hide=False)
        call.resource = f"policy:{tenant_id}"
        body = await self._body(call, PolicyUpdate)
        try:
            rules = policy_access_rules(body.policy_yaml)
        except ValueError as error:
            message = f"Invalid policy: {error}"
            raise ApiError(422, message, code="invalid_policy", param="policy_yaml") from None
        self._tenant(tenant_id)
        async with self._writes:
            current = self._registry.policy(tenant_id)
            record = PolicyRecord(
                **identity_envelope(tenant_id, producer=PRODUCER),
                version=policy_version(body.policy_yaml),
                policy_yaml=body.policy_yaml,
                revision=(current.revision if current else 0) + 1,
            )
            await self._publish(record)
        call.detail.update(version=record.version, access_rules=len(rules))
        return PolicyView.model_validate(record.model_dump())

    # -- OpenAPI -------------------------------------------------------------------------------

    async def _openapi(self, request: web.Request) -> web.Response:
        """Every route served from this application (the admin's, the prompts', ...)."""
        described = request.app.get(DESCRIBED)
        return web.json_response(openapi(ROUTES if described is None else described))


def openapi(routes: Iterable[_Route] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 description, built from the declared routes and their body models."""
    routes = list(routes)
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in routes:
        models.append((route.response, "serialization"))
        if route.body is not None:
            models.append((route.body, "validation"))
    refs, definitions = models_json_schema(
        list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sluicegate admin API",
            "version": "1",
            "description": (__doc__ or "").split("\n\n")[0],
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _operation(route: _Route, refs: Mapping[Any, Any]) -> dict[str, Any]:
    def content(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return {"application/json": {"schema": refs[(model, mode)]}}

    responses = {
        str(status): {
            "description": "OK",
            "content": content(route.response, "serialization"),
        }
        for status in (route.status, *route.also_ok)
    }
    for status in sorted(route.errors):
        description = _ERRORS[status][2]
        responses[str(status)] = {
            "description": description,
            "content": content(ErrorBody, "serialization"),
        }
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "responses": responses,
    }
    path_schemas = {**_PATH_PARAMS, **dict(route.params)}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": path_schemas[name]}
        for name in route.path_params
    ] + [
        {"name": name, "in": "query", "required": name in route.required_query, "schema": schema}
        for name, schema in route.query
    ]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": route.body_required,
            "content": content(route.body, "validation"),
        }
    return operation


def build_admin_app(
    *,
    registry: IdentityRegistry,
    publisher: RecordPublisher,
    hasher: SecretHasher,
    settings: Settings,
    clock: Clock = wall_clock_ms,
    audit: AuditSink | None = None,
    model_names: Callable[[], Iterable[str]] | None = None,
) -> web.Application:
    """The admin API as an aiohttp application of its own (routes at `/admin/v1/...` and
    `/openapi.json`); `AdminApi(...).add_routes(app)` serves it from another one."""
    # Room for the largest valid policy even JSON-escaped (up to 12 bytes a character), so an
    # over-long one is a 422 that names the field, not a bare 413.
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    api = AdminApi(
        registry=registry,
        publisher=publisher,
        hasher=hasher,
        settings=settings,
        clock=clock,
        audit=audit,
        model_names=model_names,
    )
    api.add_routes(app)
    return app
