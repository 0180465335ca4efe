"""Admission: the one in-process stage between the journal and inference.

It runs guard → route in order on the tenant's partition with no repartition, so the hot path
has a single Kafka hop between the bridge's journal write and the inference worker. Every decision
is still an event (RequestAdmitted / RequestRejected, a Span) for the side topics.

In this first version the guard admits every request whose model alias exists and routing takes
the alias's first deployment; later stages (rate limits, cache, RAG, strategies) plug in here.
"""

from __future__ import annotations

from sluicegate.processors.envelope import Emit, child_envelope, new_span_id, now, sibling_envelope
from sluicegate.schemas.models import (
    InferenceTask,
    RequestAdmitted,
    RequestReceived,
    RequestRejected,
    Span,
)
from sluicegate.settings import Settings

PRODUCER = "admission"


class Admission:
    """RequestReceived in → the events that admit and route it, or reject it."""

    def __init__(self, *, settings: Settings) -> None:
        self._settings = settings

    def run(self, request: RequestReceived) -> list[Emit]:
        started = now()
        span_id = new_span_id()
        alias = self._settings.alias(request.model)
        if alias is None:
            rejected = RequestRejected(
                **child_envelope(request, producer=PRODUCER, span_id=span_id),
                stage=PRODUCER,
                error_type="invalid_request_error",
                code="model_not_found",
                message=f"The model `{request.model}` does not exist.",
                http_status=404,
            )
            return [
                Emit("admitted", request.tenant_id, rejected),
                Emit("responses", request.request_id, rejected),
                self._span(rejected, started, "error", {"decision": "rejected:model_not_found"}),
            ]
        deployment = self._settings.deployment(alias.deployments[0])
        task = InferenceTask(
            **child_envelope(request, producer=PRODUCER, span_id=span_id),
            model=request.model,
            deployment=deployment.name,
            provider_model=deployment.provider_model,
            pool=deployment.pool,
            messages=request.messages,
            params=request.params,
            stream=request.stream,
            attempt=1,
            deadline_ms=request.deadline_ms,
            reply_to=request.reply_to,
            api_key_id=request.api_key_id,
        )
        admitted = RequestAdmitted(
            **sibling_envelope(task, producer=PRODUCER), model=request.model, checks=["model"]
        )
        attributes = {"deployment": deployment.name, "reason": "first deployment of the alias"}
        return [
            Emit(f"inference.{deployment.pool}", request.request_id, task),
            Emit("admitted", request.tenant_id, admitted),
            self._span(task, started, "ok", attributes),
        ]

    @staticmethod
    def _span(
        event: InferenceTask | RequestRejected,
        started: object,
        status: str,
        attributes: dict[str, str],
    ) -> Emit:
        span = Span(
            **sibling_envelope(event, producer=PRODUCER),
            name=PRODUCER,
            start_ms=started,
            end_ms=now(),
            status=status,
            attributes=attributes,
        )
        return Emit("traces", event.trace_id, span)
