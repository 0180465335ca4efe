"""The prompt registry on the admin API: `/admin/v1/prompts…`.

    GET  /admin/v1/prompts                        read   names, latest version, labels
    GET  /admin/v1/prompts/{name}?ref=            read   versions, labels, one version in full
    GET  /admin/v1/prompts/{name}/diff?a=&b=      read   unified diff, field by field
    POST /admin/v1/prompts                        write  the next version (body: the YAML's fields)
    POST /admin/v1/prompts/{name}/labels          write  {label, version}: move a label
    POST /admin/v1/prompts/{name}/rollback        write  {label: prod, to?}: back to the previous
    POST /admin/v1/prompts/{name}/render          read   {ref?, variables, messages}: dry run

Callers authenticate like every admin route (the `IdentityRegistry`, `Authorization: Bearer`),
and act on their own tenant's prompts only: the tenant is the caller's, never one from the body
or the path, so another tenant's prompt is simply not found. Writing needs the role `admin` or
`developer` (`prompts:write`), reading any role (`prompts:read`); processors/authz.py has no
prompt actions, so the two are decided here and ABAC rules do not apply to them yet.

A write builds the event with the pure registry (processors/prompt_registry.py), publishes it
through the `PromptPublisher` port, then folds it into the local registry, so a read right after
it sees the new version; writes are serialized so two calls never build the same version
number. Every call past authentication is audited (`AdminAudit`, action
`admin.prompts.<route>`). Registry errors answer with their code: 404 `prompt_not_found`,
`prompt_version_not_found`, `prompt_label_not_found`; 422 `prompt_invalid`; 400
`prompt_variables_invalid`, `prompt_unsafe`, `prompt_too_large`; 409 `prompt_no_change`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluicegate.errors import AuthError, BrokerError
from sluicegate.processors.identity import IdentityRegistry, Principal, token_from_headers
from sluicegate.processors.prompt_fewshot import Embedder, ExampleEmbeddings
from sluicegate.processors.prompt_registry import (
    PromptError,
    PromptRegistry,
    PromptSpec,
    RenderedPrompt,
    prompt_key,
    render,
)
from sluicegate.schemas.models import PromptVersionPublished
from sluicegate.serving.admin_api import (
    PREFIX,
    AdminAudit,
    AuditSink,
    Clock,
    Outcome,
    error_response,
    wall_clock_ms,
)

log = logging.getLogger(__name__)

PROMPTS_READ = "prompts:read"
PROMPTS_WRITE = "prompts:write"
WRITER_ROLES = frozenset({"admin", "developer"})
PRODUCER = "admin-api"
MAX_BODY_BYTES = 512 * 1024


class PromptPublisher(Protocol):
    """Appends a prompt record to sg.prompts (key: `prompt_key(event)`) and returns once the
    broker acknowledged it; raises BrokerError otherwise."""

    async def publish(self, event: PromptVersionPublished) -> None: ...


class Journal(Protocol):
    """What `JournalPromptPublisher` needs of the bridge's producer (serving/kafka_io.py)."""

    def publish(self, topic: str, key: str | bytes | None, value: bytes) -> Awaitable[None]: ...


class Encoder(Protocol):
    def encode(self, event: Any) -> bytes: ...


class JournalPromptPublisher:
    """The Kafka adapter of `PromptPublisher` over the bridge's journal producer."""

    def __init__(self, *, journal: Journal, serde: Encoder, topic: str) -> None:
        self._journal = journal
        self._serde = serde
        self._topic = topic

    async def publish(self, event: PromptVersionPublished) -> None:
        await self._journal.publish(self._topic, prompt_key(event), self._serde.encode(event))


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    version: int = Field(ge=1)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = "prod"
    to: int | None = Field(default=None, ge=1)


class RenderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ref: str | int | None = Field(default=None, description="version, semver or label")
    variables: dict[str, Any] = Field(default_factory=dict)
    messages: list[dict[str, Any]] = Field(default_factory=list)


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


@dataclass(slots=True)
class _Call:
    request: web.Request
    principal: Principal
    resource: str = "prompts"
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def name(self) -> str:
        return self.request.match_info["name"]


Handler = Callable[[_Call], Awaitable[tuple[int, Any]]]


_OUTCOMES: dict[int, Outcome] = {
    401: "denied",
    403: "denied",
    404: "not_found",
    409: "conflict",
    503: "failed",
}


def _outcome(status: int) -> Outcome:
    return "ok" if status < 400 else _OUTCOMES.get(status, "invalid")


class PromptsApi:
    """The prompt routes over one prompt registry (the process's PromptView's, in the bridge)."""

    def __init__(
        self,
        *,
        identity: IdentityRegistry,
        prompts: PromptRegistry,
        publisher: PromptPublisher,
        clock: Clock = wall_clock_ms,
        audit: AuditSink | None = None,
        embed: Embedder | None = None,
        embeddings: ExampleEmbeddings | None = None,
    ) -> None:
        self._identity = identity
        self._prompts = prompts
        self._publisher = publisher
        self._clock = clock
        self._audit = audit
        self._embed = embed
        self._embeddings = embeddings
        self._writes = asyncio.Lock()

    def add_routes(self, app: web.Application) -> None:
        base = f"{PREFIX}/prompts"
        routes: list[tuple[str, str, Handler, str]] = [
            ("GET", base, self.list_prompts, "list"),
            ("POST", base, self.publish, "publish"),
            ("GET", base + "/{name}", self.get_prompt, "get"),
            ("GET", base + "/{name}/diff", self.diff, "diff"),
            ("POST", base + "/{name}/labels", self.label, "label"),
            ("POST", base + "/{name}/rollback", self.rollback, "rollback"),
            ("POST", base + "/{name}/render", self.render, "render"),
        ]
        for method, path, handler, action in routes:
            app.router.add_route(method, path, self._endpoint(handler, f"admin.prompts.{action}"))

    # -- the envelope of every call ------------------------------------------------------------

    def _endpoint(
        self, handler: Handler, action: str
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def endpoint(request: web.Request) -> web.Response:
            try:
                principal = await self._identity.authenticate_async(
                    token_from_headers(request.headers), now_ms=self._clock()
                )
            except AuthError as error:  # not audited: nobody to name
                return error_response(error.status, str(error), code=error.code)
            call = _Call(request, principal)
            try:
                status, body = await handler(call)
                response = web.json_response(body, status=status)
            except ApiError as error:
                status = error.status
                call.detail["error"] = error.code
                response = error_response(status, error.message, code=error.code, param=error.param)
            except PromptError as error:
                status = error.http_status
                call.detail["error"] = error.code
                response = error_response(status, error.message, code=error.code)
            except BrokerError as error:
                status, call.detail["error"] = 503, "publish_failed"
                message = f"The change could not be recorded: {error}"
                response = error_response(503, message, code="publish_failed")
            await self._record(action, call, status)
            return response

        return endpoint

    async def _record(self, action: str, call: _Call, status: int) -> None:
        if self._audit is None:
            return
        entry = AdminAudit(
            actor=call.principal.api_key_id,
            actor_tenant=call.tenant_id,
            action=action,
            resource=call.resource,
            tenant_id=call.tenant_id,
            outcome=_outcome(status),
            status=status,
            detail=call.detail,
        )
        try:
            await self._audit(entry)
        except Exception:  # the action happened; losing its audit entry must be loud
            log.exception("audit entry not recorded: %s", entry)

    def _require(self, call: _Call, action: str) -> None:
        """`prompts:write` for admins and developers; `prompts:read` for any caller."""
        if action == PROMPTS_WRITE and call.principal.roles.isdisjoint(WRITER_ROLES):
            roles = ", ".join(sorted(call.principal.roles)) or "none"
            raise ApiError(
                403,
                f"Roles [{roles}] do not grant `{action}` (admin or developer does).",
                code="permission_denied",
            )

    async def _body(self, call: _Call, model: type[BaseModel], *, required: bool = True) -> Any:
        request = call.request
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
            data = json.loads(raw)
        except ValueError as error:
            raise ApiError(
                400, f"The body is not valid JSON: {error}", code="invalid_json"
            ) from None
        try:
            return model.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors()[:5]
            )
            param = ".".join(map(str, first["loc"])) or None
            raise ApiError(
                422, f"Invalid body: {problems}", code="invalid_body", param=param
            ) from None

    async def _publish(self, event: PromptVersionPublished) -> dict[str, Any]:
        """Publish, then fold locally: a read right after this write sees it."""
        await self._publisher.publish(event)
        version = self._prompts.apply(event)
        return version.describe(self._prompts.held(version))

    # -- reads ---------------------------------------------------------------------------------

    async def list_prompts(self, call: _Call) -> tuple[int, Any]:
        """The caller's prompts: latest version and labels of each."""
        self._require(call, PROMPTS_READ)
        tenant, data = call.tenant_id, []
        for name in self._prompts.names(tenant):
            latest = self._prompts.latest(tenant, name)
            data.append(
                {
                    "name": name,
                    "latest": latest.describe(self._prompts.held(latest), full=False),
                    "labels": self._prompts.labels(tenant, name),
                }
            )
        return 200, {"object": "list", "data": data}

    async def get_prompt(self, call: _Call) -> tuple[int, Any]:
        """One prompt: every version (newest first), its labels, and one version in full
        (`?ref=`: version, semver or label; default: what a bare name resolves to)."""
        self._require(call, PROMPTS_READ)
        call.resource = f"prompt:{call.name}"
        tenant, name = call.tenant_id, call.name
        versions = self._prompts.versions(tenant, name)
        ref = call.request.query.get("ref")
        resolved = self._prompts.resolve(tenant, f"{name}@{ref}" if ref else name)
        return 200, {
            "name": name,
            "labels": self._prompts.labels(tenant, name),
            "versions": [v.describe(self._prompts.held(v), full=False) for v in reversed(versions)],
            "resolved": resolved.describe(self._prompts.held(resolved)),
        }

    async def diff(self, call: _Call) -> tuple[int, Any]:
        self._require(call, PROMPTS_READ)
        call.resource = f"prompt:{call.name}"
        query = call.request.query
        for param in ("a", "b"):
            if not query.get(param):
                raise ApiError(
                    422, f"`{param}` (version, semver or label) is required.",
                    code="invalid_query", param=param,
                )  # fmt: skip
        text = self._prompts.diff(call.tenant_id, call.name, query["a"], query["b"])
        old = self._prompts.resolve(call.tenant_id, f"{call.name}@{query['a']}")
        new = self._prompts.resolve(call.tenant_id, f"{call.name}@{query['b']}")
        return 200, {"name": call.name, "a": old.ref, "b": new.ref, "diff": text}

    async def render(self, call: _Call) -> tuple[int, Any]:
        """A dry run: the messages a request naming this prompt would send."""
        self._require(call, PROMPTS_READ)
        call.resource = f"prompt:{call.name}"
        body: RenderBody = await self._body(call, RenderBody, required=False)
        ref = call.name if body.ref in (None, "") else f"{call.name}@{body.ref}"
        rendered = render(
            self._prompts,
            call.tenant_id,
            ref,
            body.variables,
            user_messages=body.messages,
            embed=self._embed,
            embeddings=self._embeddings,
        )
        call.detail["prompt_ref"] = rendered.prompt_ref
        return 200, rendered_json(rendered)

    # -- writes --------------------------------------------------------------------------------

    async def publish(self, call: _Call) -> tuple[int, Any]:
        """Create a prompt or publish its next version."""
        self._require(call, PROMPTS_WRITE)
        spec: PromptSpec = await self._body(call, PromptSpec)
        call.resource = f"prompt:{spec.name}"
        fields = spec.publish_fields()
        fields["author"] = call.principal.api_key_id  # who, as authenticated; not the body's
        async with self._writes:
            event = self._prompts.publish(
                call.tenant_id, spec.name, **fields, producer=PRODUCER, now_ms=self._clock()
            )
            described = await self._publish(event)
        call.detail.update(version=event.version, semver=event.semver, labels=event.labels)
        return (201 if event.version == 1 else 200), described

    async def label(self, call: _Call) -> tuple[int, Any]:
        """Move a label to a version."""
        self._require(call, PROMPTS_WRITE)
        call.resource = f"prompt:{call.name}"
        body: LabelBody = await self._body(call, LabelBody)
        async with self._writes:
            event = self._prompts.label(
                call.tenant_id,
                call.name,
                body.label,
                body.version,
                now_ms=self._clock(),
                producer=PRODUCER,
            )
            described = await self._publish(event)
        call.detail.update(label=body.label, version=body.version)
        return 200, described

    async def rollback(self, call: _Call) -> tuple[int, Any]:
        """Give a label back to its previous holder (or to `to`)."""
        self._require(call, PROMPTS_WRITE)
        call.resource = f"prompt:{call.name}"
        body: RollbackBody = await self._body(call, RollbackBody, required=False)
        async with self._writes:
            before = self._prompts.labels(call.tenant_id, call.name).get(body.label)
            event = self._prompts.rollback(
                call.tenant_id,
                call.name,
                body.label,
                body.to,
                now_ms=self._clock(),
                producer=PRODUCER,
            )
            described = await self._publish(event)
        call.detail.update(label=body.label, version=event.version, previous=before)
        return 200, described


def rendered_json(rendered: RenderedPrompt) -> dict[str, Any]:
    few_shot = rendered.few_shot
    return {
        "prompt_ref": rendered.prompt_ref,
        "version": rendered.version,
        "semver": rendered.semver,
        "model": rendered.model,
        "messages": rendered.messages,
        "few_shot": None
        if few_shot is None
        else {"method": few_shot.method, "examples": len(few_shot.examples), "note": few_shot.note},
    }


def build_prompts_app(
    *,
    identity: IdentityRegistry,
    prompts: PromptRegistry,
    publisher: PromptPublisher,
    clock: Clock = wall_clock_ms,
    audit: AuditSink | None = None,
    embed: Embedder | None = None,
) -> web.Application:
    """The prompt routes as an application of their own (tests; a separate admin port)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    PromptsApi(
        identity=identity,
        prompts=prompts,
        publisher=publisher,
        clock=clock,
        audit=audit,
        embed=embed,
    ).add_routes(app)
    return app
