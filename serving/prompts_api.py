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

The routes are declared like the admin API's (`_route` of serving/admin_api.py, into
`PROMPT_ROUTES`): one declaration serves the route and describes it in the `/openapi.json` of
the application it is added to, with the request and response models below.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, TypeVar

from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
)

from sluicegate.errors import AuthError, BrokerError
from sluicegate.processors.identity import IdentityRegistry, Principal, token_from_headers
from sluicegate.processors.prompt_fewshot import Embedder, ExampleEmbeddings
from sluicegate.processors.prompt_registry import (
    LABEL,
    NAME,
    PromptError,
    PromptRegistry,
    PromptSpec,
    PromptVersion,
    RenderedPrompt,
    prompt_key,
    render,
)
from sluicegate.schemas.models import PromptVersionPublished
from sluicegate.serving.admin_api import (
    ApiError,
    AuditSink,
    Clock,
    _Route,
    _route,
    describe_routes,
    error_response,
    read_json_body,
    record_admin_call,
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


# -- request and response bodies (validated strictly: unknown fields and wrong types are 422s)


def _whole(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer; strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Version = Annotated[int, Field(ge=1, le=10**9), BeforeValidator(_whole)]
LabelName = Annotated[str, StringConstraints(pattern=LABEL.pattern)]
# A reference without the name: a version number, a semver or a label (digits bounded, so
# they are numbers the registry can parse).
REF_PATTERN = r"^(?:[0-9]{1,9}|[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}|[A-Za-z][A-Za-z0-9_-]{0,63})$"
Ref = Annotated[str, StringConstraints(pattern=REF_PATTERN)]
_REF_SCHEMA = TypeAdapter(Ref).json_schema()
_NAME_SCHEMA = TypeAdapter(Annotated[str, StringConstraints(pattern=NAME.pattern)]).json_schema()


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class PromptPublish(PromptSpec):
    """A prompt file's fields (docs/prompts.md); `author` is the caller's key, whatever the
    body says."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=NAME.pattern)]
    labels: list[LabelName] = Field(default_factory=list)


class PromptLabelMove(_Body):
    label: LabelName
    version: Version


class PromptRollback(_Body):
    label: LabelName = "prod"
    to: Version | None = Field(default=None, description="Default: the label's previous holder.")


class PromptRenderCall(_Body):
    ref: Ref | Version | None = Field(
        default=None, description="Version, semver or label; default: what the bare name is."
    )
    variables: dict[str, Any] = Field(default_factory=dict)
    messages: list[dict[str, Any]] = Field(
        default_factory=list, description="The caller's messages, placed as a request's are."
    )


class PromptVersionSummary(BaseModel):
    name: str
    version: int
    semver: str
    prompt_ref: str = Field(description="`name@version`")
    kind: Literal["template", "system", "chat"]
    model: str | None
    labels: list[str] = Field(description="The labels this version holds now.")
    author: str | None
    change_note: str | None
    published_at: str = Field(description="ISO 8601")

    @classmethod
    def of(cls, prompts: PromptRegistry, version: PromptVersion) -> PromptVersionSummary:
        return cls.model_validate(version.describe(prompts.held(version), full=False))


class PromptVersionView(PromptVersionSummary):
    """A version in full."""

    template: str | None = Field(description="Null for a chat prompt.")
    messages: list[dict[str, str]] | None = Field(description="A chat prompt's composition.")
    variables: dict[str, dict[str, Any]]
    few_shot: dict[str, Any] | None
    reasoning: dict[str, Any] | None
    labels_moved_at: int

    @classmethod
    def of(cls, prompts: PromptRegistry, version: PromptVersion) -> PromptVersionView:
        return cls.model_validate(version.describe(prompts.held(version)))


class PromptSummary(BaseModel):
    name: str
    latest: PromptVersionSummary
    labels: dict[str, int] = Field(description="Label → the version holding it.")


class PromptList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PromptSummary]


class PromptView(BaseModel):
    name: str
    labels: dict[str, int] = Field(description="Label → the version holding it.")
    versions: list[PromptVersionSummary] = Field(description="Newest first.")
    resolved: PromptVersionView = Field(description="The version `ref` names, in full.")


class PromptDiff(BaseModel):
    name: str
    a: str = Field(description="`a`, resolved: `name@version`")
    b: str = Field(description="`b`, resolved: `name@version`")
    diff: str = Field(description="A unified diff, field by field; empty when none differs.")


class FewShotUse(BaseModel):
    method: str
    examples: int = Field(description="How many examples were placed.")
    note: str | None


class RenderedPromptView(BaseModel):
    prompt_ref: str
    version: int
    semver: str
    model: str | None
    messages: list[dict[str, Any]]
    few_shot: FewShotUse | None

    @classmethod
    def of(cls, rendered: RenderedPrompt) -> RenderedPromptView:
        return cls.model_validate(rendered_json(rendered))


@dataclass(slots=True)
class _Call:
    request: web.Request
    principal: Principal
    resource: str = "prompts"
    detail: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # another success status than the route's

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def name(self) -> str:
        return self.request.match_info["name"]


Handler = Callable[[_Call], Awaitable[BaseModel]]
PROMPT_ROUTES: list[_Route] = []
_M = TypeVar("_M", bound=BaseModel)
_F = TypeVar("_F", bound=Callable[..., Awaitable[BaseModel]])


def _prompt_route(
    method: str,
    path: str,
    action: str,
    response: type[BaseModel],
    status: int = 200,
    body: type[BaseModel] | None = None,
    **options: Any,
) -> Callable[[_F], _F]:
    """`_route` into `PROMPT_ROUTES`, under `/prompts`, audited as `admin.prompts.<action>`."""
    params = (("name", _NAME_SCHEMA),) if "{name}" in path else ()
    return _route(
        method,
        "/prompts" + path,
        response,
        status,
        body,
        into=PROMPT_ROUTES,
        action=f"admin.prompts.{action}",
        params=params,
        **options,
    )


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
        """Serve the prompt routes from `app`, described in the `/openapi.json` it serves."""
        for route in PROMPT_ROUTES:
            app.router.add_route(route.method, route.path, self._endpoint(route))
        describe_routes(app, PROMPT_ROUTES)

    # -- the envelope of every call ------------------------------------------------------------

    def _endpoint(self, route: _Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        handler: Handler = getattr(self, route.handler)
        action = route.audit or f"admin.prompts.{route.handler}"

        async def endpoint(request: web.Request) -> web.Response:
            try:
                principal = await self._identity.authenticate_async(
                    token_from_headers(request.headers), now_ms=self._clock()
                )
            except AuthError as error:  # not audited: nobody to name
                return error_response(error.status, str(error), code=error.code)
            call = _Call(request, principal)
            try:
                _check_query(route, request)
                body = await handler(call)
                status = call.status or route.status
                response = web.json_response(body.model_dump(mode="json"), status=status)
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
        await record_admin_call(
            self._audit,
            action,
            principal=call.principal,
            tenant_id=call.tenant_id,
            resource=call.resource,
            status=status,
            detail=call.detail,
        )

    def _require(self, call: _Call, action: str) -> None:
        """`prompts:write` for admins and developers; `prompts:read` for any caller."""
        if action == PROMPTS_WRITE and call.principal.roles.isdisjoint(WRITER_ROLES):
            roles = ", ".join(sorted(call.principal.roles)) or "none"
            raise ApiError(
                403,
                f"Roles [{roles}] do not grant `{action}` (admin or developer does).",
                code="permission_denied",
            )

    async def _body(self, call: _Call, model: type[_M], *, required: bool = True) -> _M:
        return await read_json_body(call.request, model, required=required)

    async def _publish(self, event: PromptVersionPublished) -> PromptVersionView:
        """Publish, then fold locally: a read right after this write sees it."""
        await self._publisher.publish(event)
        return PromptVersionView.of(self._prompts, self._prompts.apply(event))

    # -- reads ---------------------------------------------------------------------------------

    @_prompt_route("GET", "", "list", PromptList)
    async def list_prompts(self, call: _Call) -> PromptList:
        """The caller's prompts: latest version and labels of each"""
        self._require(call, PROMPTS_READ)
        tenant, data = call.tenant_id, []
        for name in self._prompts.names(tenant):
            latest = PromptVersionSummary.of(self._prompts, self._prompts.latest(tenant, name))
            labels = self._prompts.labels(tenant, name)
            data.append(PromptSummary(name=name, latest=latest, labels=labels))
        return PromptList(data=data)

    @_prompt_route("GET", "/{name}", "get", PromptView, query=(("ref", _REF_SCHEMA),))
    async def get_prompt(self, call: _Call) -> PromptView:
        """One prompt: its versions (newest first), labels, and one version in full
        (`?ref=`: version, semver or label; default: what a bare name resolves to)."""
        self._require(call, PROMPTS_READ)
        call.resource = f"prompt:{call.name}"
        tenant, name = call.tenant_id, call.name
        versions = self._prompts.versions(tenant, name)
        ref = call.request.query.get("ref")
        resolved = self._prompts.resolve(tenant, f"{name}@{ref}" if ref else name)
        return PromptView(
            name=name,
            labels=self._prompts.labels(tenant, name),
            versions=[PromptVersionSummary.of(self._prompts, v) for v in reversed(versions)],
            resolved=PromptVersionView.of(self._prompts, resolved),
        )

    @_prompt_route(
        "GET",
        "/{name}/diff",
        "diff",
        PromptDiff,
        query=(("a", _REF_SCHEMA), ("b", _REF_SCHEMA)),
        required_query=("a", "b"),
    )
    async def diff_prompt(self, call: _Call) -> PromptDiff:
        """A unified diff, field by field, between two versions, semvers or labels"""
        self._require(call, PROMPTS_READ)
        call.resource = f"prompt:{call.name}"
        query = call.request.query
        text = self._prompts.diff(call.tenant_id, call.name, query["a"], query["b"])
        old = self._prompts.resolve(call.tenant_id, f"{call.name}@{query['a']}")
        new = self._prompts.resolve(call.tenant_id, f"{call.name}@{query['b']}")
        return PromptDiff(name=call.name, a=old.ref, b=new.ref, diff=text)

    @_prompt_route(
        "POST",
        "/{name}/render",
        "render",
        RenderedPromptView,
        body=PromptRenderCall,
        body_required=False,
        writes=False,
    )
    async def render_prompt(self, call: _Call) -> RenderedPromptView:
        """A dry run: the messages a request naming this prompt would send"""
        self._require(call, PROMPTS_READ)
        call.resource = f"prompt:{call.name}"
        body = await self._body(call, PromptRenderCall, required=False)
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
        return RenderedPromptView.of(rendered)

    # -- writes --------------------------------------------------------------------------------

    @_prompt_route(
        "POST", "", "publish", PromptVersionView, 201, PromptPublish, also=(409,), also_ok=(200,)
    )
    async def publish_prompt(self, call: _Call) -> PromptVersionView:
        """Create a prompt (201) or publish its next version (200)"""
        self._require(call, PROMPTS_WRITE)
        spec = await self._body(call, PromptPublish)
        call.resource = f"prompt:{spec.name}"
        fields = spec.publish_fields()
        fields["author"] = call.principal.api_key_id  # who, as authenticated; not the body's
        async with self._writes:
            event = self._prompts.publish(
                call.tenant_id, spec.name, **fields, producer=PRODUCER, now_ms=self._clock()
            )
            described = await self._publish(event)
        call.detail.update(version=event.version, semver=event.semver, labels=event.labels)
        call.status = 201 if event.version == 1 else 200
        return described

    @_prompt_route(
        "POST", "/{name}/labels", "label", PromptVersionView, 200, PromptLabelMove, also=(409,)
    )
    async def label_prompt(self, call: _Call) -> PromptVersionView:
        """Move a label to a version"""
        self._require(call, PROMPTS_WRITE)
        call.resource = f"prompt:{call.name}"
        body = await self._body(call, PromptLabelMove)
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
        return described

    @_prompt_route(
        "POST",
        "/{name}/rollback",
        "rollback",
        PromptVersionView,
        200,
        PromptRollback,
        body_required=False,
        also=(409,),
    )
    async def rollback_prompt(self, call: _Call) -> PromptVersionView:
        """Give a label back to its previous holder (or to `to`)"""
        self._require(call, PROMPTS_WRITE)
        call.resource = f"prompt:{call.name}"
        body = await self._body(call, PromptRollback, required=False)
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
        return described


def _check_query(route: _Route, request: web.Request) -> None:
    """The query against the route's declaration: no unknown parameter, the required ones
    present, each value matching its pattern."""
    query = request.query
    unknown = sorted(set(query) - {name for name, _ in route.query})
    if unknown:
        raise ApiError(422, f"Unknown query parameters {unknown}.", code="invalid_query")
    for name, schema in route.query:
        value = query.get(name)
        if value is None or (value == "" and name in route.required_query):
            if name in route.required_query:
                raise ApiError(
                    422, f"`{name}` (version, semver or label) is required.",
                    code="invalid_query", param=name,
                )  # fmt: skip
            continue
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            raise ApiError(
                422, f"`{name}` is not a version, semver or label.",
                code="invalid_query", param=name,
            )  # fmt: skip


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
