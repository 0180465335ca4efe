"""The OpenAI-compatible HTTP ingress: journal the request, wait for its answer, return it.

Thin on purpose: parse the body into RequestReceived (serving/openai_format.py), write it to
sg.requests, and map the answer (ResponseReady, TokenChunks, RequestRejected) back to OpenAI's
JSON or SSE. Every accepted request gets a response or an explicit error; a timeout answers 504
and the request stays journaled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluicegate.connectors.key_hashing import Argon2SecretHasher
from sluicegate.errors import AuthError, BrokerError, IdempotencyError
from sluicegate.processors.authz import MODEL_USE, Authorizer, Resource
from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.processors.idempotency import fingerprint
from sluicegate.processors.identity import (
    IdentityRecord,
    Principal,
    identity_envelope,
    journaled_principal,
    record_key,
    token_from_headers,
)
from sluicegate.processors.prompt_registry import prompt_key
from sluicegate.schemas.models import (
    AuditRecord,
    Event,
    PromptVersionPublished,
    RequestReceived,
    RequestRejected,
    ResponseReady,
    Span,
    TokenChunk,
)
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving import openai_format as fmt
from sluicegate.serving.admin_api import AdminApi, AdminAudit
from sluicegate.serving.idempotency import IdempotencyGate, Lease
from sluicegate.serving.kafka_io import SIDE_LINGER_MS, AsyncProducer, ReplyRouter
from sluicegate.serving.knowledge_api import add_routes as add_knowledge_routes
from sluicegate.serving.metrics import BridgeMetrics
from sluicegate.serving.prompts_api import PromptsApi
from sluicegate.settings import Catalogue, Settings
from sluicegate.streams.catalogue_view import CatalogueView
from sluicegate.streams.identity_view import IdentityView
from sluicegate.streams.prompt_view import PromptView

log = logging.getLogger(__name__)

TENANT_HEADER = "X-Sluicegate-Tenant"  # honoured only for anonymous callers (auth.required off)
TIMEOUT_HEADER = "X-Sluicegate-Timeout"
# Per-request routing overrides and priority class; the same as extra_body={"sluicegate": {...}}
# (a header wins over the body's field), validated by admission (processors/routing.py).
OVERRIDE_HEADERS = {
    "X-Sluicegate-Deployment": "deployment",
    "X-Sluicegate-Strategy": "strategy",
    "X-Sluicegate-Priority": "priority",
}


class OpenAIError(Exception):
    """An answer in OpenAI's error format with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = fmt.error_body(message, type_=type_, param=param, code=code)
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


def _rejection_error(rejected: RequestRejected) -> OpenAIError:
    headers = dict(rejected.headers)
    if rejected.retry_after_s is not None:
        # Rounded up: advising a retry half a second early just earns another 429.
        headers["Retry-After"] = str(max(1, math.ceil(rejected.retry_after_s)))
    return OpenAIError(
        rejected.http_status,
        rejected.message,
        type_=rejected.error_type,
        code=rejected.code,
        headers=headers,
    )


@dataclass
class _Waiter:
    """Collects the events answering one request; `final` settles on the last one."""

    stream: bool
    final: asyncio.Future[Event]
    chunks: asyncio.Queue[TokenChunk | RequestRejected] | None = None

    def on_event(self, _request_id: str, event: Event) -> None:
        if isinstance(event, TokenChunk):
            if self.chunks is not None:
                self.chunks.put_nowait(event)
            return
        if self.chunks is not None and isinstance(event, RequestRejected):
            self.chunks.put_nowait(event)
        if not self.final.done():
            self.final.set_result(event)


class Bridge:
    """Holds the bridge's Kafka ends and serves the OpenAI routes."""

    def __init__(self, *, settings: Settings, serde: AvroSerde) -> None:
        self.settings = settings
        self.serde = serde
        self.instance_id = f"bridge-{uuid.uuid4().hex[:12]}"
        self.metrics = BridgeMetrics()
        # Idempotency-Keys of every bridge: sg.idempotency, followed from start() on.
        self.idempotency = IdempotencyGate(
            settings=settings, serde=serde, instance_id=self.instance_id
        )
        self.journal: AsyncProducer | None = None
        self.side: AsyncProducer | None = None  # lingers: the root spans nobody waits on
        self.router: ReplyRouter | None = None
        self.catalogue: CatalogueView | None = None
        # Who is calling: the key registry (sg.identity), followed from start() on.
        self.identity = IdentityView(settings=settings, serde=serde)
        # Prompts (sg.prompts) for the admin routes under /admin/v1/prompts.
        self.prompts = PromptView(settings=settings, serde=serde)
        self.authz = Authorizer(
            settings=settings.auth, tenant_rules=self.identity.registry.access_rules
        )
        self._requests_topic = settings.topic("requests")
        self._traces_topic = settings.topic("traces")
        self._identity_topic = settings.topic("identity")
        self._audit_topic = settings.topic("audit.pending")
        self._in_flight = 0

    async def start(self, _app: web.Application | None = None) -> None:
        loop = asyncio.get_running_loop()
        bootstrap = self.settings.kafka.bootstrap_servers
        client_config = self.settings.kafka.client_config()
        self.journal = AsyncProducer(
            bootstrap_servers=bootstrap, loop=loop, client_config=client_config
        )
        self.side = AsyncProducer(
            bootstrap_servers=bootstrap,
            loop=loop,
            client_config=client_config,
            linger_ms=SIDE_LINGER_MS,
        )
        self.router = ReplyRouter(
            bootstrap_servers=bootstrap,
            client_config=client_config,
            serde=self.serde,
            loop=loop,
            topics=[self.settings.topic("responses"), self.settings.topic("stream")],
        )
        await loop.run_in_executor(None, self.router.start)
        await self.idempotency.start(self.journal, self.router)
        await loop.run_in_executor(None, self.identity.start)
        await loop.run_in_executor(None, self.prompts.start)
        # Aliases and /v1/models follow catalogue reloads (the listener runs on the view's thread).
        self.catalogue = CatalogueView(settings=self.settings, serde=self.serde)
        self.catalogue.subscribe(lambda c: loop.call_soon_threadsafe(self._use_catalogue, c))
        await loop.run_in_executor(None, self.catalogue.start)

    def _use_catalogue(self, catalogue: Catalogue) -> None:
        self.settings = self.settings.with_catalogue(catalogue)

    async def stop(self, _app: web.Application | None = None) -> None:
        loop = asyncio.get_running_loop()
        if self.catalogue is not None:
            await loop.run_in_executor(None, self.catalogue.close)
        await loop.run_in_executor(None, self.identity.close)
        await loop.run_in_executor(None, self.prompts.close)
        await self.idempotency.stop()
        if self.router is not None:
            await loop.run_in_executor(None, self.router.close)
        if self.journal is not None:
            await loop.run_in_executor(None, self.journal.close)
        if self.side is not None:
            await loop.run_in_executor(None, self.side.close)

    def application(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.bridge.max_body_bytes,
            middlewares=[self._errors_middleware],
        )
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        add_knowledge_routes(app, self)  # /v1/knowledge/{kb}/documents and /search (RAG)
        AdminApi(
            registry=self.identity.registry,
            publisher=self,
            hasher=Argon2SecretHasher.from_settings(self.settings.auth),
            settings=self.settings,
            audit=self.audit,
            model_names=lambda: [m.name for m in self.settings.models],
        ).add_routes(app)
        PromptsApi(
            identity=self.identity.registry,
            prompts=self.prompts.registry,
            publisher=_PromptJournal(self),
            audit=self.audit,
        ).add_routes(app)
        return app

    # -- the admin API's ports ----------------------------------------------------------------

    async def publish(self, record: IdentityRecord) -> None:
        """Append a key, tenant or policy record to sg.identity (acks=all) and wait for it."""
        assert self.journal is not None
        await self.journal.publish(
            self._identity_topic, record_key(record), self.serde.encode(record)
        )

    async def audit(self, entry: AdminAudit) -> None:
        """An admin call, as an audit fact for the audit agent to chain into sg.audit."""
        assert self.journal is not None
        record = AuditRecord(
            **identity_envelope(entry.tenant_id, producer=self.instance_id),
            actor=entry.actor,
            action=entry.action,
            resource=entry.resource,
            detail_json=entry.detail_json(),
            prev_hash="",
            hash="",
        )
        await self.journal.publish(self._audit_topic, entry.tenant_id, self.serde.encode(record))

    async def publish_prompt(self, event: PromptVersionPublished) -> None:
        """Append a prompt version to sg.prompts (acks=all) and wait for it."""
        assert self.journal is not None
        await self.journal.publish(
            self.settings.topic("prompts"), prompt_key(event), self.serde.encode(event)
        )

    # -- middleware ---------------------------------------------------------------------------

    @web.middleware
    async def _errors_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        endpoint = (
            request.match_info.route.resource.canonical
            if (request.match_info.route.resource is not None)
            else "unmatched"
        )
        started = time.perf_counter()
        try:
            response = await handler(request)
        except OpenAIError as error:
            response = error.response()
        except AuthError as error:
            response = OpenAIError(
                error.status, str(error), type_=error.error_type, code=error.code
            ).response()
        except web.HTTPRequestEntityTooLarge as error:
            response = OpenAIError(
                413, f"Request body too large: {error.text}", code="request_too_large"
            ).response()
        except web.HTTPException as error:
            if error.status < 400:
                raise
            response = OpenAIError(
                error.status, error.reason or error.text or "error", type_="invalid_request_error"
            ).response()
        except Exception:
            log.exception("unhandled error on %s", request.path)
            response = OpenAIError(
                500, "The server had an error processing your request.", type_="server_error"
            ).response()
        self.metrics.requests.labels(endpoint, str(response.status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    # -- routes -------------------------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "instance": self.instance_id})

    async def readyz(self, _request: web.Request) -> web.Response:
        journal = self.journal
        loop = asyncio.get_running_loop()
        ready = journal is not None and await loop.run_in_executor(None, journal.ready, 2.0)
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics_page(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _model_card(self, name: str) -> dict[str, Any]:
        alias = self.settings.alias(name)
        assert alias is not None
        return {
            "id": alias.name,
            "object": "model",
            "created": 0,
            "owned_by": "sluicegate",
            "description": alias.description,
        }

    async def _principal(self, request: web.Request) -> Principal:
        return await self.identity.registry.authenticate_async(
            token_from_headers(request.headers), now_ms=int(time.time() * 1000)
        )

    def _tenant(self, principal: Principal, request: web.Request) -> str:
        """The tenant comes from the authenticated identity, never from the request; only an
        anonymous caller (auth.required off, for development) may name one in a header."""
        if principal.method == "anonymous":
            return request.headers.get(TENANT_HEADER) or principal.tenant_id
        return principal.tenant_id

    def _may_use(self, principal: Principal, tenant: str, model: str) -> bool:
        return self.authz.authorize(principal, MODEL_USE, Resource(tenant, name=model)).allowed

    async def list_models(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        tenant = self._tenant(principal, request)
        data = [
            self._model_card(m.name)
            for m in self.settings.models
            if self._may_use(principal, tenant, m.name)
        ]
        return web.json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        name = request.match_info["model"]
        allowed = self._may_use(principal, self._tenant(principal, request), name)
        if self.settings.alias(name) is None or not allowed:
            raise OpenAIError(404, f"The model `{name}` does not exist.", code="model_not_found")
        return web.json_response(self._model_card(name))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        principal = await self._principal(request)
        tenant = self._tenant(principal, request)
        body = await self._json_body(request)
        timeout_s = self._timeout(request)
        idempotency_key = request.headers.get("Idempotency-Key")
        journal_event = self._parse(body, request, principal, tenant, idempotency_key, timeout_s)
        if isinstance(body.get("stream_options"), dict):
            request["stream_options"] = body["stream_options"]
        if self.settings.alias(journal_event.model) is None:
            raise OpenAIError(
                404,
                f"The model `{journal_event.model}` does not exist.",
                param="model",
                code="model_not_found",
            )
        self.authz.require(principal, MODEL_USE, Resource(tenant, name=journal_event.model))
        if idempotency_key:
            return await self._run_once(request, body, journal_event, idempotency_key, timeout_s)
        return (await self._run(request, journal_event, timeout_s))[1]

    async def _run_once(
        self,
        request: web.Request,
        body: dict[str, Any],
        event: RequestReceived,
        key: str,
        timeout_s: float,
    ) -> web.StreamResponse:
        """Idempotency-Key, on every bridge (serving/idempotency.py): replay the key's answer,
        wait for the request that holds the key, or hold it and run this one."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        routing = {h: request.headers[h] for h in OVERRIDE_HEADERS if request.headers.get(h)}
        try:
            admitted = await self.idempotency.admit(
                event, key=key, body_sha256=fingerprint(body, routing), timeout_s=timeout_s
            )
        except IdempotencyError as error:
            retry = {"Retry-After": "1"} if error.retry_after_s is not None else None
            raise OpenAIError(
                error.status, str(error), type_=error.error_type, code=error.code, headers=retry
            ) from error
        if not isinstance(admitted, Lease):
            self.metrics.idempotent_replays.inc()
            return await self._replay(request, admitted, event.stream)
        remaining = max(0.001, timeout_s - (loop.time() - started))  # the same overall deadline
        try:
            answer, response = await self._run(request, event, remaining)
        except OpenAIError as error:
            # Only a request shed before the journal is surely not on it: its key is freed.
            # Any other error may belong to a journaled request, whose answer may still come.
            self.idempotency.abandon(admitted, journaled=error.code != "overloaded")
            raise
        except BaseException:
            self.idempotency.abandon(admitted, journaled=True)
            raise
        self.idempotency.settle(admitted, answer)
        return response

    # -- helpers ------------------------------------------------------------------------------

    async def _json_body(self, request: web.Request) -> Any:
        limit = self.settings.bridge.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise OpenAIError(
                413,
                f"Request body of {request.content_length} bytes exceeds the "
                f"limit of {limit} bytes.",
                code="request_too_large",
            )
        if request.content_type != "application/json":
            raise OpenAIError(
                415,
                f"Content-Type must be application/json, got '{request.content_type}'.",
                code="unsupported_media_type",
            )
        raw = await request.read()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OpenAIError(
                400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
            ) from exc

    def _timeout(self, request: web.Request) -> float:
        limit = self.settings.bridge.request_timeout_s
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is None:
            return limit
        try:
            value = float(raw)
        except ValueError:
            raise OpenAIError(400, f"{TIMEOUT_HEADER} must be a number of seconds.") from None
        if value <= 0:
            raise OpenAIError(400, f"{TIMEOUT_HEADER} must be positive.")
        return min(value, limit)

    def _parse(
        self,
        body: Any,
        request: web.Request,
        principal: Principal,
        tenant: str,
        idempotency_key: str | None,
        timeout_s: float,
    ) -> RequestReceived:
        api_key_id = None if principal.method == "anonymous" else principal.api_key_id
        overrides = {
            field: request.headers[header]
            for header, field in OVERRIDE_HEADERS.items()
            if request.headers.get(header)
        }
        if overrides and isinstance(body, dict):
            own = body.get("sluicegate")
            body = {**body, "sluicegate": {**(own if isinstance(own, dict) else {}), **overrides}}
        try:
            return fmt.parse_chat_request(
                body,
                event_id=new_event_id(),
                occurred_at=now(),
                tenant_id=tenant,
                request_id=str(uuid.uuid4()),
                trace_id=new_trace_id(),
                span_id=new_span_id(),
                producer=self.instance_id,
                api_key_id=api_key_id,
                reply_to=self.instance_id,
                idempotency_key=idempotency_key,
                deadline_ms=int((time.time() + timeout_s) * 1000),
                principal=journaled_principal(principal),  # a JWT's verified facts, no token
            )
        except fmt.InvalidRequest as error:
            raise OpenAIError(400, error.message, param=error.param, code=error.code) from error

    async def _run(
        self, request: web.Request, event: RequestReceived, timeout_s: float
    ) -> tuple[Event, web.StreamResponse]:
        assert self.journal is not None and self.router is not None
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            stream=event.stream,
            final=loop.create_future(),
            chunks=asyncio.Queue() if event.stream else None,
        )
        if self._in_flight >= self.settings.bridge.max_in_flight:
            self.metrics.shed.inc()
            raise OpenAIError(
                503,
                f"The gateway is at its limit of {self._in_flight} requests in flight; retry.",
                type_="server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        self.router.listen(event.request_id, waiter.on_event)
        self._in_flight += 1
        self.metrics.in_flight.inc()
        started = now()
        outcome = "error"
        try:
            journaled_by = loop.time() + timeout_s
            try:
                # Bounded by the request's own timeout: with the broker down, librdkafka would
                # otherwise keep the caller waiting for its message timeout (300 s).
                await asyncio.wait_for(
                    self.journal.publish(
                        self._requests_topic, event.tenant_id, self.serde.encode(event)
                    ),
                    timeout_s,
                )
            except (BrokerError, TimeoutError) as error:
                detail = str(error) or f"no acknowledgement within {timeout_s:g} s"
                raise OpenAIError(
                    503,
                    f"The request could not be journaled: {detail}. It may still be appended "
                    "and answered to nobody; retry with the same Idempotency-Key.",
                    type_="server_error",
                    code="journal_unavailable",
                    headers={"Retry-After": "1"},
                ) from error
            deadline = max(journaled_by, loop.time() + 0.001)  # the whole call within timeout_s
            if event.stream:
                answer, response = await self._stream(
                    request, waiter, deadline, event.request_id, timeout_s
                )
            else:
                try:
                    answer = await asyncio.wait_for(waiter.final, deadline - loop.time())
                except TimeoutError:
                    raise self._timeout_error(event.request_id, timeout_s) from None
                response = self._answer(answer)
            outcome = "ok" if isinstance(answer, ResponseReady) else "error"
            return answer, response
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()
            self.router.forget(event.request_id)
            self._trace(event, started, outcome)

    def _trace(self, event: RequestReceived, started: datetime, outcome: str) -> None:
        """The root span of the request (the stages' spans are its children); not awaited."""
        assert self.side is not None
        span = Span(
            event_id=new_event_id(),
            occurred_at=now(),
            tenant_id=event.tenant_id,
            request_id=event.request_id,
            trace_id=event.trace_id,
            span_id=event.span_id,
            run_id=event.run_id,
            producer=self.instance_id,
            name="bridge",
            start_ms=started,
            end_ms=now(),
            status=outcome,
            attributes={"model": event.model, "stream": str(event.stream).lower()},
        )
        sent = self.side.publish(self._traces_topic, event.trace_id, self.serde.encode(span))
        sent.add_done_callback(_log_failure)

    @staticmethod
    def _timeout_error(request_id: str, timeout_s: float) -> OpenAIError:
        return OpenAIError(
            504,
            f"No answer within {timeout_s:g}s; request {request_id} is "
            "journaled and may still complete.",
            type_="timeout",
            code="gateway_timeout",
        )

    @staticmethod
    def _answer(answer: Event) -> web.Response:
        if isinstance(answer, RequestRejected):
            return _rejection_error(answer).response()
        assert isinstance(answer, ResponseReady)
        return web.json_response(fmt.render_completion(answer))

    async def _stream(
        self,
        request: web.Request,
        waiter: _Waiter,
        deadline: float,
        request_id: str,
        timeout_s: float,
    ) -> tuple[Event, web.StreamResponse]:
        """Relay TokenChunks as SSE; headers go out with the first chunk, so an early
        rejection can still be a plain HTTP error."""
        assert waiter.chunks is not None
        loop = asyncio.get_running_loop()
        include_usage = _include_usage(request)
        response: web.StreamResponse | None = None
        created = int(time.time())
        relayed: list[str] = []  # the deltas the caller got, by chunk index
        while True:
            try:
                item = await asyncio.wait_for(waiter.chunks.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                error = self._timeout_error(request_id, timeout_s)
                if response is None:
                    raise error from None
                await _sse(response, error.body)
                break
            if isinstance(item, RequestRejected):
                if response is None:
                    raise _rejection_error(item)
                await _sse(response, _rejection_error(item).body)
                break
            sequence = _in_sequence(relayed, item)
            if sequence is False:
                continue  # relayed already: a redelivered task streaming its answer again
            if sequence is None:
                if response is None:
                    raise _stream_diverged()
                await _sse(response, _stream_diverged().body)
                break
            if response is None:
                response = await _open_sse(request)
            await _sse(response, fmt.render_chunk(item, created=created, first=item.index == 0))
            if item.finish_reason is not None:
                if include_usage and item.usage is not None:
                    await _sse(response, fmt.render_usage_chunk(item, item.usage, created=created))
                break
        assert response is not None
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        try:
            answer = await asyncio.wait_for(waiter.final, max(0.0, deadline - loop.time()))
        except TimeoutError:  # the chunks all arrived; the journal copy is late, not lost
            answer = item
        return answer, response

    async def _replay(
        self, request: web.Request, answer: Event, stream: bool
    ) -> web.StreamResponse:
        """Serve a stored answer again (Idempotency-Key), as JSON or as a one-chunk SSE stream."""
        if not stream or not isinstance(answer, ResponseReady):
            return self._answer(answer)
        response = await _open_sse(request)
        chunk = TokenChunk(
            **{k: getattr(answer, k) for k in Event.model_fields},
            index=0,
            delta=answer.message.content or "",
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            model=answer.model,
        )
        await _sse(response, fmt.render_chunk(chunk, created=int(time.time()), first=True))
        if _include_usage(request):
            await _sse(
                response, fmt.render_usage_chunk(chunk, answer.usage, created=int(time.time()))
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("bridge span not published: %s", future.exception())


def _stream_diverged() -> OpenAIError:
    return OpenAIError(
        502,
        "The stream was interrupted (the inference worker restarted) and the answer generated "
        "again differs from what was already sent; retry the request.",
        type_="server_error",
        code="stream_diverged",
    )


def _in_sequence(relayed: list[str], chunk: TokenChunk) -> bool | None:
    """Whether to relay `chunk` (True, and it is recorded), drop it (False) or end the stream
    with an error (None).

    A task whose inference worker died mid-stream is delivered again and streams its answer
    again from index 0. A chunk whose index was already relayed is dropped when it carries the
    same text; when it does not, or when an index is skipped, the caller already holds a prefix
    of another answer, so the stream cannot go on.
    """
    if chunk.index == len(relayed):
        relayed.append(chunk.delta)
        return True
    if chunk.index < len(relayed) and relayed[chunk.index] == chunk.delta:
        return False
    return None


def _include_usage(request: web.Request) -> bool:
    options = request.get("stream_options") or {}
    return bool(options.get("include_usage"))


async def _open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


async def _sse(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def create_bridge_app(settings: Settings, *, serde: AvroSerde) -> web.Application:
    return Bridge(settings=settings, serde=serde).application()


@dataclass(frozen=True, slots=True)
class _PromptJournal:
    """The prompts API's publisher port over the bridge's journal (which exists from start())."""

    bridge: Bridge

    async def publish(self, event: PromptVersionPublished) -> None:
        await self.bridge.publish_prompt(event)
