"""When a stage fails on a record it could decode, the caller still gets an explicit answer.

The record itself goes to the dead-letter topic (streams/dlq.py); this builds the 500 that the
bridge relays, so nobody waits for a timeout on a request the pipeline has given up on.
"""

from __future__ import annotations

from sluicegate.processors.envelope import Emit, child_envelope
from sluicegate.schemas.models import Event, RequestRejected


def internal_error(event: Event, *, stage: str, error: BaseException) -> Emit:
    rejected = RequestRejected(
        **child_envelope(event, producer=stage),
        stage=stage,
        error_type="server_error",
        code="internal_error",
        message=f"The {stage} stage failed on this request ({type(error).__name__}); "
        "it was dead-lettered for inspection.",
        http_status=500,
    )
    return Emit("responses", event.request_id, rejected)
