"""Cost accounting: what one answered request cost, priced from its deployment's catalogue entry.

Every successful response gets a CostEntry on sg.cost (a local or unpriced deployment costs 0
and still records its tokens), so spend per tenant, model and day is one SQL query away.
"""

from __future__ import annotations

from sluicegate.processors.envelope import Emit, sibling_envelope
from sluicegate.schemas.models import CostEntry, InferenceResult, InferenceTask
from sluicegate.settings import Deployment

PRODUCER = "inference"


def usd(deployment: Deployment, *, prompt_tokens: int, completion_tokens: int) -> float:
    return (
        prompt_tokens * deployment.input_usd_per_mtok
        + completion_tokens * deployment.output_usd_per_mtok
    ) / 1_000_000


def cost_entry(result: InferenceResult, *, task: InferenceTask, deployment: Deployment) -> Emit:
    """The cost of `result`, keyed by tenant like the ledger (and the budgets) it feeds."""
    usage = result.usage
    entry = CostEntry(
        **sibling_envelope(result, producer=PRODUCER),
        model=task.model,
        deployment=deployment.name,
        api_key_id=task.api_key_id,
        user=task.user,
        feature=task.feature,
        estimated_tokens=task.estimated_tokens,
        admitted_at_ms=task.admitted_at_ms,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        usd=usd(
            deployment, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
        ),
        pricing_version=deployment.pricing_version,
        latency_ms=round(result.latency_ms),
        reserved_usd=task.reserved_usd,
        prompt_ref=task.prompt_ref,
    )
    return Emit("cost", result.tenant_id, entry)
