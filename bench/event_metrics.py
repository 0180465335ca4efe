"""Cost of `EventMetrics.observe`, the per-event fold behind the gateway's Prometheus metrics.

    python -m bench.event_metrics [--seconds 1] [--repeats 5]

Prints nanoseconds per `observe` for each event type the stages publish, and for a realistic
mix: the Emits of one cache-missed, non-streamed request (task, admitted, admission span,
response, result, inference span, cost, cache fill), of a streamed one (the same plus 40 token
chunks), of a cache hit (response, cost, span) and of a rejection (admitted, responses, span),
weighted 6:2:1:1. Each figure is the best of `--repeats` runs on one core; nothing is asserted.
Label children are warm, as they are after the first few requests of a running gateway.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from sluicegate.processors.envelope import Emit, new_event_id, new_span_id, new_trace_id, now
from sluicegate.schemas.models import (
    CacheFill,
    ChatMessage,
    CostEntry,
    InferenceResult,
    InferenceTask,
    RequestAdmitted,
    RequestRejected,
    ResponseReady,
    SamplingParams,
    Span,
    TokenChunk,
    TokenUsage,
)
from sluicegate.serving.event_metrics import EventMetrics


def _envelope() -> dict[str, object]:
    return {
        "event_id": new_event_id(),
        "occurred_at": now(),
        "tenant_id": "acme",
        "request_id": new_event_id(),
        "trace_id": new_trace_id(),
        "span_id": new_span_id(),
        "producer": "bench",
    }


def _span(name: str, status: str, attributes: dict[str, str]) -> Emit:
    start = now()
    event = Span(
        **_envelope(),
        name=name,
        start_ms=start,
        end_ms=start + timedelta(milliseconds=3),
        status=status,
        attributes=attributes,
    )
    return Emit("traces", event.trace_id, event)


def workloads() -> dict[str, list[Emit]]:
    message = ChatMessage(role="assistant", content="Sure, here is the answer.")
    usage = TokenUsage(prompt_tokens=420, completion_tokens=80, total_tokens=500)
    task = InferenceTask(
        **_envelope(),
        model="chat",
        deployment="gpt-4o-mini",
        provider_model="gpt-4o-mini",
        pool="default",
        messages=[ChatMessage(role="user", content="Where is my parcel?")],
        params=SamplingParams(temperature=0.0, max_tokens=256),
        fallbacks=["claude-haiku"],
        cache_key='{"scope": "acme"}',
    )
    result = InferenceResult(
        **_envelope(),
        deployment="gpt-4o-mini",
        provider_model="gpt-4o-mini",
        message=message,
        finish_reason="stop",
        usage=usage,
        latency_ms=812.0,
        ttft_ms=140.0,
    )
    response = ResponseReady(
        **_envelope(),
        model="chat",
        deployment="gpt-4o-mini",
        provider_model="gpt-4o-mini",
        message=message,
        finish_reason="stop",
        usage=usage,
        latency_ms=812.0,
    )
    hit = response.model_copy(update={"cache_hit": True, "usd_saved": 0.0001})
    cost = CostEntry(
        **_envelope(),
        model="chat",
        deployment="gpt-4o-mini",
        prompt_tokens=420,
        completion_tokens=80,
        usd=0.000111,
        pricing_version="v1",
    )
    saved = cost.model_copy(update={"usd": 0.0, "cache_hit": True, "usd_saved": 0.000111})
    fill = CacheFill(
        **_envelope(),
        cache_key_json='{"scope": "acme"}',
        content="Sure",
        finish_reason="stop",
        prompt_tokens=420,
        completion_tokens=80,
        deployment="gpt-4o-mini",
        provider_model="gpt-4o-mini",
        usd=0.000111,
        latency_ms=812.0,
    )
    admitted = RequestAdmitted(**_envelope(), model="chat", checks=["route", "limits", "cache"])
    rejected = RequestRejected(
        **_envelope(),
        stage="admission",
        error_type="rate_limit_error",
        code="rate_limit_exceeded",
        message="slow down",
        http_status=429,
    )
    chunk = TokenChunk(**_envelope(), index=3, delta=" parcel", model="chat")
    routed = {"deployment": "gpt-4o-mini", "strategy": "priority", "reason": "first healthy"}
    missed = [
        Emit("inference.default", task.request_id, task),
        Emit("admitted", "acme", admitted),
        _span("admission", "ok", routed),
        Emit("responses", response.request_id, response),
        Emit("inference.results", "gpt-4o-mini", result),
        _span("inference", "ok", {"deployment": "gpt-4o-mini"}),
        Emit("cost", "acme", cost),
        Emit("cache", "acme", fill),
    ]
    streamed = [*missed, *[Emit("stream", task.request_id, chunk)] * 40]
    cached = [
        Emit("responses", hit.request_id, hit),
        Emit("cost", "acme", saved),
        _span("admission", "ok", {"cache": "exact", "deployment": "gpt-4o-mini"}),
    ]
    refused = [
        Emit("admitted", "acme", rejected),
        Emit("responses", rejected.request_id, rejected),
        _span("admission", "error", {"decision": "rejected:rate_limit_exceeded"}),
    ]
    per_type = {_label(e): [e] for e in [*missed, *cached, *refused]}
    per_type["TokenChunk@stream"] = [Emit("stream", task.request_id, chunk)]
    mix = missed * 6 + streamed * 2 + cached + refused
    return {**per_type, "MIX (6 missed : 2 streamed : 1 hit : 1 rejected)": mix}


def _label(emit: Emit) -> str:
    event = emit.event
    if isinstance(event, Span):
        kind = "hit" if "cache" in event.attributes else event.status
        return f"Span({event.name}, {kind})@{emit.topic}"
    if isinstance(event, ResponseReady | CostEntry) and event.cache_hit:
        return f"{type(event).__name__}(cache hit)@{emit.topic}"
    return f"{type(event).__name__}@{emit.topic}"


def ns_per_observe(emits: list[Emit], seconds: float, repeats: int) -> float:
    metrics = EventMetrics()
    observe = metrics.observe
    for emit in emits:  # warm the label children
        observe(emit)
    loops = max(1, int(200_000 / len(emits)))
    best = float("inf")
    for _ in range(repeats):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(loops):
                for emit in emits:
                    observe(emit)
            done += loops * len(emits)
        best = min(best, (time.perf_counter() - started) / done * 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for name, emits in workloads().items():
        print(f"{name:<52} {ns_per_observe(emits, args.seconds, args.repeats):8.0f} ns/observe")


if __name__ == "__main__":
    main()
